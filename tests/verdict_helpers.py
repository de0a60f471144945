"""Databases with real per-image matchings, for the comparison, export, seed-policy and dashboard tests.

``synthetic_val(n_images, seed)`` is a small COCO val set (boxes, some crowd regions);
``detections(gt, quality, seed)`` a run's detections, better with ``quality`` in [0, 1], varying with
``seed`` as a trained model's do; ``evaluated_run(db, run_id, gt, quality, seed, tmp)`` stores what the
eval stage stores (metrics with ``AP_ci``, the ``matching`` artifact) for a run and marks it succeeded.
``comparison_db(tmp, url, qualities, seeds)`` puts it together: a grid with one row per entry of
``qualities`` (row name → quality), the given seeds, baseline the first row, every run evaluated.
Evaluation uses pycocotools' bbox IoU (the matching is the same structure as for masks, and fast).
"""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sqlalchemy import select

from fastinst.engine.bootstrap import bootstrap_interval
from fastinst.engine.matching import matching_from_eval
from runner import queue
from runner.db import SUCCEEDED, Artifact, Database, Metrics, Run, utcnow

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]


def synthetic_val(n_images: int = 40, seed: int = 0) -> dict[str, Any]:
    """A COCO val dataset dict: 1–5 boxes per image of all sizes, every 10th image with a crowd region."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        for _ in range(int(rng.integers(1, 6))):
            w, h = rng.uniform(10, 300, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(rng.integers(1, 4)),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        if i % 10 == 0:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1,
                                "bbox": [0, 0, 200, 200], "area": 40000.0, "iscrowd": 1})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def detections(gt: dict[str, Any], quality: float, seed: int) -> list[dict[str, Any]]:
    """A run's detections: each object found with probability ``quality`` (box jittered, scored high),
    plus false positives scored lower; ``seed`` varies all of it."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt["annotations"]:
        if ann["iscrowd"] or rng.random() > quality:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                    "bbox": [x + jitter[0], y + jitter[1], max(2.0, w + jitter[2]), max(2.0, h + jitter[3])],
                    "score": float(np.clip(rng.normal(0.5 + 0.4 * quality, 0.15), 0.01, 1.0))})
    for image in gt["images"]:
        for _ in range(int(rng.integers(0, 3))):
            w, h = rng.uniform(10, 200, 2)
            out.append({"image_id": image["id"], "category_id": int(rng.integers(1, 4)),
                        "bbox": [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)), w, h],
                        "score": float(np.clip(rng.normal(0.4, 0.15), 0.01, 1.0))})
    return out


def coco_eval(gt: dict[str, Any], dets: list[dict[str, Any]]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(dets))), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def evaluated_run(db: Database, run_id: int, gt: dict[str, Any], quality: float, seed: int, tmp: Path) -> None:
    """Store for run ``run_id`` what the eval stage stores, and mark it succeeded."""
    evaluator = coco_eval(gt, detections(gt, quality, 1000 * seed + int(100 * quality)))
    matching = matching_from_eval(evaluator)
    path = tmp / f"matching-{run_id}.npz"
    matching.save(path)
    intervals = bootstrap_interval(matching, resamples=200)
    names = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")

    def _store(s: Any) -> None:
        run = s.get(Run, run_id)
        run.status, run.finished_at, run.attempts = SUCCEEDED, utcnow(), 1
        s.add(Metrics(run_id=run_id, **{k: float(v) for k, v in zip(names, evaluator.stats[:6])},
                      extra={"eval": {f"{k}_ci": [intervals[k][1], intervals[k][2]] for k in names}}))
        s.add(Artifact(run_id=run_id, kind="matching", path=str(path)))

    db.write(_store)


def grid_yaml(tmp: Path, rows: list[str], seeds: int, extra: str = "", same: tuple[str, ...] = ()) -> Path:
    """A grid of ``rows`` (decoder layers 1, 2, ... as their distinct configs; the rows named in ``same``
    all have the first row's config) with the eval stage."""
    (tmp / "val.json").write_text("{}")
    (tmp / "val").mkdir(exist_ok=True)
    body = "\n".join(f"  - {{name: {name}, overrides: {{model.decoder.num_layers: {1 if name in same else i + 1}}}}}"
                     for i, name in enumerate(rows))
    path = tmp / "cmp.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: cmp
        base: {Path(__file__).resolve().parents[1] / 'experiments' / 'configs' / 'cpu_tiny.yaml'}
        rows:
        """) + body + "\n" + textwrap.dedent(f"""\
        seeds: {seeds}
        stages: [eval]
        data: {{val_json: {tmp / 'val.json'}, val_images: {tmp / 'val'}}}
        resources: {{gpus: 0}}
        baseline: {rows[0]}
        """) + textwrap.dedent(extra))
    return path


def comparison_db(tmp: Path, db: Database, qualities: dict[str, float], seeds: int = 2, n_images: int = 40,
                  extra: str = "", same: tuple[str, ...] = ()) -> dict[str, Any]:
    """Submit a grid of ``qualities``' rows and evaluate every run (module docstring); returns the val set."""
    from runner.stages import load_stage_grid

    gt = synthetic_val(n_images)
    grid = load_stage_grid(grid_yaml(tmp, list(qualities), seeds, extra, same))
    queue.submit(db, grid)
    evaluate_queued(db, tmp, gt, qualities)
    return gt


def evaluate_queued(db: Database, tmp: Path, gt: dict[str, Any], qualities: dict[str, float]) -> list[int]:
    """Evaluate every queued run as if a worker had (quality by its row); returns their ids."""
    runs = db.read(lambda s: [(r.id, r.row_name, r.seed) for r in s.scalars(
        select(Run).where(Run.status == queue.QUEUED).order_by(Run.id))])
    for run_id, row, seed in runs:
        evaluated_run(db, run_id, gt, qualities[row], seed, tmp)
    return [r[0] for r in runs]

