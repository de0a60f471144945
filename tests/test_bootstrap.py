"""Image-resample AP from a kept matching equals pycocotools on the materialised multisets; the matching file."""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_evaluate import TINY, synth  # noqa: F401  (the eval CLI's tiny model and dataset)

import fastinst
from fastinst.commands import evaluate as eval_command
from fastinst.config import load_config
from fastinst.engine.bootstrap import BOOTSTRAP_METRICS, bootstrap_interval, resample_counts, resample_metrics
from fastinst.engine.evaluate import METRICS, coco_evaluate
from fastinst.engine.matching import ImageMatching, MatchingError, matching_from_eval

Scene = tuple[dict[str, Any], list[dict[str, Any]]]  # (COCO dataset dict, result dicts)
SIZE = 256
SIDES = {"small": (5.0, 30.0), "medium": (33.0, 90.0), "large": (100.0, 200.0)}


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluated(dataset: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> COCOeval:
    coco_gt = _coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _materialised(dataset: dict[str, Any], results: list[dict[str, Any]], counts: np.ndarray) -> Scene:
    """Image i (in image-id order) repeated counts[i] times under consecutive new ids, with copies of its
    annotations (new ids, same order) and detections."""
    anns: dict[int, list[dict[str, Any]]] = {}
    dets: dict[int, list[dict[str, Any]]] = {}
    for ann in dataset["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    for det in results:
        dets.setdefault(det["image_id"], []).append(det)
    images, new_anns, new_dets = [], [], []
    for image, count in zip(sorted(dataset["images"], key=lambda im: im["id"]), counts):
        for _ in range(int(count)):
            new_id = len(images) + 1
            images.append({**image, "id": new_id})
            new_anns += [{**a, "id": len(new_anns) + k + 1, "image_id": new_id}
                         for k, a in enumerate(anns.get(image["id"], []))]
            new_dets += [{**d, "image_id": new_id} for d in dets.get(image["id"], [])]
    return {**dataset, "images": images, "annotations": new_anns}, new_dets


def _cocoeval_stats(scene: Scene, counts: np.ndarray, iou_type: str) -> np.ndarray:
    """COCOeval's AP .. AP_L on the materialised multiset."""
    return _evaluated(*_materialised(*scene, counts), iou_type).stats[:len(BOOTSTRAP_METRICS)]


def _assert_exact(scene: Scene, iou_type: str, counts: np.ndarray) -> dict[str, np.ndarray]:
    matching = matching_from_eval(_evaluated(*scene, iou_type))
    ours = resample_metrics(matching, counts)
    for row, row_counts in enumerate(counts):
        expected = _cocoeval_stats(scene, row_counts, iou_type) if row_counts.any() else -np.ones(6)
        got = np.array([ours[name][row] for name in BOOTSTRAP_METRICS])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9, err_msg=f"row {row}: {row_counts.tolist()}")
    return ours


def _box(rng: np.random.Generator, kind: str) -> list[float]:
    w, h = rng.uniform(*SIDES[kind], 2)
    return [float(rng.uniform(0, SIZE - w)), float(rng.uniform(0, SIZE - h)), float(w), float(h)]


def _jittered(rng: np.random.Generator, box: list[float], amount: float) -> list[float]:
    x, y, w, h = box
    return [x + rng.normal(0, amount * w), y + rng.normal(0, amount * h), w * math.exp(rng.normal(0, amount)),
            h * math.exp(rng.normal(0, amount))]


def _bbox_scene(seed: int) -> Scene:
    """36 images (listed unsorted, ids not contiguous), 4 categories (the last rare), ground truth of all
    sizes incl. crowd regions and boxes of areas exactly 32² and 96², images without ground truth or without
    detections, duplicate and misclassified detections, scores on a 0.1 grid (ties everywhere), one
    image-category with more than 100 detections, and a same-image tie of a true and a false positive."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    image_ids = rng.permutation(np.arange(36) * 7 + 3).tolist()
    for n, image_id in enumerate(image_ids):
        images.append({"id": image_id, "width": SIZE, "height": SIZE})
        objects = [(int(rng.choice(4, p=[.4, .3, .24, .06])) + 1, _box(rng, str(rng.choice(list(SIDES)))))
                   for _ in range(0 if n % 6 == 5 else int(rng.integers(1, 7)))]
        if n == 0:
            objects += [(1, [10.0, 10.0, 32.0, 32.0]), (2, [100.0, 100.0, 96.0, 96.0])]
        for cat, box in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.12)})
        if n % 9 == 4:
            continue  # no detections
        for cat, box in objects:
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                label = cat if rng.random() < 0.85 else int(rng.integers(1, 5))
                results.append({"image_id": image_id, "category_id": label, "score": float(rng.integers(1, 10)) / 10,
                                "bbox": _jittered(rng, box, float(rng.choice([0.02, 0.08, 0.2])))})
        for _ in range(int(rng.integers(0, 4))):
            results.append({"image_id": image_id, "category_id": int(rng.integers(1, 5)),
                            "score": float(rng.integers(1, 10)) / 10, "bbox": _box(rng, str(rng.choice(list(SIDES))))})
        if n == 0:
            results += [{"image_id": image_id, "category_id": 1, "score": 0.95, "bbox": [10.0, 10.0, 32.0, 32.0]},
                        {"image_id": image_id, "category_id": 1, "score": 0.95, "bbox": [200.0, 5.0, 32.0, 32.0]},
                        {"image_id": image_id, "category_id": 2, "score": 0.35, "bbox": [100.0, 100.0, 96.0, 96.0]},
                        {"image_id": image_id, "category_id": 2, "score": 0.35, "bbox": [140.0, 0.0, 96.0, 96.0]}]
        if n == 1:
            results += [{"image_id": image_id, "category_id": 3, "score": float(rng.integers(1, 30)) / 30,
                         "bbox": _box(rng, "small")} for _ in range(110)]
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 5)]}, results


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def _drawn(box: list[float], ellipse: bool) -> np.ndarray:
    """A rectangle or the ellipse inscribed in it, ``(SIZE, SIZE)`` bool."""
    x, y, w, h = box
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    if ellipse:
        return ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 <= 1
    return (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)


def _segm_scene(seed: int) -> Scene:
    """The bbox scene's kind of data as drawn masks (rectangles and ellipses), smaller."""
    rng = np.random.default_rng(seed)
    dataset, results = _bbox_scene(seed)
    keep = {im["id"] for im in dataset["images"][:14]}
    anns = []
    for ann in dataset["annotations"]:
        if ann["image_id"] in keep:
            mask = _drawn(ann["bbox"], bool(rng.random() < 0.5))
            anns.append({**ann, "segmentation": _rle(mask), "area": float(mask.sum())})
    dets = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
             "segmentation": _rle(_drawn(r["bbox"], bool(rng.random() < 0.5)))}
            for r in results if r["image_id"] in keep]
    return {**dataset, "images": dataset["images"][:14], "annotations": anns}, dets


