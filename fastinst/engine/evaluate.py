"""COCO mask evaluation (pycocotools) of a model on a COCO-format val set.

Predicted masks are produced at the original image size: the model is given the test-resized
image and ``output_sizes=[orig_size]``, so it resizes its mask *logits* bilinearly before
thresholding, as the official post-processing does. A model that ignores ``output_sizes``
(masks at the input size) has its bool masks resized to the original size by exact nearest
neighbour instead.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import Subset
from tqdm import tqdm

from fastinst.config import Config, ConfigError
from fastinst.data.coco import CocoInstanceDataset
from fastinst.data.spec import DataSpec
from fastinst.data.transforms import EvalTransform, build_test_loader, resize_masks
from fastinst.engine.device import pick_device
from fastinst.engine.model import load_model

METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")


def coco_evaluate(coco_gt: COCO, predictions: list[dict[str, Any]], iou_type: str = "segm",
                  with_boxes: bool = False, image_ids: Sequence[int] | None = None,
                  matching_path: str | Path | None = None, bootstrap: int = 0) -> dict[str, Any]:
    """COCOeval summary of COCO result dicts (``image_id, category_id, segmentation, score``).

    Values are in [0, 1], -1 where COCO gives -1 (e.g. no ground truth of that size). Only
    ``image_ids`` are evaluated when given (all of ``coco_gt`` otherwise). With ``with_boxes``,
    box AP of the masks' bounding boxes is added under ``box_*`` keys. The ``iou_type`` evaluation's
    per-image matching (``fastinst.engine.matching``) is written to ``matching_path`` when given; with
    ``bootstrap`` > 0, ``AP_ci`` … ``AP_L_ci`` are added: ``[low, high]`` 95% percentile intervals over
    that many image resamples (seed 0, ``fastinst.engine.bootstrap``), ``None`` bounds where undefined.
    """
    stats, coco_eval = _summarize(coco_gt, [_result(p, iou_type) for p in predictions], iou_type, image_ids)
    metrics: dict[str, Any] = dict(stats)
    if matching_path is not None or bootstrap > 0:
        metrics.update(_keep_matching(coco_eval, matching_path, bootstrap))
    if with_boxes:
        boxes = [{**_result(p, "bbox"), "bbox": _mask_box(p["segmentation"])} for p in predictions]
        metrics.update({f"box_{k}": v for k, v in _summarize(coco_gt, boxes, "bbox", image_ids)[0].items()})
    return metrics


def _keep_matching(coco_eval: COCOeval, matching_path: str | Path | None,
                   bootstrap: int) -> dict[str, list[float | None]]:
    """Write ``coco_eval``'s matching to ``matching_path`` (when given); the ``*_ci`` intervals of
    ``bootstrap`` resamples (none when 0)."""
    from fastinst.engine.bootstrap import bootstrap_interval
    from fastinst.engine.matching import matching_from_eval

    matching = matching_from_eval(coco_eval)
    if matching_path is not None:
        matching.save(matching_path)
    if bootstrap <= 0:
        return {}
    return {f"{name}_ci": [None if np.isnan(low) else low, None if np.isnan(high) else high]
            for name, (_, low, high) in bootstrap_interval(matching, bootstrap).items()}


def _result(prediction: dict[str, Any], iou_type: str) -> dict[str, Any]:
    """A fresh copy with only the fields ``iou_type`` reads (``loadRes`` edits its input and picks the
    type from which of ``bbox``/``segmentation`` is present)."""
    keys = ("image_id", "category_id", "score") + (("segmentation",) if iou_type == "segm" else ("bbox",))
    return {k: prediction[k] for k in keys if k in prediction}


def _summarize(coco_gt: COCO, predictions: list[dict[str, Any]], iou_type: str,
               image_ids: Sequence[int] | None) -> tuple[dict[str, float], COCOeval]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(predictions) if predictions else _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(v) for name, v in zip(METRICS, coco_eval.stats)}, coco_eval


def _empty_results(coco_gt: COCO) -> COCO:
    """A results COCO without detections (``loadRes`` rejects an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                       "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def _mask_box(rle: dict[str, Any]) -> list[float]:
    """[x, y, w, h] of an RLE mask."""
    counts = rle["counts"]
    return [float(v) for v in mask_util.toBbox({**rle, "counts": counts.encode() if isinstance(counts, str)
                                                else counts})]


def predictions_from_outputs(outputs: list[dict[str, torch.Tensor]], image_ids: Sequence[int],
                             contiguous_to_category_id: Sequence[int] | Mapping[int, int]) -> list[dict[str, Any]]:
    """Model outputs (``scores (K,)``, ``labels (K,)`` contiguous, ``masks (K, H, W) bool`` at the
    original size) → COCO result dicts with compressed-RLE segmentations (``counts`` a str)."""
    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        masks = out["masks"].detach().cpu().numpy().astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
        for rle, label, score in zip(rles, out["labels"].tolist(), out["scores"].tolist()):
            results.append({"image_id": int(image_id), "category_id": int(contiguous_to_category_id[label]),
                            "segmentation": {"size": [int(s) for s in rle["size"]],
                                             "counts": rle["counts"].decode("ascii")},
                            "score": float(score)})
    return results


def check_num_classes(cfg: Config, dataset: CocoInstanceDataset) -> None:
    """Refuse a config whose ``model.num_classes`` differs from the dataset's category count."""
    if cfg.model.num_classes != dataset.num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but {dataset.json_path} has "
                          f"{dataset.num_classes} categories; set model.num_classes={dataset.num_classes}")


