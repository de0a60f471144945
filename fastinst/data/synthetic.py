"""A synthetic COCO-format instance segmentation dataset for fast CPU experiments.

Each class is a distinct shape with its own hue band, so a small model can learn it. Instances are
painted in order (later ones occlude earlier ones); every annotation is the visible part:
unoccluded shapes are stored as polygons, occluded ones as compressed RLE, crowd regions (clusters
of small shapes of one class) as ``iscrowd=1`` uncompressed RLE, as in COCO. Sizes are log-uniform
in area so that COCO's small (< 32²), medium and large (> 96², images of 256 px and up) ranges are
all present. Category ids are deliberately non-contiguous (1, 3, 5, …) so the id ↔ class mapping is
exercised. Every image depends only on ``(seed, split, index)``: the same seed gives identical files.
"""

from __future__ import annotations

import colorsys
import json
import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

SHAPES = ("circle", "rectangle", "triangle", "star", "ellipse", "hexagon", "cross", "diamond")
MIN_VISIBLE_AREA = 4  # instances with less visible area than this (pixels) are dropped as occluded
CROWD_PROB = 0.1
EMPTY_PROB = 0.03
MIN_SHAPE_AREA = 36.0  # pixels


def category_id(k: int) -> int:
    """COCO category id of class ``k`` (non-contiguous on purpose)."""
    return 2 * k + 1