def _rows(scene: Scene, rng: np.random.Generator, random_rows: int) -> np.ndarray:
    """Counts: all ones, random resamples, heavy repeats of the tie images, no image of the rare category,
    no image with large ground truth, and zeros."""
    dataset, results = scene
    ids = sorted(im["id"] for im in dataset["images"])
    n = len(ids)
    rare = {a["image_id"] for a in dataset["annotations"] if a["category_id"] == 4}
    large = {a["image_id"] for a in dataset["annotations"] if a["area"] > 96 ** 2}
    heavy = rng.integers(0, 2, n)
    heavy[ids.index(dataset["images"][0]["id"])] = 3
    heavy[ids.index(dataset["images"][1]["id"])] = 4
    rows = [np.ones(n, np.int64), *resample_counts(n, random_rows, rng), heavy,
            np.array([0 if i in rare else 2 for i in ids]), np.array([0 if i in large else 1 for i in ids]),
            np.zeros(n, np.int64)]
    assert len({r["image_id"] for r in results}) < n and len({a["image_id"] for a in dataset["annotations"]}) < n
    return np.vstack(rows)


def test_bbox_resamples_equal_cocoeval_on_the_materialised_images() -> None:
    scene = _bbox_scene(0)
    counts = _rows(scene, np.random.default_rng(1), random_rows=6)
    matching = matching_from_eval(_evaluated(*scene, "bbox"))
    assert len(matching.tie_start) > 5 and matching.tp.any() and (matching.ignored & ~matching.tp).any()
    ours = _assert_exact(scene, "bbox", counts)
    assert all(ours[name][-1] == -1 for name in BOOTSTRAP_METRICS)
    assert ours["AP_L"][-2] == -1 and 0 < ours["AP"][0] < 1


