"""The evaluator agrees with pycocotools run directly; the model-level evaluate and its CLI run."""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import fastinst
from fastinst.checkpoint import CheckpointError, load_weights
from fastinst.commands import evaluate as eval_command
from fastinst.config import ConfigError, load_config
from fastinst.data import DatasetError, DataSpec
from fastinst.data.synthetic import make_synthetic
from fastinst.engine.evaluate import METRICS, coco_evaluate, evaluate, predictions_from_outputs

TINY = ["model.num_classes=4", "model.backbone.name=resnet18", "model.hidden_dim=64",
        "model.decoder.dim_feedforward=128", "model.decoder.num_layers=1", "model.num_ia_queries=10",
        "model.num_aux_queries=2", "model.pixel_decoder.dim_feedforward=128", "model.test.detections_per_image=10",
        "input.min_size_test=64", "input.max_size_test=96", "data.num_workers=0"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(out, num_train=0, num_val=12, size=192, seed=11, workers=1)
    return out


@pytest.fixture(scope="module")
def coco_gt(synth: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(synth / "annotations" / "instances_val.json"))


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def _perturbed(coco_gt: COCO, seed: int) -> list[dict[str, Any]]:
    """GT non-crowd masks shifted by a few pixels, some with a wrong class, random scores, plus false positives."""
    rng = np.random.default_rng(seed)
    cat_ids = coco_gt.getCatIds()
    preds = []
    for ann in coco_gt.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        shift = rng.integers(-4, 5, 2)
        mask = np.roll(coco_gt.annToMask(ann), tuple(shift), axis=(0, 1))
        wrong = rng.random() < 0.2
        category = int(rng.choice(cat_ids)) if wrong else ann["category_id"]
        preds.append({"image_id": ann["image_id"], "category_id": category, "segmentation": _rle(mask),
                      "score": float(rng.random())})
        if rng.random() < 0.3:
            blob = np.zeros_like(mask)
            y, x = rng.integers(0, 150, 2)
            blob[y:y + 30, x:x + 20] = 1
            preds.append({"image_id": ann["image_id"], "category_id": int(rng.choice(cat_ids)),
                          "segmentation": _rle(blob), "score": float(rng.random())})
    return preds


def _cocoeval(coco_gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: list[int] | None = None
              ) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def test_ground_truth_as_predictions_scores_one(coco_gt: COCO) -> None:
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
              "segmentation": _rle(coco_gt.annToMask(a))} for a in coco_gt.dataset["annotations"] if not a["iscrowd"]]
    metrics = coco_evaluate(coco_gt, preds, with_boxes=True)
    for key in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR100", "box_AP", "box_AP_S"):
        assert metrics[key] == pytest.approx(1.0), key


def test_perturbed_predictions_match_cocoeval_exactly(coco_gt: COCO) -> None:
    preds = _perturbed(coco_gt, seed=0)
    metrics = coco_evaluate(coco_gt, preds, with_boxes=True)
    assert [metrics[k] for k in METRICS] == _cocoeval(coco_gt, preds, "segm").tolist()
    boxes = [{"image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"],
              "bbox": mask_util.toBbox({**p["segmentation"], "counts": p["segmentation"]["counts"].encode()}).tolist()}
             for p in preds]
    assert [metrics[f"box_{k}"] for k in METRICS] == _cocoeval(coco_gt, boxes, "bbox").tolist()
    assert 0.2 < metrics["AP"] < 0.95 and metrics["AP50"] > metrics["AP75"]
    assert coco_evaluate(coco_gt, preds) == {k: metrics[k] for k in METRICS}  # inputs are not altered


def test_image_subset_matches_cocoeval(coco_gt: COCO) -> None:
    preds = [p for p in _perturbed(coco_gt, seed=1) if p["image_id"] <= 4]
    metrics = coco_evaluate(coco_gt, preds, image_ids=[1, 2, 3, 4])
    assert [metrics[k] for k in METRICS] == _cocoeval(coco_gt, preds, "segm", [1, 2, 3, 4]).tolist()
    assert metrics["AP"] > coco_evaluate(coco_gt, preds)["AP"]  # other images' objects no longer count as misses


def test_no_predictions_scores_zero(coco_gt: COCO) -> None:
    assert coco_evaluate(coco_gt, [])["AP"] == 0.0


def test_predictions_from_outputs_encode_masks_and_map_ids() -> None:
    masks = torch.zeros(2, 5, 7, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    outputs = [{"scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([2, 0]), "masks": masks},
               {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 5, 7, dtype=torch.bool)}]
    results = predictions_from_outputs(outputs, [42, 43], [1, 3, 5])
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [(42, 5, pytest.approx(0.9)),
                                                                                (42, 1, pytest.approx(0.4))]
    for result, mask in zip(results, masks):
        assert isinstance(result["segmentation"]["counts"], str)
        decoded = mask_util.decode({**result["segmentation"], "counts": result["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask.numpy())
    json.dumps(results)


def test_load_weights_accepts_raw_and_wrapped_state_dicts(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "raw.pth")
    torch.save({"model": model.state_dict(), "iteration": 5}, tmp_path / "wrapped.pth")
    for name in ("raw.pth", "wrapped.pth"):
        other = torch.nn.Linear(3, 2)
        load_weights(other, tmp_path / name)
        assert torch.equal(other.weight, model.weight)
    with pytest.raises(ValueError, match=r"raw.pth: .* 1 keys of another shape \(e.g. weight \(2, 3\) vs \(2, 4\)"):
        load_weights(torch.nn.Linear(4, 2), tmp_path / "raw.pth")
    with pytest.raises(CheckpointError, match="none.pth: weights file not found"):
        load_weights(model, tmp_path / "none.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_non_checkpoint_file_is_a_one_line_error(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save({"model": torch.nn.Linear(3, 2).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError) as info:
        load_weights(torch.nn.Linear(3, 2), path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint")
    assert "\n" not in message and "weights_only" not in message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    eval_command.register(parser.add_subparsers())
    return parser


def test_eval_command_runs_the_model_end_to_end(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save({"model": fastinst.build_model(load_config(None, TINY)).state_dict()}, weights)
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(o.replace("=", ": ") for o in TINY[1:]))
    args = _parser().parse_args(["eval", str(config), "--weights", str(weights), "--data", str(synth),
                                 "--images", "2", "--json", "--device", "cpu", "--set", TINY[0],
                                 "--vis-dir", str(tmp_path / "vis"), "--vis-score", "0"])
    assert args.func(args) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_images"] == 2 and metrics["num_predictions"] == 20
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2  # only the evaluated images are drawn
    assert all(-1.0 <= metrics[k] <= 1.0 for k in METRICS)


def test_evaluate_refuses_a_class_count_mismatch_and_a_missing_split(synth: Path) -> None:
    with pytest.raises(ConfigError, match="model.num_classes=80 but .* has 4 categories"):
        evaluate(load_config(None), None, DataSpec.from_folder(synth))
    with pytest.raises(DatasetError, match="no val split"):
        evaluate(load_config(None, TINY), None, DataSpec(train_json=synth / "x.json"))
