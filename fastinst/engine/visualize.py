"""Prediction images: ground truth and predicted instances side by side on the original image
(``write_prediction_images``), or predictions alone (``draw_predictions``, for ``fastinst predict``).

Each panel blends every instance's mask in its own colour, outlines it and labels it ``class`` (GT)
or ``class score`` (predictions, those at or above a score threshold). Small images are enlarged
(nearest neighbour) so that the labels stay readable.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

MIN_PANEL_SIDE = 320  # pixels: smaller images are enlarged by an integer factor to at least this
ALPHA = 0.45
GAP = 8  # pixels between the two panels


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated saturated colours (golden-ratio hue steps)."""
    rgbs = (colorsys.hsv_to_rgb((0.12 + 0.618034 * i) % 1.0, 0.85, 0.95) for i in range(n))
    return [(int(255 * r), int(255 * g), int(255 * b)) for r, g, b in rgbs]


def outline(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``mask`` that have a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def draw_instances(image: np.ndarray, masks: Sequence[np.ndarray], captions: Sequence[str],
                   min_side: int = MIN_PANEL_SIDE) -> Image.Image:
    """``image (H, W, 3) uint8`` with ``masks`` (each ``(H, W)`` bool) blended, outlined and captioned,
    enlarged by an integer factor to at least ``min_side`` on its longer side."""
    h, w = image.shape[:2]
    scale = max(1, -(-min_side // max(h, w)))
    blend = image.astype(np.float32)
    colors = palette(len(masks))
    for mask, color in zip(masks, colors):
        blend[mask] = (1 - ALPHA) * blend[mask] + ALPHA * np.asarray(color, np.float32)
    canvas = blend.round().astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    for mask, color in zip(masks, colors):
        canvas[outline(mask.repeat(scale, 0).repeat(scale, 1))] = color
    panel = Image.fromarray(canvas)
    draw = ImageDraw.Draw(panel)
    for mask, color, caption in zip(masks, colors, captions):
        ys, xs = np.nonzero(mask)
        if len(xs):
            x, y = int(xs.min()) * scale, max(int(ys.min()) * scale - 11, 0)
            box = draw.textbbox((x, y), caption)
            draw.rectangle(box, fill=(0, 0, 0))
            draw.text((x, y), caption, fill=color)
    return panel


def top_scoring(scores: Sequence[float], score_threshold: float, max_instances: int) -> list[int]:
    """Indices of the ``scores`` at or above ``score_threshold``, best first, at most ``max_instances``."""
    keep = [i for i, s in enumerate(scores) if s >= score_threshold]
    return sorted(keep, key=lambda i: -scores[i])[:max_instances]


def scored_caption(name: str, score: float) -> str:
    return f"{name} {score:.2f}"


def draw_predictions(image: np.ndarray, masks: np.ndarray, names: Sequence[str], scores: Sequence[float],
                     score_threshold: float = 0.5, max_instances: int = 30,
                     min_side: int = MIN_PANEL_SIDE) -> Image.Image:
    """``image (H, W, 3) uint8`` with the predicted ``masks (K, H, W) bool`` scoring at least
    ``score_threshold`` (at most ``max_instances``, best first) drawn and captioned ``name score``."""
    keep = top_scoring(scores, score_threshold, max_instances)
    return draw_instances(image, [masks[i] for i in keep], [scored_caption(names[i], scores[i]) for i in keep],
                          min_side)


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    out = Image.new("RGB", (left.width + GAP + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + GAP, 0))
    return out


def _decode(rle: dict[str, Any]) -> np.ndarray:
    counts = rle["counts"]
    return mask_util.decode({**rle, "counts": counts.encode() if isinstance(counts, str) else counts}).astype(bool)


def write_prediction_images(coco_gt: COCO, image_dir: str | Path, predictions: list[dict[str, Any]],
                            out_dir: str | Path, image_ids: Sequence[int], score_threshold: float = 0.5,
                            max_instances: int = 30) -> list[Path]:
    """One PNG per image id, ``<file stem>.png`` in ``out_dir``: GT (left) and predictions with
    score ≥ ``score_threshold`` (right, at most ``max_instances``, best first). Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for p in predictions:
        by_image.setdefault(int(p["image_id"]), []).append(p)
    written = []
    for image_id in image_ids:
        info = coco_gt.imgs[image_id]
        with Image.open(Path(image_dir) / info["file_name"]) as stored:
            image = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
        anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        gt = draw_instances(image, [coco_gt.annToMask(a).astype(bool) for a in anns],
                            [names[a["category_id"]] for a in anns])
        candidates = by_image.get(image_id, [])
        preds = [candidates[i] for i in top_scoring([p["score"] for p in candidates], score_threshold, max_instances)]
        pred = draw_instances(image, [_decode(p["segmentation"]) for p in preds],
                              [scored_caption(names[p["category_id"]], p["score"]) for p in preds])
        path = out / f"{Path(info['file_name']).stem}.png"
        side_by_side(gt, pred).save(path)
        written.append(path)
    return written