def test_segm_resamples_equal_cocoeval_on_the_materialised_images() -> None:
    scene = _segm_scene(2)
    _assert_exact(scene, "segm", _rows(scene, np.random.default_rng(3), random_rows=2)[:-2])


def _tie_scene(tie: float) -> Scene:
    """Image 1: a true and a false positive scoring 0.9 and 0.9 - ``tie``; image 2: one true positive."""
    box, away = [0.0, 0.0, 50.0, 50.0], [150.0, 150.0, 50.0, 50.0]
    dataset = {"images": [{"id": 1, "width": SIZE, "height": SIZE}, {"id": 2, "width": SIZE, "height": SIZE}],
               "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": box, "area": 2500.0, "iscrowd": 0}
                               for i in (1, 2)],
               "categories": [{"id": 1, "name": "a"}]}
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": box},
               {"image_id": 1, "category_id": 1, "score": 0.9 - tie, "bbox": away},
               {"image_id": 2, "category_id": 1, "score": 0.5, "bbox": box}]
    return dataset, results


def test_same_image_ties_repeat_block_wise() -> None:
    counts = np.array([[2, 1], [3, 2], [1, 1], [4, 0]])
    ours = _assert_exact(_tie_scene(0.0), "bbox", counts)
    # copies of the tie run A B A B, not A A B B (which a hair of score difference gives): another AP
    assert _cocoeval_stats(_tie_scene(1e-9), counts[0], "bbox")[0] > ours["AP"][0] + 0.01


def test_no_detections_and_full_data_agree_with_coco_evaluate() -> None:
    dataset, results = _bbox_scene(4)
    for preds in (results, []):
        matching = matching_from_eval(_evaluated(dataset, preds, "bbox") if preds else _empty_eval(dataset))
        ours = resample_metrics(matching, np.ones((1, len(dataset["images"])), np.int32))
        stats = coco_evaluate(_coco(dataset), preds, iou_type="bbox")
        assert [ours[name][0] for name in BOOTSTRAP_METRICS] == pytest.approx([stats[k] for k in METRICS[:6]],
                                                                               abs=1e-12)


def _empty_eval(dataset: dict[str, Any]) -> COCOeval:
    coco_gt, coco_dt = _coco(dataset), _coco({**dataset, "annotations": []})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.evaluate()
    return coco_eval


def test_resample_counts_are_multinomial_draws() -> None:
    counts = resample_counts(50, 200, np.random.default_rng(0))
    assert counts.shape == (200, 50) and counts.dtype == np.int32 and (counts.sum(1) == 50).all()
    assert np.array_equal(counts, resample_counts(50, 200, np.random.default_rng(0)))
    assert abs(counts.mean() - 1) < 1e-12 and 0.8 < counts.var() < 1.2 and resample_counts(0, 3, np.random.default_rng(0)).shape == (3, 0)


def test_counts_must_be_non_negative_integers_of_the_image_count() -> None:
    matching = matching_from_eval(_evaluated(*_tie_scene(0.0), "bbox"))
    for bad in (np.ones(2, np.int32), np.ones((1, 3), np.int32), np.ones((1, 2)), -np.ones((1, 2), np.int32)):
        with pytest.raises(ValueError, match=r"counts must be \(B, 2\) non-negative integers"):
            resample_metrics(matching, bad)


def test_interval_brackets_the_full_value_and_is_nan_where_undefined() -> None:
    dataset, results = _bbox_scene(5)
    no_large = {**dataset, "annotations": [a for a in dataset["annotations"] if a["area"] < 96 ** 2]}
    matching = matching_from_eval(_evaluated(no_large, results, "bbox"))
    interval = bootstrap_interval(matching, resamples=200, seed=1)
    assert str(interval) == str(bootstrap_interval(matching, resamples=200, seed=1))
    value, low, high = interval["AP"]
    assert low < value < high and high - low < 0.5
    assert interval["AP_L"][0] == -1 and math.isnan(interval["AP_L"][1]) and math.isnan(interval["AP_L"][2])


