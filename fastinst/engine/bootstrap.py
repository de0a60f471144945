"""AP on image resamples, exactly as pycocotools' COCOeval, from one evaluation's ``ImageMatching``.

A resample is a multiset of the N evaluated images, ``counts (N,)``. Its AP is COCOeval's (the matching's iou
type, default parameters, maxDets=100) on the *materialised* dataset: image i with count c becomes c new
images, each with copies of i's ground truth and detections (fresh, non-zero annotation ids, same order); the
copies of image i get consecutive new image ids, all before the copies of image j when i < j (the original
image-id order). A copy matches exactly as its original did, so only COCOeval's accumulate step depends on the
resample, and it is redone here without sorting or matching again, from these facts:

(1) accumulate concatenates the per-image lists in image-id order and stable-sorts (mergesort) by -score, so a
    category's order is (-score, image, copy, position in the image): on any sub-multiset it is the full data's
    order restricted to it (one sort per category, the matching's rank), a detection's copies side by side,
    except as in (3).
(2) with pr = tp / (fp + tp + eps) and rc = tp / npig along that order, the interpolated precision at recall
    threshold r is max{pr_j : rc_j >= r} over all points j (0 when there is none). A point after an ignored
    detection or a false positive repeats the previous recall with no more precision, so only points at true
    positives matter; of c adjacent copies of a true positive the last dominates (precision rises with tp at
    fixed fp), so each detection enters once with weight c, and a true positive's point needs only the weighted
    true positives up to it and the weighted false positives before it (false positives after the last true
    positive never matter).
(3) detections of one image and category with exactly equal scores (a tie block) repeat block-wise in the
    materialised order (A B A B for two copies), not detection-wise (A A B B), which changes the curve when the
    block holds true and false positives. For such blocks of images drawn >= 2 times the detection-wise points
    are dropped and the exact ones (every copy of every true positive) added, per resample.

Per resample and (area range, IoU threshold, category) the points are the detections that are true positives
there or false positives at another threshold of the area but not here. The weighted false positives before a
point are the weighted detections before it that are false positives at some threshold of the area (a sparse
(queries, images) matrix of interval counts times the counts), less those of them before it that are not false
positives here. Points fall in recall bins (how many of the 101 thresholds their recall reaches); the per-bin
maximum precision, made non-increasing from the right, summed over the bins, is the category's precision sum.
All of it is vectorised over chunks of resamples, in float64 holding exact integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools.cocoeval import Params
from scipy import sparse

from fastinst.engine.matching import AREA_LABELS, NUM_IOU_THRESHOLDS, ImageMatching

BOOTSTRAP_METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
CHUNK_ELEMENTS = 1 << 21  # (resamples x points) per chunk: bounds the working memory to some 100 MB

_PARAMS = Params(iouType="segm")
_RECALLS = _PARAMS.recThrs  # (101,)
_BINS = len(_RECALLS)
_CELLS = 1 << 12  # recall cells [c, c + 1) / 4096: exact in binary, each holding at most one threshold
_EPS = np.spacing(1)
# metric -> (area range index, IoU threshold indices), chosen as COCOeval.summarize chooses them
_SUMMARY = {"AP": (0, np.arange(NUM_IOU_THRESHOLDS)), "AP50": (0, np.flatnonzero(_PARAMS.iouThrs == .5)),
            "AP75": (0, np.flatnonzero(_PARAMS.iouThrs == .75)), "AP_S": (1, np.arange(NUM_IOU_THRESHOLDS)),
            "AP_M": (2, np.arange(NUM_IOU_THRESHOLDS)), "AP_L": (3, np.arange(NUM_IOU_THRESHOLDS))}


@dataclass(frozen=True)
class _Ties:
    """Tie blocks holding true and false positives, one entry (E of them) per (block, area, IoU threshold)."""

    image: np.ndarray  # (E,) image index
    segment: np.ndarray  # (E,) segment (area, IoU threshold, category)
    first: np.ndarray  # (E,) the block's first point in the segment
    stop: np.ndarray  # (E,) one past its last point
    first_tp: np.ndarray  # (E,) 1 where the first point is a true positive
    fp_before_first: np.ndarray  # (E,) the block's false positives before its first point
    tp_total: np.ndarray  # (E,) the block's true positives
    fp_total: np.ndarray  # (E,) the block's false positives
    tp_offset: np.ndarray  # (E,) where the entry's true positives start in tp_rank / tp_fp_before
    tp_rank: np.ndarray  # (X,) each true positive's 1-based rank among the block's true positives
    tp_fp_before: np.ndarray  # (X,) the block's false positives before it


@dataclass(frozen=True)
class _Plan:
    """What every resample shares: the points (P) in segment order, segments (S) = (area, IoU threshold,
    category) in that order, groups (A * K) = (area, category), queries (Q) in group order."""

    point_image: np.ndarray  # (P,) image index
    point_tp: np.ndarray  # (P,) 1.0 at true positives
    point_other: np.ndarray  # (P,) 1.0 at false positives of another threshold that are not false positives here
    point_segment: np.ndarray  # (P,)
    point_group: np.ndarray  # (P,)
    point_query: np.ndarray  # (P,) the query at the point's detection (queries: every point's (area, detection))
    segment_start: np.ndarray  # (S + 1,) first point of each segment, then P
    segment_group: np.ndarray  # (S,)
    group_query: np.ndarray  # (A * K,) first query of each group
    intervals: sparse.csr_matrix  # (Q, N) per image: candidates from the group's previous query (incl.) to this one
    gt: sparse.csr_matrix  # (A * K, N) ground truths that count
    ties: _Ties

    @property
    def rows_per_chunk(self) -> int:
        width = max(len(self.point_image), len(self.segment_group) * _BINS, self.intervals.shape[0]) + 1
        return max(1, CHUNK_ELEMENTS // width)


def resample_counts(n_images: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, n_images)`` int32: how often each image is drawn in each of ``resamples`` draws of
    ``n_images`` images with replacement (multinomial, rows summing to ``n_images``)."""
    if n_images == 0:
        return np.zeros((resamples, 0), np.int32)
    draws = rng.integers(0, n_images, size=(resamples, n_images)) + np.arange(resamples)[:, None] * n_images
    return np.bincount(draws.ravel(), minlength=resamples * n_images).reshape(resamples, n_images).astype(np.int32)


