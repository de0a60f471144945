"""Verdicts with their uncertainty: is row A of an ablation better than row B, and by how much?

Two sources of variation are accounted for (``docs/verdicts.md`` is the citable write-up):

- **seeds**: the runs of one row (same config, different seeds) give different APs;
- **test images**: the val set is a sample of images; every run's AP is also computed on ``B`` image
  resamples (``fastinst.engine.bootstrap``), the *same* resamples for every run (paired).

**AP of one row** (``row_interval``): the mean over its runs; variance = seed part (sample variance of
the runs' APs / n) + image part (bootstrap variance of the mean of the runs' resampled APs); the
interval is mean ± t(ν)·√variance with Welch–Satterthwaite degrees of freedom ν (the image part counts
as having infinitely many). One run: the image part alone (seed variance unknown; ``seed_note`` says so).

**ΔAP = AP(A) − AP(B)** (``ap_difference``): the same two parts, for the difference of the row means:
seed part s_A²/n_A + s_B²/n_B, image part the bootstrap variance of the paired difference (both rows
on the same resample each time, so what the images do to both rows cancels), bias-corrected likewise.
Each row needs two runs.
The verdict is ``"A better"`` / ``"B better"`` when the interval excludes 0, else ``"undecided"``,
always reported with the interval's width.

**P(A > B)** (probability of improvement, Bouthillier et al. 2021; Agarwal et al. 2021): the chance
that one run of A scores higher than one run of B on a test set drawn like the val set, estimated
over every (run of A, run of B) pair and every image resample, ties counting one half.

**FPS ratio** (``fps_ratio``): from interleaved measurements (``runner measure``), per round the ratio
of the rows' FPS (geometric mean over a row's runs), so drift between rounds cancels; the estimate is
the geometric mean of the per-round ratios, the interval a t interval on their logs (R − 1 degrees of
freedom). Rows not measured in one interleaved group fall back to an unpaired Welch interval on the
logs of every repeat (``paired=False``), which drift widens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
UNDECIDED = "undecided"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its ``level`` confidence interval [low, high]."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL
    note: str = ""

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Verdict:
    """A vs B: the difference (or ratio) with its interval, P(A > B), and the verdict."""

    interval: Interval
    p_better: float  # P(A > B); NaN where not defined (speed)
    verdict: str  # "A better" | "B better" | "undecided" (speed: "A faster" | "B faster" | "undecided")
    paired: bool = True


def _t_half(variance: float, dof: float, level: float) -> float:
    if variance <= 0:
        return 0.0
    q = stats.norm.ppf(0.5 + level / 2) if math.isinf(dof) else stats.t.ppf(0.5 + level / 2, dof)
    return float(q * math.sqrt(variance))


def _satterthwaite(total: float, parts: Sequence[tuple[float, int]]) -> float:
    """Welch–Satterthwaite degrees of freedom of ``total`` variance whose finite-dof ``parts`` are
    (variance component, runs); the rest of ``total`` counts as having infinite dof."""
    denominator = sum(v * v / (n - 1) for v, n in parts if n > 1 and v > 0)
    return math.inf if denominator == 0 else total * total / denominator


def _check_runs(full: np.ndarray, resampled: np.ndarray, name: str) -> None:
    if full.ndim != 1 or resampled.ndim != 2 or resampled.shape[0] != full.shape[0] or not len(full):
        raise ValueError(f"{name}: expected full (n,) and resampled (n, B) with n >= 1, got "
                         f"{full.shape} and {resampled.shape}")


def row_interval(full: np.ndarray, resampled: np.ndarray, level: float = LEVEL) -> Interval:
    """A row's mean AP over its runs with its interval (module docstring).

    ``full (n,)``: each run's AP on the whole val set; ``resampled (n, B)``: on each image resample."""
    full, resampled = np.asarray(full, float), np.asarray(resampled, float)
    _check_runs(full, resampled, "row")
    n = len(full)
    mean = float(full.mean())
    center, v_img = _image_part(mean, resampled.mean(axis=0))
    v_seed = float(np.var(full, ddof=1)) / n if n > 1 else 0.0
    total = v_img + v_seed
    half = _t_half(total, _satterthwaite(total, [(v_seed, n)]), level)
    note = "" if n > 1 else "1 run: image variation only (seed variation unknown)"
    return Interval(mean, center - half, center + half, level, note)


def _image_part(estimate: float, resampled: np.ndarray) -> tuple[float, float]:
    """The bias-corrected centre ``estimate - (mean(resampled) - estimate)`` and the variance of the
    ``resampled (B,)`` statistic: AP on a sample of images is biased upwards (the precision envelope is a
    running maximum), and the image bootstrap estimates that bias (Efron & Tibshirani 1993, ch. 10)."""
    if len(resampled) < 2:
        return estimate, 0.0
    return 2 * estimate - float(resampled.mean()), float(np.var(resampled, ddof=1))