def test_matching_file_round_trip_and_fingerprint(tmp_path: Path) -> None:
    dataset, results = _bbox_scene(6)
    matching = matching_from_eval(_evaluated(dataset, results, "bbox"))
    matching.save(tmp_path / "m.match")  # written at exactly this path
    loaded = ImageMatching.load(tmp_path / "m.match")
    assert loaded.iou_type == "bbox" and loaded.fingerprint == matching.fingerprint
    for name in ("image_ids", "det_image", "det_category", "tp_bits", "ignored_bits", "gt_count", "tie_start"):
        assert np.array_equal(getattr(loaded, name), getattr(matching, name)), name
    counts = resample_counts(len(matching.image_ids), 5, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(resample_metrics(loaded, counts).values(),
                                                    resample_metrics(matching, counts).values()))
    other = matching_from_eval(_evaluated(dataset, results[::2], "bbox"))
    assert other.fingerprint == matching.fingerprint  # other predictions, same val set: paired
    moved = copy.deepcopy(dataset)
    moved["annotations"][0]["bbox"][0] += 1
    assert matching_from_eval(_evaluated(moved, results, "bbox")).fingerprint != matching.fingerprint


def test_unreadable_matching_files_are_one_line_errors(tmp_path: Path) -> None:
    matching = matching_from_eval(_evaluated(*_tie_scene(0.0), "bbox"))
    good = tmp_path / "good.npz"
    matching.save(good)
    (tmp_path / "truncated.npz").write_bytes(good.read_bytes()[:200])
    np.savez_compressed(tmp_path / "foreign.npz", weights=np.zeros(3))
    with np.load(good) as data:
        np.savez_compressed(tmp_path / "future.npz", **{**data, "format_version": np.array(99)})
    cases = {"missing.npz": "matching file not found", "truncated.npz": "not a readable matching file",
             "foreign.npz": "not a fastinst image matching", "future.npz": "matching format version 99 is unknown"}
    for name, reason in cases.items():
        with pytest.raises(MatchingError) as info:
            ImageMatching.load(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: {reason}") and "\n" not in str(info.value)


def test_coco_evaluate_adds_intervals_and_keeps_the_matching(tmp_path: Path) -> None:
    dataset, results = _bbox_scene(7)
    coco_gt = _coco(dataset)
    plain = coco_evaluate(coco_gt, results, iou_type="bbox")
    metrics = coco_evaluate(coco_gt, results, iou_type="bbox", matching_path=tmp_path / "m.npz", bootstrap=50)
    assert {k: metrics[k] for k in plain} == plain
    assert sorted(k for k in metrics if k not in plain) == sorted(f"{name}_ci" for name in BOOTSTRAP_METRICS)
    for name in BOOTSTRAP_METRICS:
        low, high = metrics[f"{name}_ci"]
        assert low <= high
    assert ImageMatching.load(tmp_path / "m.npz").iou_type == "bbox"


def test_eval_command_prints_intervals(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save({"model": fastinst.build_model(load_config(None, TINY)).state_dict()}, weights)
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(o.replace("=", ": ") for o in TINY[1:]))
    parser = argparse.ArgumentParser()
    eval_command.register(parser.add_subparsers())
    args = parser.parse_args(["eval", str(config), "--weights", str(weights), "--data", str(synth), "--images", "3",
                              "--json", "--device", "cpu", "--set", TINY[0], "--bootstrap", "20",
                              "--matching", str(tmp_path / "m.npz")])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert all(len(metrics[f"{name}_ci"]) == 2 for name in BOOTSTRAP_METRICS)
    ap_line = next(line for line in lines if line.split()[0] == "AP")
    assert ap_line.endswith("(95% CI, 20 image resamples)") and "[" in ap_line
    assert not any(line.split()[0].endswith("_ci") for line in lines[:-1])
    assert len(ImageMatching.load(tmp_path / "m.npz").image_ids) == 3