def resample_metrics(matching: ImageMatching, counts: np.ndarray) -> dict[str, np.ndarray]:
    """``BOOTSTRAP_METRICS`` → ``(B,)`` COCOeval's value (a fraction, -1 where it gives -1) on each
    materialised multiset (see the module docstring); ``counts (B, N)`` non-negative integers, rows of zeros
    allowed (all -1)."""
    counts = np.asarray(counts)
    if (counts.ndim != 2 or counts.shape[1] != len(matching.image_ids)
            or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any()):
        raise ValueError(f"counts must be (B, {len(matching.image_ids)}) non-negative integers, "
                         f"got {counts.shape} {counts.dtype}")
    plan = _plan(matching)
    out = {name: np.empty(len(counts)) for name in BOOTSTRAP_METRICS}
    step = plan.rows_per_chunk
    for lo in range(0, len(counts), step):
        for name, values in _chunk_metrics(plan, counts[lo:lo + step].astype(np.float64)).items():
            out[name][lo:lo + step] = values
    return out


def bootstrap_interval(matching: ImageMatching, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """``BOOTSTRAP_METRICS`` → (value on all images, interval low, high) over ``resamples`` image resamples
    (``resample_counts`` with ``np.random.default_rng(seed)``): the bias-corrected normal interval of
    ``fastinst.engine.verdicts.row_interval`` for one run (AP on a sample of images is biased upwards, and
    percentile intervals inherit that bias; ``docs/verdicts.md`` has the coverage of both). Resamples where
    the metric is undefined (-1) are left out; NaN bounds where the full-data value is -1 or fewer than
    two resamples define it."""
    from fastinst.engine.verdicts import row_interval

    n_images = len(matching.image_ids)
    counts = np.vstack([np.ones((1, n_images), np.int32),
                        resample_counts(n_images, resamples, np.random.default_rng(seed))])
    out = {}
    for name, values in resample_metrics(matching, counts).items():
        defined = values[1:][values[1:] > -1]
        if values[0] == -1 or len(defined) < 2:
            out[name] = (float(values[0]), float("nan"), float("nan"))
        else:
            interval = row_interval(values[:1], defined[None, :], level)
            out[name] = (float(values[0]), max(0.0, interval.low), min(1.0, interval.high))  # AP lies in [0, 1]
    return out


def _plan(m: ImageMatching) -> _Plan:
    """What every resample of ``m`` shares (see ``_Plan``)."""
    n_area, n_iou, n_cat, n_det = len(AREA_LABELS), NUM_IOU_THRESHOLDS, len(m.category_ids), len(m.det_image)
    tp = m.tp
    fp = ~tp & ~m.ignored  # (D, A, T)
    candidate = fp.any(2)  # (D, A): a false positive at some threshold (so inside the area range)
    other = candidate[:, :, None] & ~fp
    area, iou, det = np.nonzero((tp | other).transpose(1, 2, 0))
    category = m.det_category[det].astype(np.int64)
    segment = (area * n_iou + iou) * n_cat + category
    n_seg = n_area * n_iou * n_cat

    q_area, q_det = np.nonzero((tp | other).any(2).T)
    q_key, q_group = q_area * n_det + q_det, q_area * n_cat + m.det_category[q_det]
    c_area, c_det = np.nonzero(candidate.T)
    row = np.searchsorted(q_key, c_area * n_det + c_det, side="right")  # the first query after the candidate
    keep = row < len(q_key)
    keep[keep] = q_group[row[keep]] == c_area[keep] * n_cat + m.det_category[c_det[keep]]
    intervals = sparse.csr_matrix((np.ones(keep.sum()), (row[keep], m.det_image[c_det[keep]])),
                                  shape=(len(q_key), len(m.image_ids)))
    gt = sparse.csr_matrix((m.gt_count.T.ravel().astype(np.float64),
                            (np.add.outer(np.arange(n_area) * n_cat, m.gt_category).ravel(),
                             np.tile(m.gt_image, n_area))), shape=(n_area * n_cat, len(m.image_ids)))
    segment_start = np.searchsorted(segment, np.arange(n_seg + 1))
    return _Plan(point_image=m.det_image[det], point_tp=tp[det, area, iou].astype(np.float64),
                 point_other=other[det, area, iou].astype(np.float64), point_segment=segment,
                 point_group=area * n_cat + category, point_query=np.searchsorted(q_key, area * n_det + det),
                 segment_start=segment_start,
                 segment_group=np.arange(n_seg) // (n_iou * n_cat) * n_cat + np.arange(n_seg) % n_cat,
                 group_query=np.searchsorted(q_group, np.arange(n_area * n_cat)), intervals=intervals, gt=gt,
                 ties=_ties(m, tp, fp, segment * n_det + det))


def _ties(m: ImageMatching, tp: np.ndarray, fp: np.ndarray, point_key: np.ndarray) -> _Ties:
    """The tie blocks holding true and false positives, per (block, area, IoU threshold); ``tp``/``fp``
    ``(D, A, T)`` flags, ``point_key (P,)`` = segment * D + detection of each point (sorted)."""
    n_cat, n_det = len(m.category_ids), len(m.det_image)
    first_row = np.cumsum(m.tie_length) - m.tie_length  # (Nb,) each block's first row below
    last_row = first_row + m.tie_length - 1
    block = np.repeat(np.arange(len(m.tie_start)), m.tie_length)  # (R,) each row's block
    det = m.tie_start[block] + np.arange(len(block)) - first_row[block]  # (R,) its detection
    tp_b, fp_b = tp[det].astype(np.int64), fp[det].astype(np.int64)  # (R, A, T)
    tp_cum, fp_cum = (x.cumsum(0) - (x.cumsum(0) - x)[first_row][block] for x in (tp_b, fp_b))  # within blocks
    mixed = (tp_cum[last_row] > 0) & (fp_cum[last_row] > 0)  # (Nb, A, T)
    entry, area, iou = np.nonzero(mixed)
    start = m.tie_start[entry]
    segment = (area * NUM_IOU_THRESHOLDS + iou) * n_cat + m.det_category[start]
    first = np.searchsorted(point_key, segment * n_det + start)
    at_first = first_row[entry] + point_key[first] % max(n_det, 1) - start  # the row of the first point
    rows, tp_area, tp_iou = np.nonzero(tp_b.astype(bool) & mixed[block])
    order = np.lexsort((rows, tp_iou, tp_area, block[rows]))  # by entry, then by place in the block
    rows, tp_area, tp_iou = rows[order], tp_area[order], tp_iou[order]
    n_tp = tp_cum[last_row[entry], area, iou]
    return _Ties(image=m.det_image[start].astype(np.int64), segment=segment, first=first,
                 stop=np.searchsorted(point_key, segment * n_det + start + m.tie_length[entry]),
                 first_tp=tp_b[at_first, area, iou],
                 fp_before_first=fp_cum[at_first, area, iou] - fp_b[at_first, area, iou],
                 tp_total=n_tp, fp_total=fp_cum[last_row[entry], area, iou], tp_offset=np.cumsum(n_tp) - n_tp,
                 tp_rank=tp_cum[rows, tp_area, tp_iou], tp_fp_before=fp_cum[rows, tp_area, tp_iou])


def _recall_cells() -> tuple[np.ndarray, np.ndarray]:
    """Per recall cell ``(4097,)``: 101 - the thresholds below the cell, and the threshold in it (inf: none)."""
    inside = np.full(_CELLS + 1, np.inf)
    inside[(_RECALLS * _CELLS).astype(np.int64)] = _RECALLS
    return _BINS - np.searchsorted(_RECALLS, np.arange(_CELLS + 1) / _CELLS), inside


_CELL_BIN, _CELL_THRESHOLD = _recall_cells()


def _reversed_bins(recall: np.ndarray) -> np.ndarray:
    """101 - how many of the 101 recall thresholds are <= ``recall`` (in [0, 1]), same shape, int64: the
    point's bin, highest recall first (pycocotools' ``np.searchsorted(rc, recThrs, 'left')`` seen from the
    point's side, with the same float comparisons)."""
    cell = (recall * _CELLS).astype(np.intp)
    bins = _CELL_BIN[cell]
    bins -= _CELL_THRESHOLD[cell] <= recall
    return bins


def _chunk_metrics(plan: _Plan, counts: np.ndarray) -> dict[str, np.ndarray]:
    """``BOOTSTRAP_METRICS`` → ``(Bc,)`` for ``counts (Bc, N)`` float64."""
    rows = len(counts)
    gt = (plan.gt @ counts.T).T  # (Bc, A * K)
    gt_safe = np.where(gt > 0, gt, 1.0)
    precision = _precision_sums(plan, counts, gt_safe)  # (Bc, S)
    precision = precision.reshape(rows, len(AREA_LABELS), NUM_IOU_THRESHOLDS, -1)
    valid = (gt > 0).reshape(rows, len(AREA_LABELS), -1)  # (Bc, A, K)
    out = {}
    for name, (area, ious) in _SUMMARY.items():
        n_valid = valid[:, area].sum(1)
        total = (precision[:, area][:, ious] * valid[:, area, None]).sum((1, 2))
        out[name] = np.where(n_valid > 0, total / np.maximum(n_valid * len(ious) * _BINS, 1), -1.0)
    return out


def _precision_sums(plan: _Plan, counts: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(Bc, S)``: each segment's interpolated precision summed over the 101 recall thresholds, for
    ``counts (Bc, N)`` and ``gt (Bc, A * K)`` (ground truths that count, 1 where none)."""
    rows, n_seg = len(counts), len(plan.segment_group)
    tp, fp = _cumulative(plan, counts)
    pr = tp / (fp + tp + _EPS)
    row_x, seg_x, tp_x, fp_x = _tie_points(plan, counts, tp, fp, pr)
    key = _reversed_bins(tp / gt[:, plan.point_group])
    key += plan.point_segment * _BINS
    key += (np.arange(rows) * n_seg * _BINS)[:, None]
    best = np.zeros((rows, n_seg, _BINS))  # the most precision per (row, segment, reversed recall bin)
    np.maximum.at(best.reshape(-1), key.reshape(-1), pr.reshape(-1))
    key_x = _reversed_bins(tp_x / gt[row_x, plan.segment_group[seg_x]]) + (row_x * n_seg + seg_x) * _BINS
    np.maximum.at(best.reshape(-1), key_x, tp_x / (fp_x + tp_x + _EPS))
    np.maximum.accumulate(best, axis=2, out=best)  # precision at each threshold: the most at or beyond it
    return best.sum(2)


def _cumulative(plan: _Plan, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Bc, P)`` each point's weighted true positives up to it and false positives before it."""
    rows, n_points = len(counts), len(plan.point_image)
    candidates = np.zeros((rows, plan.intervals.shape[0] + 1))
    np.cumsum((plan.intervals @ counts.T).T, axis=1, out=candidates[:, 1:])  # candidates before each query + 1
    weight = counts[:, plan.point_image]
    tp_sum = np.zeros((rows, n_points + 1))
    np.cumsum(weight * plan.point_tp, axis=1, out=tp_sum[:, 1:])
    other_sum = np.zeros((rows, n_points + 1))
    np.cumsum(weight * plan.point_other, axis=1, out=other_sum[:, 1:])
    first = plan.segment_start[:-1]
    fp_base = candidates[:, plan.group_query[plan.segment_group]] - other_sum[:, first]  # (Bc, S)
    tp = tp_sum[:, 1:] - tp_sum[:, first][:, plan.point_segment]
    fp = candidates[:, plan.point_query + 1] - other_sum[:, :-1] - fp_base[:, plan.point_segment]
    return tp, fp


def _tie_points(plan: _Plan, counts: np.ndarray, tp: np.ndarray, fp: np.ndarray,
                pr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The exact points of mixed tie blocks of images drawn >= 2 times, ``(X,)`` each: row, segment, weighted
    true positives, false positives; sets ``pr`` to 0 at the detection-wise points they replace."""
    ties = plan.ties
    rows, tie = np.nonzero(counts[:, ties.image] >= 2)
    copies = counts[rows, ties.image[tie]].astype(np.int64)
    tp0 = tp[rows, ties.first[tie]] - copies * ties.first_tp[tie]  # before the block
    fp0 = fp[rows, ties.first[tie]] - copies * ties.fp_before_first[tie]
    span = ties.stop[tie] - ties.first[tie]
    pr[np.repeat(rows, span), _ranges(ties.first[tie], span)] = 0.0
    n_tp = ties.tp_total[tie]
    hit = np.repeat(np.arange(len(tie)), copies * n_tp)
    copy, nth = np.divmod(_ranges(np.zeros_like(copies), copies * n_tp), n_tp[hit])
    extra = ties.tp_offset[tie][hit] + nth
    return (rows[hit], ties.segment[tie][hit], tp0[hit] + copy * n_tp[hit] + ties.tp_rank[extra],
            fp0[hit] + copy * ties.fp_total[tie][hit] + ties.tp_fp_before[extra])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each start ``s`` and length ``n``."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())