def probability_of_improvement(resampled_a: np.ndarray, resampled_b: np.ndarray) -> float:
    """P(a run of A beats a run of B) over all run pairs and image resamples (ties count 1/2).

    ``resampled_a (n_a, B)``, ``resampled_b (n_b, B)``: each run's AP on the shared resamples."""
    a = np.asarray(resampled_a, float)[:, None, :]
    b = np.asarray(resampled_b, float)[None, :, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def ap_difference(full_a: np.ndarray, resampled_a: np.ndarray, full_b: np.ndarray, resampled_b: np.ndarray,
                  level: float = LEVEL) -> Verdict:
    """ΔAP = mean AP(A) − mean AP(B) with its interval, P(A > B) and the verdict (module docstring).

    ``full_*`` (n,) and ``resampled_*`` (n, B) as in ``row_interval``; the B resamples must be the same
    image multisets for both rows (paired). Each row needs at least two runs (``ValueError`` otherwise)."""
    full_a, full_b = np.asarray(full_a, float), np.asarray(full_b, float)
    resampled_a, resampled_b = np.asarray(resampled_a, float), np.asarray(resampled_b, float)
    _check_runs(full_a, resampled_a, "A")
    _check_runs(full_b, resampled_b, "B")
    if resampled_a.shape[1] != resampled_b.shape[1]:
        raise ValueError(f"A and B were resampled differently ({resampled_a.shape[1]} vs "
                         f"{resampled_b.shape[1]} resamples); a paired comparison needs the same resamples")
    n_a, n_b = len(full_a), len(full_b)
    if min(n_a, n_b) < 2:
        raise ValueError(f"a comparison needs at least 2 runs of each row (seed variation), got {n_a} and {n_b}")
    delta = float(full_a.mean() - full_b.mean())
    center, v_img = _image_part(delta, resampled_a.mean(axis=0) - resampled_b.mean(axis=0))
    part_a, part_b = float(np.var(full_a, ddof=1)) / n_a, float(np.var(full_b, ddof=1)) / n_b
    total = v_img + part_a + part_b
    half = _t_half(total, _satterthwaite(total, [(part_a, n_a), (part_b, n_b)]), level)
    interval = Interval(delta, center - half, center + half, level)
    return Verdict(interval, probability_of_improvement(resampled_a, resampled_b),
                   _decide(interval, 0.0, "A better", "B better"))


def _decide(interval: Interval, null: float, above: str, below: str) -> str:
    if interval.low > null:
        return above
    if interval.high < null:
        return below
    return UNDECIDED


def fps_ratio(rounds_a: np.ndarray, rounds_b: np.ndarray, level: float = LEVEL) -> Verdict:
    """FPS(A) / FPS(B) with its interval and verdict (module docstring), from interleaved rounds.

    ``rounds_a (n_a, R)``, ``rounds_b (n_b, R)``: each run's FPS in each of the R rounds they shared."""
    a, b = np.log(np.asarray(rounds_a, float)), np.log(np.asarray(rounds_b, float))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"expected per-run FPS per shared round, (n_a, R) and (n_b, R); got {a.shape} and {b.shape}")
    per_round = a.mean(axis=0) - b.mean(axis=0)
    rounds = len(per_round)
    mean = float(per_round.mean())
    if rounds < 2:
        interval = Interval(math.exp(mean), math.nan, math.nan, level, "1 round: no interval")
        return Verdict(interval, math.nan, UNDECIDED)
    half = _t_half(float(np.var(per_round, ddof=1)) / rounds, rounds - 1, level)
    interval = Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), level)
    return Verdict(interval, math.nan, _decide(interval, 1.0, "A faster", "B faster"))


def fps_interval(repeats: np.ndarray, level: float = LEVEL) -> Interval:
    """One row's FPS: the geometric mean of its timed repeats (1-D, every run's) with a t interval on
    their logs; what drift does during the measurement widens it."""
    logs = np.log(np.asarray(repeats, float))
    mean = float(logs.mean())
    if len(logs) < 2:
        return Interval(math.exp(mean), math.nan, math.nan, level, "1 repeat: no interval")
    half = _t_half(float(np.var(logs, ddof=1)) / len(logs), len(logs) - 1, level)
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), level)


def fps_ratio_unpaired(repeats_a: np.ndarray, repeats_b: np.ndarray, level: float = LEVEL) -> Verdict:
    """FPS(A) / FPS(B) from measurements not interleaved: Welch's t interval on the logs of every repeat
    (1-D arrays of FPS); drift between the measurements is not cancelled (``paired=False``)."""
    a, b = np.log(np.asarray(repeats_a, float)), np.log(np.asarray(repeats_b, float))
    mean = float(a.mean() - b.mean())
    if min(len(a), len(b)) < 2:
        interval = Interval(math.exp(mean), math.nan, math.nan, level, "too few repeats for an interval")
        return Verdict(interval, math.nan, UNDECIDED, paired=False)
    v_a, v_b = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    total = v_a + v_b
    half = _t_half(total, _satterthwaite(total, [(v_a, len(a)), (v_b, len(b))]), level)
    interval = Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), level,
                        "not interleaved: drift between measurements not cancelled")
    return Verdict(interval, math.nan, _decide(interval, 1.0, "A faster", "B faster"), paired=False)
