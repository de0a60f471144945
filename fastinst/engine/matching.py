"""The per-image matching of one COCO evaluation, kept compactly (what ``fastinst.engine.bootstrap`` resamples).

pycocotools' ``COCOeval.evaluate()`` matches each (image, category)'s detections to its ground truth once
per area range and IoU threshold (its ``evalImgs``). ``matching_from_eval`` keeps, for every detection it
kept (each image and category's first ``maxDets[-1]`` = 100 by a stable sort on -score), whether it is a
true positive and whether it is ignored there, its image and its place in its category's accumulate
order; and per (image, category, area range) the number of ground truths that count (not ignored). That
is all AP needs: any multiset of the evaluated images can be scored from it without matching again.

The file is a compressed ``.npz`` without pickled objects; ``ImageMatching.load`` refuses anything else
with a one-line ``MatchingError``.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from pycocotools.cocoeval import COCOeval, Params

FORMAT_VERSION = 1
KIND = "fastinst.ImageMatching"
AREA_LABELS = ("all", "small", "medium", "large")
NUM_IOU_THRESHOLDS = 10


class MatchingError(ValueError):
    """A matching file that is missing, unreadable, foreign or of an unknown format version."""


@dataclass(frozen=True)
class ImageMatching:
    """COCOeval's per-image matching (default parameters: 4 area ranges, 10 IoU thresholds, 100 detections).

    Detections (D of them) are stored by category index, then in the category's accumulate order (all
    evaluated images' detections stably sorted by -score, ties in image-id order, then in the image's own
    order), so a detection's global per-category rank is its position within its category's run.
    ``tp_bits``/``ignored_bits`` ``(D, 5) uint8`` are ``np.packbits`` of ``(D, 4 * 10)`` flags, bit
    ``area * 10 + iou``: matched to a ground truth that counts / ignored (pycocotools' ``dtIgnore``); a
    detection that is neither is a false positive there. ``gt_count (G, 4)``: per listed (image,
    category) pair the ground truths that count in each area range. Tie blocks are runs of >= 2
    detections of one image and category with exactly equal scores: ``tie_start``/``tie_length (Nb,)``
    index the detection arrays.
    """

    iou_type: str
    fingerprint: str
    image_ids: np.ndarray  # (N,) int64, sorted
    category_ids: np.ndarray  # (K,) int64, sorted
    det_image: np.ndarray  # (D,) int32 image index
    det_category: np.ndarray  # (D,) int32 category index, non-decreasing
    tp_bits: np.ndarray  # (D, 5) uint8
    ignored_bits: np.ndarray  # (D, 5) uint8
    gt_image: np.ndarray  # (G,) int32 image index
    gt_category: np.ndarray  # (G,) int32 category index
    gt_count: np.ndarray  # (G, 4) int32
    tie_start: np.ndarray  # (Nb,) int64 detection index
    tie_length: np.ndarray  # (Nb,) int64

    @property
    def tp(self) -> np.ndarray:
        """``(D, 4, 10)`` bool: true positive per (area range, IoU threshold)."""
        return _unpack(self.tp_bits)

    @property
    def ignored(self) -> np.ndarray:
        """``(D, 4, 10)`` bool: ignored per (area range, IoU threshold)."""
        return _unpack(self.ignored_bits)

    def save(self, path: str | Path) -> None:
        """Write a compressed ``.npz`` at exactly ``path`` (no pickled objects)."""
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}
        with open(path, "wb") as handle:
            np.savez_compressed(handle, allow_pickle=False, kind=np.array(KIND),
                                format_version=np.array(FORMAT_VERSION), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ImageMatching:
        """Read a file ``save`` wrote; ``MatchingError`` naming ``path`` for anything else."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise MatchingError(f"{path}: matching file not found") from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MatchingError(f"{path}: not a readable matching file ({reason})") from None
        if str(arrays.get("kind")) != KIND:
            raise MatchingError(f"{path}: not a fastinst image matching (an .npz of something else)")
        version = int(arrays.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise MatchingError(f"{path}: matching format version {version} is unknown "
                                f"(this fastinst reads version {FORMAT_VERSION})")
        missing = [f.name for f in fields(cls) if f.name not in arrays]
        if missing:
            raise MatchingError(f"{path}: matching file lacks {', '.join(missing)}")
        return cls(iou_type=str(arrays["iou_type"]), fingerprint=str(arrays["fingerprint"]),
                   **{f.name: arrays[f.name] for f in fields(cls) if f.name not in ("iou_type", "fingerprint")})


def _unpack(bits: np.ndarray) -> np.ndarray:
    flags = np.unpackbits(bits, axis=1, count=len(AREA_LABELS) * NUM_IOU_THRESHOLDS).astype(bool)
    return flags.reshape(len(bits), len(AREA_LABELS), NUM_IOU_THRESHOLDS)


def _check_params(p: Params) -> None:
    """Refuse parameters other than COCOeval's defaults for ``segm``/``bbox`` (the AP summary's)."""
    default = Params(iouType="segm")
    same = (p.iouType in ("segm", "bbox") and p.useCats and list(p.maxDets) == default.maxDets
            and np.array_equal(p.iouThrs, default.iouThrs) and np.array_equal(p.recThrs, default.recThrs)
            and np.array_equal(np.asarray(p.areaRng, float), np.asarray(default.areaRng, float))
            and list(p.areaRngLbl) == list(AREA_LABELS))
    if not same:
        raise ValueError("an image matching needs COCOeval's default segm/bbox parameters "
                         "(10 IoU thresholds, 101 recall thresholds, 4 area ranges, maxDets [1, 10, 100])")


def _fingerprint(coco_eval: COCOeval) -> str:
    """sha256 of the evaluated image and category ids and of those images' ground truth (id, image,
    category, iscrowd, area, box): equal for two evaluations on the same val set, whatever the iou type."""
    p = coco_eval.params
    gt = coco_eval.cocoGt
    anns = sorted((a for i in p.imgIds for a in gt.imgToAnns[i]), key=lambda a: a["id"])
    ints = np.array([[a["id"], a["image_id"], a["category_id"], int(a.get("iscrowd", 0))] for a in anns],
                    np.int64).reshape(-1, 4)
    floats = np.array([[a["area"], *a["bbox"]] for a in anns], np.float64).reshape(-1, 5)
    digest = hashlib.sha256()
    for array in (np.asarray(p.imgIds, np.int64), np.asarray(p.catIds, np.int64), ints, floats):
        digest.update(array.tobytes())
    return digest.hexdigest()


def matching_from_eval(coco_eval: COCOeval) -> ImageMatching:
    """The matching of ``coco_eval`` after its ``evaluate()`` (default parameters, ``segm`` or ``bbox``)."""
    p = coco_eval.params
    _check_params(p)
    if not isinstance(coco_eval.evalImgs, list):
        raise ValueError("run COCOeval.evaluate() before taking its matching")
    n_img, n_area = len(p.imgIds), len(AREA_LABELS)
    images, scores, tps, ignores, gt_rows = [], [], [], [], []
    for k in range(len(p.catIds)):
        per_area = [coco_eval.evalImgs[(k * n_area + a) * n_img:(k * n_area + a + 1) * n_img] for a in range(n_area)]
        present = [i for i, e in enumerate(per_area[0]) if e is not None]
        sizes = [len(per_area[0][i]["dtIds"]) for i in present]
        cat_scores = np.array([s for i in present for s in per_area[0][i]["dtScores"]], np.float64)
        order = np.argsort(-cat_scores, kind="mergesort")
        images.append(np.repeat(np.asarray(present, np.int32), sizes)[order])
        scores.append(cat_scores[order])
        tp, ign = [], []
        for entries in per_area:
            matched = np.concatenate([entries[i]["dtMatches"] != 0 for i in present] or [np.zeros((10, 0), bool)], 1)
            ignored = np.concatenate([entries[i]["dtIgnore"] != 0 for i in present] or [np.zeros((10, 0), bool)], 1)
            tp.append((matched & ~ignored).T[order])
            ign.append(ignored.T[order])
        tps.append(np.stack(tp, 1))
        ignores.append(np.stack(ign, 1))
        counts = np.array([[np.count_nonzero(entries[i]["gtIgnore"] == 0) for entries in per_area] for i in present],
                          np.int32).reshape(-1, n_area)
        keep = counts.any(1)
        gt_rows.append((np.asarray(present, np.int32)[keep], np.full(keep.sum(), k, np.int32), counts[keep]))
    det_image = np.concatenate(images) if images else np.zeros(0, np.int32)
    det_category = np.repeat(np.arange(len(images), dtype=np.int32), [len(x) for x in images])
    tp_flags = np.concatenate(tps) if tps else np.zeros((0, n_area, NUM_IOU_THRESHOLDS), bool)
    ign_flags = np.concatenate(ignores) if ignores else np.zeros_like(tp_flags)
    tie_start, tie_length = _tie_blocks(det_image, det_category, np.concatenate(scores) if scores else np.zeros(0))
    return ImageMatching(
        iou_type=p.iouType, fingerprint=_fingerprint(coco_eval),
        image_ids=np.asarray(p.imgIds, np.int64), category_ids=np.asarray(p.catIds, np.int64),
        det_image=det_image, det_category=det_category,
        tp_bits=np.packbits(tp_flags.reshape(len(tp_flags), n_area * NUM_IOU_THRESHOLDS), axis=1),
        ignored_bits=np.packbits(ign_flags.reshape(len(ign_flags), n_area * NUM_IOU_THRESHOLDS), axis=1),
        gt_image=np.concatenate([r[0] for r in gt_rows]) if gt_rows else np.zeros(0, np.int32),
        gt_category=np.concatenate([r[1] for r in gt_rows]) if gt_rows else np.zeros(0, np.int32),
        gt_count=np.concatenate([r[2] for r in gt_rows]) if gt_rows else np.zeros((0, n_area), np.int32),
        tie_start=tie_start, tie_length=tie_length)


def _tie_blocks(det_image: np.ndarray, det_category: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths ``(Nb,)`` of the runs of >= 2 adjacent detections (in accumulate order) with the
    same category, image and score."""
    same = ((det_image[1:] == det_image[:-1]) & (det_category[1:] == det_category[:-1])
            & (scores[1:] == scores[:-1]))
    edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return starts.astype(np.int64), (ends - starts + 1).astype(np.int64)