@torch.inference_mode()
def run_inference(model: torch.nn.Module, dataset: CocoInstanceDataset | Subset, cfg: Config,
                  device: torch.device, progress: bool = True) -> list[dict[str, Any]]:
    """COCO result dicts of ``model`` (in eval mode) over ``dataset`` (test-transformed items)."""
    base = cast(CocoInstanceDataset, dataset.dataset) if isinstance(dataset, Subset) else dataset  # Subset of one
    predictions = []
    for batch in tqdm(build_test_loader(cfg, dataset), desc="eval", disable=not progress, unit="img"):
        sizes = [tuple(item["orig_size"]) for item in batch]
        outputs = model([item["image"].to(device) for item in batch], output_sizes=sizes)
        for out, size in zip(outputs, sizes):
            if tuple(out["masks"].shape[-2:]) != size:
                out["masks"] = resize_masks(out["masks"], size)
        predictions += predictions_from_outputs(outputs, [item["image_id"] for item in batch],
                                                base.contiguous_to_category_id)
    return predictions


def evaluate(cfg: Config, weights: str | Path | None, data: DataSpec, max_images: int | None = None,
             device: str | torch.device | None = None, progress: bool = True, vis_dir: str | Path | None = None,
             vis_images: int = 8, vis_score: float = 0.5, matching_path: str | Path | None = None,
             bootstrap: int = 0) -> dict[str, Any]:
    """Mask AP etc. (see ``METRICS``) of the model built from ``cfg`` with ``weights`` (``None``:
    as initialised) on ``data``'s val split, or its first ``max_images`` images; plus ``num_images``.

    With ``vis_dir``, the first ``vis_images`` images are also drawn there, ground truth beside the
    predictions scoring at least ``vis_score`` (``fastinst.engine.visualize``). ``matching_path`` and
    ``bootstrap`` keep the segm matching and add ``AP_ci`` … intervals (see ``coco_evaluate``)."""
    json_path, image_dir = data.split("val")
    dataset = CocoInstanceDataset(json_path, image_dir, transform=EvalTransform(cfg))
    check_num_classes(cfg, dataset)
    subset: CocoInstanceDataset | Subset = dataset
    if max_images is not None and max_images < len(dataset):
        subset = Subset(dataset, range(max_images))
    image_ids = [dataset.image_ids[i] for i in range(len(subset))]
    dev = pick_device(device)
    model, _ = load_model(cfg, weights, dev)
    predictions = run_inference(model, subset, cfg, dev, progress)
    metrics = coco_evaluate(dataset.coco, predictions, image_ids=image_ids, matching_path=matching_path,
                            bootstrap=bootstrap)
    metrics.update(num_images=len(image_ids), num_predictions=len(predictions))
    if vis_dir is not None and vis_images > 0:
        from fastinst.engine.visualize import write_prediction_images

        write_prediction_images(dataset.coco, image_dir, predictions, vis_dir, image_ids[:vis_images], vis_score)
    return metrics
