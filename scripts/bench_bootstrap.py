"""Time the image bootstrap of AP at COCO val scale on a synthetic matching.

Builds a COCO-like val set (default 5,000 images, 80 categories with a skewed frequency, ~7 ground truths per
image of all sizes incl. ~2% crowd regions) and 100 box detections per image (near-misses and duplicates
around the objects with IoU-correlated scores, the rest low-scoring background), runs pycocotools' bbox
COCOeval.evaluate() on it once, keeps the matching, then times ``resample_metrics`` on B resamples
(``--repeats`` times: median and min-max) and reports the matching file's size and the machine's load.

    .venv/bin/python scripts/bench_bootstrap.py [--images 5000] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fastinst.engine.bootstrap import BOOTSTRAP_METRICS, resample_counts, resample_metrics
from fastinst.engine.matching import ImageMatching, matching_from_eval
from fastinst.engine.verdicts import row_interval

WIDTH, HEIGHT = 640, 480


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 4)`` xywh boxes, sides log-uniform in [8, 400] px (about COCO's small/medium/large shares)."""
    side = np.exp(rng.uniform(np.log(8), np.log(400), n))
    aspect = np.exp(rng.normal(0, 0.4, n))
    w, h = np.minimum(side * np.sqrt(aspect), WIDTH - 1), np.minimum(side / np.sqrt(aspect), HEIGHT - 1)
    return np.stack([rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h], 1)


def scene(n_images: int, n_categories: int, dets_per_image: int, seed: int,
          score_decimals: int | None = None) -> tuple[dict[str, Any], list[dict]]:
    """A COCO dataset dict and its result dicts (see the module docstring); float32 scores, or rounded to
    ``score_decimals`` (many same-image ties)."""
    rng = np.random.default_rng(seed)
    frequency = 1 / np.arange(1, n_categories + 1) ** 0.8
    frequency /= frequency.sum()
    images, anns, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        n_gt = min(int(rng.poisson(7)), 40)
        cats, boxes, crowd = rng.choice(n_categories, n_gt, p=frequency) + 1, _boxes(rng, n_gt), rng.random(n_gt) < 0.02
        for cat, box, is_crowd in zip(cats, boxes, crowd):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat), "bbox": box.tolist(),
                         "area": float(box[2] * box[3]), "iscrowd": int(is_crowd)})
        copies = rng.choice([0, 1, 1, 1, 1, 1, 2, 3], n_gt)
        source = np.repeat(np.arange(n_gt), copies)
        jitter = rng.uniform(0.01, 0.2, len(source))
        x, y, w, h = boxes[source].T if len(source) else np.zeros((4, 0))
        near = np.stack([x + rng.normal(0, 1, len(source)) * jitter * w, y + rng.normal(0, 1, len(source)) * jitter * h,
                         w * np.exp(rng.normal(0, 1, len(source)) * jitter),
                         h * np.exp(rng.normal(0, 1, len(source)) * jitter)], 1)[:dets_per_image]
        near_cats = np.where(rng.random(len(near)) < 0.9, cats[source][:len(near)],
                             rng.integers(1, n_categories + 1, len(near)))
        near_scores = 1 / (1 + np.exp(-(5 - 25 * jitter[:len(near)] + rng.normal(0, 1, len(near)))))
        n_bg = dets_per_image - len(near)
        bg_cats = rng.integers(1, n_categories + 1, n_bg)
        if n_gt:  # half of the background on the image's own categories
            bg_cats = np.where(rng.random(n_bg) < 0.5, rng.choice(cats, n_bg), bg_cats)
        bg_scores = 1 / (1 + np.exp(-rng.normal(-4, 1.5, n_bg)))
        for box, cat, score in zip(np.vstack([near, _boxes(rng, n_bg)]), np.concatenate([near_cats, bg_cats]),
                                   np.concatenate([near_scores, bg_scores])):
            results.append({"image_id": image_id, "category_id": int(cat), "bbox": box.tolist(),
                            "score": float(np.float32(score)) if score_decimals is None
                            else round(float(score), score_decimals)})
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, n_categories + 1)]
    return {"images": images, "annotations": anns, "categories": categories}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-decimals", type=int, help="round scores (default: float32 values, hardly any ties)")
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()}  ({os.cpu_count()} cpus)")
    tic = time.perf_counter()
    dataset, results = scene(args.images, args.categories, args.detections, args.seed, args.score_decimals)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        built = time.perf_counter()
        coco_eval.evaluate()
    evaluated = time.perf_counter()
    matching = matching_from_eval(coco_eval)
    kept = time.perf_counter()
    print(f"scene {built - tic:.1f} s, COCOeval.evaluate {evaluated - built:.1f} s, matching_from_eval "
          f"{kept - evaluated:.1f} s: {len(matching.image_ids)} images, {len(dataset['annotations'])} ground truths, "
          f"{len(matching.det_image)} kept detections, {len(matching.tie_start)} tie blocks")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matching.npz"
        matching.save(path)
        size = path.stat().st_size
        matching = ImageMatching.load(path)
    print(f"matching file {size / 2**20:.2f} MiB ({size / 2**20 / len(matching.image_ids) * 5000:.2f} MiB per "
          f"5,000 images)")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.accumulate()
        coco_eval.summarize()
    full = resample_metrics(matching, np.ones((1, len(matching.image_ids)), np.int32))
    error = max(abs(full[name][0] - coco_eval.stats[i]) for i, name in enumerate(BOOTSTRAP_METRICS))
    print(f"all images: AP {full['AP'][0]:.4f} (COCOeval {coco_eval.stats[0]:.4f}; largest difference over "
          f"{', '.join(BOOTSTRAP_METRICS)}: {error:.1e})")

    counts = resample_counts(len(matching.image_ids), args.resamples, np.random.default_rng(args.seed))
    times = []
    for _ in range(args.repeats):
        tic = time.perf_counter()
        values = resample_metrics(matching, counts)
        times.append(time.perf_counter() - tic)
    interval = row_interval(full["AP"], values["AP"][None, :])  # bootstrap_interval's bias-corrected interval
    low, high = np.percentile(values["AP"], [2.5, 97.5])
    print(f"resample_metrics, B={args.resamples}: median {np.median(times):.1f} s (min {min(times):.1f}, "
          f"max {max(times):.1f}; {args.repeats} repeats); AP 95% interval [{interval.low:.4f}, "
          f"{interval.high:.4f}] (the percentiles would be [{low:.4f}, {high:.4f}]: mean of the resamples "
          f"{values['AP'].mean():.4f}, above the full-data AP)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