def make_synthetic(out_dir: str | Path, num_train: int, num_val: int, size: int = 320, seed: int = 0,
                   num_classes: int = 4, workers: int | None = None,
                   progress: Callable[[int], None] | None = None) -> dict[str, Path]:
    """Write ``annotations/instances_{train,val}.json`` and ``{train,val}/*.png`` of ``size``² images.

    ``progress(n)`` is called as images are written. Returns the paths written.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)}, got {num_classes}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    written = {}
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        (out / split).mkdir(exist_ok=True)
        jobs = [(out / split, size, seed, split_id, i, num_classes) for i in range(count)]
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for image, anns in _run(jobs, workers):
            images.append(image)
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, **ann})
            if progress is not None:
                progress(1)
        written[f"{split}_json"] = out / "annotations" / f"instances_{split}.json"
        written[f"{split}_images"] = out / split
        coco = {"info": {"description": f"fastinst synthetic shapes (seed {seed})"}, "images": images,
                "annotations": annotations, "categories": _categories(num_classes)}
        written[f"{split}_json"].write_text(json.dumps(coco))
    return written


def _categories(num_classes: int) -> list[dict[str, Any]]:
    return [{"id": category_id(k), "name": SHAPES[k], "supercategory": "shape"} for k in range(num_classes)]


def _run(jobs: list[tuple], workers: int | None) -> Iterator[tuple[dict, list[dict]]]:
    if workers == 1 or len(jobs) < 16:
        yield from map(_write_image, jobs)
        return
    # fork: cheap to start and needs no ``__main__`` guard in the caller's script (Linux, macOS).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(_write_image, jobs, chunksize=8)


def _write_image(job: tuple[Path, int, int, int, int, int]) -> tuple[dict, list[dict]]:
    """Render, save and annotate one image; annotation ids are assigned by the caller."""
    folder, size, seed, split_id, index, num_classes = job
    rng = np.random.default_rng([seed, split_id, index])
    image_id = index + 1
    pixels, layers = render(rng, size, num_classes)
    file_name = f"{index:06d}.png"
    Image.fromarray(pixels).save(folder / file_name, compress_level=1)
    anns = [_annotation(image_id, layer) for layer in layers]
    return {"id": image_id, "file_name": file_name, "height": size, "width": size}, anns


class Layer(NamedTuple):
    """One painted instance: class, (size, size) bool mask, crowd flag, polygon (flat x, y) or None."""

    k: int
    mask: np.ndarray
    crowd: bool
    polygon: list[float] | None


def render(rng: np.random.Generator, size: int, num_classes: int) -> tuple[np.ndarray, list[Layer]]:
    """(size, size, 3) uint8 image and its instances, masks cut to their visible part (in paint order).

    A layer keeps its polygon only if it is unoccluded and inside the image (the polygon then
    reproduces the mask exactly).
    """
    pixels = _background(rng, size)
    count = 0 if rng.random() < EMPTY_PROB else int(rng.integers(1, 9))
    layers = [_shape(rng, int(k), size) for k in rng.integers(0, num_classes, count)]
    if count and rng.random() < CROWD_PROB:
        layers.insert(int(rng.integers(0, len(layers) + 1)), _crowd(rng, size, num_classes))
    for layer in layers:
        _paint(rng, pixels, layer.mask, layer.k, num_classes)
    visible_layers, occupied = [], np.zeros((size, size), dtype=bool)
    for layer in reversed(layers):
        visible = layer.mask & ~occupied
        occupied |= layer.mask
        if visible.sum() >= MIN_VISIBLE_AREA:
            whole = layer.polygon is not None and (visible == layer.mask).all()
            visible_layers.append(layer._replace(mask=visible, polygon=layer.polygon if whole else None))
    return pixels, visible_layers[::-1]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation texture (smooth gradient, mid-frequency blobs, pixel noise), (size, size, 3) uint8."""
    gradient = _upsample(rng.uniform(60, 190, (4, 4, 1)) + rng.uniform(-15, 15, (4, 4, 3)), size)
    blobs = _upsample(np.repeat(rng.uniform(108, 148, (size // 8, size // 8, 1)), 3, axis=2), size) - 128
    noise = rng.integers(-3, 4, (size, size, 1), dtype=np.int16)
    return (gradient + blobs + noise).clip(0, 255).astype(np.uint8)


def _upsample(values: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) values in 0-255 → (size, size, 3) int16 by bicubic interpolation."""
    image = Image.fromarray(values.clip(0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image).astype(np.int16)


def _paint(rng: np.random.Generator, pixels: np.ndarray, mask: np.ndarray, k: int, num_classes: int) -> None:
    """Fill ``mask`` with a colour from class ``k``'s hue band plus a little noise."""
    hue = (k / num_classes + rng.uniform(-0.25, 0.25) / num_classes) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))) * 255
    n = int(mask.sum())
    pixels[mask] = (rgb.astype(np.int16) + rng.integers(-10, 11, (n, 3), dtype=np.int16)).clip(0, 255)


def _shape(rng: np.random.Generator, k: int, size: int, max_area: float | None = None,
           center: np.ndarray | None = None) -> Layer:
    """Class ``k``'s shape, randomly sized and rotated (and placed, unless ``center``)."""
    unit = _polygon(SHAPES[k], 1.0, rng.uniform(0, 2 * np.pi))
    scale = np.sqrt(_target_area(rng, max_area or 0.3 * size * size) / _area(unit))
    polygon = unit * scale + (rng.uniform(0, size, 2) if center is None else center)
    inside = bool((polygon >= 0).all() and (polygon <= size).all())
    flat = polygon.ravel().tolist()
    return Layer(k, _rasterize(flat, size), False, flat if inside else None)


def _target_area(rng: np.random.Generator, max_area: float) -> float:
    """A COCO size bucket (small/medium/large) chosen uniformly, then a log-uniform area within it."""
    edges = [MIN_SHAPE_AREA, 32.0**2, 96.0**2, max_area]
    buckets = [(lo, min(hi, max_area)) for lo, hi in zip(edges, edges[1:]) if lo < max_area]
    lo, hi = buckets[int(rng.integers(0, len(buckets)))]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _polygon(shape: str, r: float, angle: float) -> np.ndarray:
    """(P, 2) x, y vertices of ``shape``, rotated by ``angle``, with circumradius about ``r``."""
    if shape in ("circle", "ellipse"):
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t) * (0.45 if shape == "ellipse" else 1.0)], 1)
    elif shape == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * np.where(np.arange(10) % 2, 0.4, 1.0)[:, None]
    elif shape == "cross":
        a = 0.33
        pts = np.array([[a, 1], [a, a], [1, a], [1, -a], [a, -a], [a, -1], [-a, -1], [-a, -a], [-1, -a], [-1, a],
                        [-a, a], [-a, 1]])
    else:
        corners = {"rectangle": 4, "triangle": 3, "hexagon": 6, "diamond": 4}[shape]
        t = np.linspace(0, 2 * np.pi, corners, endpoint=False) + np.pi / 4 * (shape == "rectangle")
        pts = np.stack([np.cos(t), np.sin(t) * (0.6 if shape in ("rectangle", "diamond") else 1.0)], 1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T * r


def _rasterize(polygon: list[float], size: int) -> np.ndarray:
    """(size, size) bool mask of a flat polygon, rasterised by pycocotools (as COCO decodes it)."""
    rle = mask_util.frPyObjects([polygon], size, size)
    return mask_util.decode(rle)[:, :, 0].astype(bool)


def _crowd(rng: np.random.Generator, size: int, num_classes: int) -> Layer:
    """A cluster of 6-15 small shapes of one class, as one crowd region."""
    k = int(rng.integers(0, num_classes))
    cluster = np.zeros((size, size), dtype=bool)
    center, spread = rng.uniform(0.2, 0.8, 2) * size, size / 8
    for _ in range(int(rng.integers(6, 16))):
        cluster |= _shape(rng, k, size, MIN_SHAPE_AREA * 4, center + rng.normal(0, spread, 2)).mask
    return Layer(k, cluster, True, None)


def _annotation(image_id: int, layer: Layer) -> dict[str, Any]:
    """COCO annotation (without id): polygon if the layer kept one, crowd as uncompressed RLE,
    otherwise compressed RLE."""
    rle = mask_util.encode(np.asfortranarray(layer.mask.astype(np.uint8)))
    if layer.crowd:
        segmentation: Any = _uncompressed_rle(layer.mask)
    elif layer.polygon is not None:
        segmentation = [layer.polygon]
    else:
        segmentation = {"size": list(layer.mask.shape), "counts": rle["counts"].decode()}
    return {"image_id": image_id, "category_id": category_id(layer.k), "iscrowd": int(layer.crowd),
            "segmentation": segmentation, "area": float(mask_util.area(rle)),
            "bbox": [float(v) for v in mask_util.toBbox(rle)]}


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major run lengths starting with a run of zeros)."""
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": list(mask.shape), "counts": counts}
