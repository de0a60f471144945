"""COCO-format instance segmentation dataset (through pycocotools).

Polygons, uncompressed RLE and compressed RLE segmentations are accepted. As in COCO training,
``iscrowd=1`` annotations are not targets (they are dropped from the items, and stay in
``dataset.coco`` for evaluation, where COCOeval ignores detections matched to them).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from fastinst.data.spec import DatasetError

logger = logging.getLogger(__name__)

# transform(image (3, H, W) float32, masks (M, H, W) bool, rng) -> (image, masks)
Transform = Callable[..., tuple[torch.Tensor, torch.Tensor]]

_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id"),
    "categories": ("id", "name"),
}


class CocoInstanceDataset(torch.utils.data.Dataset):
    """Items: ``image (3, H, W) float32 RGB 0-255``, ``labels (M,) int64``, ``masks (M, H, W) bool``,
    ``image_id``, ``orig_size (h, w)``, ``file_name``.

    A key is an index, or ``(index, seed)`` to seed the transform's randomness for that item.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path, transform: Transform | None = None,
                 filter_empty: bool = False) -> None:
        self.json_path, self.image_dir, self.transform = Path(json_path), Path(image_dir), transform
        self.coco = _load_coco(self.json_path)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.contiguous_to_category_id: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [c["name"] for c in cats]
        self.category_to_contiguous = {cid: i for i, cid in enumerate(self.contiguous_to_category_id)}
        self.num_skipped_annotations = 0
        self._targets = {img_id: self._clean_annotations(img_id) for img_id in self.coco.imgs}
        ids = sorted(self.coco.imgs)
        self.image_ids = [i for i in ids if self._targets[i]] if filter_empty else ids
        self._check_files()

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        img_id = self.image_ids[index]
        info = self.coco.imgs[img_id]
        h, w = info["height"], info["width"]
        image = self._read_image(info)
        anns = self._targets[img_id]
        labels = torch.tensor([self.category_to_contiguous[a["category_id"]] for a in anns], dtype=torch.int64)
        masks = torch.from_numpy(np.stack([self._decode(a, h, w) for a in anns])) if anns else \
            torch.zeros((0, h, w), dtype=torch.bool)
        if self.transform is not None:
            image, masks = self.transform(image, masks, _rng(seed))
        return {"image": image, "labels": labels, "masks": masks, "image_id": img_id,
                "orig_size": (h, w), "file_name": info["file_name"]}

    @property
    def num_classes(self) -> int:
        return len(self.contiguous_to_category_id)

    # ----------------------------------------------------------------------- internals

    def _clean_annotations(self, img_id: int) -> list[dict[str, Any]]:
        """Non-crowd annotations of one image, with degenerate polygons removed (and counted)."""
        info = self.coco.imgs[img_id]
        kept = []
        for ann in self.coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                continue
            seg = _check_segmentation(ann, info, self.json_path)
            if isinstance(seg, list):
                seg = [p for p in seg if _polygon_ok(p)]
                if not seg:
                    self._skip(ann)
                    continue
            kept.append({**ann, "segmentation": seg})
        return kept

    def _skip(self, ann: dict[str, Any]) -> None:
        self.num_skipped_annotations += 1
        message = (f"{self.json_path}: skipping annotation id {ann['id']} (image {ann['image_id']}): "
                   "degenerate polygon (fewer than 3 points or zero area)")
        if self.num_skipped_annotations <= 5:
            warnings.warn(message, stacklevel=3)
        else:
            logger.warning(message)

    def _check_files(self) -> None:
        missing = [self.coco.imgs[i]["file_name"] for i in self.image_ids
                   if not (self.image_dir / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DatasetError(f"{self.json_path}: {len(missing)} image file(s) missing in {self.image_dir}: {shown}")

    def _read_image(self, info: dict[str, Any]) -> torch.Tensor:
        """(3, H, W) float32 RGB 0-255, EXIF orientation applied (as detectron2 reads images)."""
        path = self.image_dir / info["file_name"]
        with Image.open(path) as img:
            array = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        if array.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"{path}: image is {array.shape[1]}x{array.shape[0]} but {self.json_path} "
                               f"says {info['width']}x{info['height']}")
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float()

    def _decode(self, ann: dict[str, Any], h: int, w: int) -> np.ndarray:
        """(H, W) bool mask of one annotation."""
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_util.frPyObjects(seg, h, w)
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str)
                   else seg["counts"]}
        return mask_util.decode(rle).astype(bool)


def _rng(seed: int | None) -> random.Random:
    """The item's seeded RNG; unkeyed items draw a seed from torch's (per-worker seeded) RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return random.Random(seed)


def _load_coco(path: Path) -> COCO:
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    _check_structure(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    _check_references(coco, path)
    return coco


def _check_structure(data: Any, path: Path) -> None:
    """Top-level keys and the fields every image/annotation/category needs."""
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a COCO annotation file (top level is {type(data).__name__}, not an object)")
    for key, fields in _REQUIRED.items():
        if not isinstance(data.get(key), list):
            problem = "missing" if key not in data else f"a {type(data[key]).__name__}, not a list"
            raise DatasetError(f"{path}: not a COCO annotation file: key {key!r} is {problem}")
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise DatasetError(f"{path}: {key}[{i}] must be an object with fields {list(fields)}, got {entry!r:.200}")
            if not isinstance(entry["id"], int):
                raise DatasetError(f"{path}: {key}[{i}] has a non-integer id {entry['id']!r}")


def _check_references(coco: COCO, path: Path) -> None:
    """Every annotation names a known category and image; ids are unique."""
    for key, index in (("images", coco.imgs), ("categories", coco.cats), ("annotations", coco.anns)):
        if len(index) != len(coco.dataset[key]):
            raise DatasetError(f"{path}: duplicate ids in {key!r}")
    for ann in coco.dataset["annotations"]:
        if ann["category_id"] not in coco.cats:
            raise DatasetError(f"{path}: annotation id {ann['id']} has category_id {ann['category_id']!r}, "
                               f"which is not in 'categories' (ids {sorted(coco.cats)[:20]})")
        if ann["image_id"] not in coco.imgs:
            raise DatasetError(f"{path}: annotation id {ann['id']} refers to unknown image_id {ann['image_id']!r}")


def _check_segmentation(ann: dict[str, Any], info: dict[str, Any], path: Path) -> list | dict:
    """The annotation's segmentation, checked: a list of flat polygons, or an RLE of the image's size."""
    seg = ann.get("segmentation")
    where = f"{path}: annotation id {ann['id']} (image {ann['image_id']})"
    if isinstance(seg, list):
        if not all(isinstance(p, list) and len(p) % 2 == 0 and all(isinstance(v, (int, float)) for v in p)
                   for p in seg):
            raise DatasetError(f"{where}: polygons must be flat lists of x, y numbers")
        return seg
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [info["height"], info["width"]]:
            raise DatasetError(f"{where}: RLE size {seg['size']} differs from the image's "
                               f"[{info['height']}, {info['width']}]")
        return seg
    raise DatasetError(f"{where}: segmentation must be polygons or an RLE dict, got {seg!r:.200}")


def _polygon_ok(poly: list[float]) -> bool:
    """At least 3 points and a non-zero (shoelace) area."""
    if len(poly) < 6:
        return False
    x, y = np.asarray(poly[0::2], dtype=np.float64), np.asarray(poly[1::2], dtype=np.float64)
    return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) > 0
