"""The statistics of verdicts (fastinst.engine.verdicts): intervals, P(A > B), verdicts, FPS ratios,
and their calibration on simulated data where the truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastinst.engine.verdicts import (
    UNDECIDED,
    ap_difference,
    fps_ratio,
    fps_ratio_unpaired,
    probability_of_improvement,
    row_interval,
)


def simulate_rows(rng: np.random.Generator, delta: float, runs: int = 3, images: int = 300, resamples: int = 200,
                  seed_sd: float = 0.6, image_sd: float = 8.0) -> tuple[np.ndarray, ...]:
    """Two rows scored by a per-image mean (an AP-like statistic that is linear, so its truth is known):
    a shared per-image difficulty, a per-run offset (seed) and per-run per-image noise. The population
    difference of the rows is ``delta``. Returns (full_a, resampled_a, full_b, resampled_b)."""
    difficulty = rng.normal(0.0, image_sd, images)
    counts = rng.multinomial(images, np.full(images, 1.0 / images), size=resamples)  # shared resamples

    def row(mean: float) -> tuple[np.ndarray, np.ndarray]:
        scores = mean + rng.normal(0.0, seed_sd, (runs, 1)) + difficulty + rng.normal(0.0, 2.0, (runs, images))
        return scores.mean(axis=1), scores @ counts.T / images

    full_a, res_a = row(40.0 + delta)
    full_b, res_b = row(40.0)
    return full_a, res_a, full_b, res_b


def test_identical_rows_are_undecided_with_half_probability() -> None:
    full, resampled = np.array([30.0, 31.0, 29.5]), np.random.default_rng(0).normal(30, 1, (3, 100))
    verdict = ap_difference(full, resampled, full.copy(), resampled.copy())
    assert verdict.verdict == UNDECIDED and verdict.interval.estimate == 0.0
    assert verdict.interval.low < 0 < verdict.interval.high and verdict.interval.width > 0
    assert verdict.p_better == pytest.approx(0.5)


def test_planted_difference_is_decided_in_its_direction() -> None:
    rng = np.random.default_rng(1)
    full_a, res_a, full_b, res_b = simulate_rows(rng, delta=3.0)
    better = ap_difference(full_a, res_a, full_b, res_b)
    worse = ap_difference(full_b, res_b, full_a, res_a)
    assert better.verdict == "A better" and worse.verdict == "B better"
    assert better.interval.low > 0 and better.p_better > 0.9 and worse.p_better < 0.1
    assert better.interval.estimate == pytest.approx(-worse.interval.estimate)


def test_interval_widens_with_seed_spread_and_narrows_with_runs() -> None:
    resampled = np.zeros((2, 50))
    narrow = ap_difference(np.array([10.0, 10.2]), resampled, np.array([9.0, 9.2]), resampled)
    wide = ap_difference(np.array([10.0, 14.0]), resampled, np.array([9.0, 5.0]), resampled)
    assert wide.interval.width > 10 * narrow.interval.width
    few = ap_difference(np.array([10.0, 12.0]), resampled, np.array([9.0, 11.0]), resampled)
    many = ap_difference(np.array([10.0, 12.0] * 3), np.zeros((6, 50)), np.array([9.0, 11.0] * 3), np.zeros((6, 50)))
    assert many.interval.width < few.interval.width / 3


def test_one_run_rows_and_mismatched_resamples_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 runs"):
        ap_difference(np.array([1.0]), np.zeros((1, 10)), np.array([1.0, 2.0]), np.zeros((2, 10)))
    with pytest.raises(ValueError, match="resampled differently"):
        ap_difference(np.array([1.0, 2.0]), np.zeros((2, 10)), np.array([1.0, 2.0]), np.zeros((2, 11)))
    single = row_interval(np.array([20.0]), np.random.default_rng(0).normal(20, 1, (1, 400)))
    assert single.note and single.low < 20 < single.high  # the image part alone


def test_probability_of_improvement_counts_pairs_and_ties() -> None:
    a = np.array([[2.0, 2.0], [0.0, 0.0]])  # run a1 beats b's run, a2 loses: one of two pairs per resample
    b = np.array([[1.0, 1.0]])
    assert probability_of_improvement(a, b) == 0.5
    assert probability_of_improvement(b, b) == 0.5  # ties count 1/2
    assert probability_of_improvement(a[:1], b) == 1.0


@pytest.mark.parametrize("delta", [0.0, 1.5])
def test_difference_interval_covers_the_truth_95_percent(delta: float) -> None:
    """400 simulated data sets (3 runs per row, 300 images, 200 paired resamples): the 95% interval holds
    the population difference in 92-98% of them."""
    rng = np.random.default_rng(2026 + int(10 * delta))
    covered = sum(
        (v := ap_difference(*simulate_rows(rng, delta))).interval.low <= delta <= v.interval.high
        for _ in range(400))
    assert 0.92 * 400 <= covered <= 0.98 * 400, covered


def test_row_interval_covers_the_truth_95_percent() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(400):
        full, resampled, _fb, _rb = simulate_rows(rng, 0.0)
        interval = row_interval(full, resampled)
        covered += interval.low <= 40.0 <= interval.high
    assert 0.92 * 400 <= covered <= 0.98 * 400, covered


def test_fps_ratio_per_round_cancels_drift() -> None:
    """Drift of ±20% from round to round, the same for both variants (interleaved), and a true ratio of
    1.05: the per-round ratio decides it; the same numbers taken unpaired do not."""
    rng = np.random.default_rng(3)
    drift = np.exp(rng.normal(0, 0.2, 8))
    a = 21.0 * drift * np.exp(rng.normal(0, 0.005, (2, 8)))
    b = 20.0 * drift * np.exp(rng.normal(0, 0.005, (2, 8)))
    paired = fps_ratio(a, b)
    assert paired.verdict == "A faster" and paired.paired
    assert paired.interval.low < 1.05 < paired.interval.high and paired.interval.width < 0.03
    unpaired = fps_ratio_unpaired(a.ravel(), b.ravel())
    assert unpaired.verdict == UNDECIDED and not unpaired.paired and "drift" in unpaired.interval.note
    same = fps_ratio(b, b * 1.0)
    assert same.verdict == UNDECIDED and same.interval.estimate == 1.0


def test_fps_ratio_with_one_round_has_no_interval() -> None:
    verdict = fps_ratio(np.array([[20.0]]), np.array([[10.0]]))
    assert verdict.interval.estimate == pytest.approx(2.0) and math.isnan(verdict.interval.low) and verdict.verdict == UNDECIDED
    with pytest.raises(ValueError, match="per shared round"):
        fps_ratio(np.ones((1, 3)), np.ones((1, 4)))
