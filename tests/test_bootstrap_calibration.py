"""Calibration of the image-bootstrap interval of one run's AP on synthetic per-image outcomes where the
truth is known: a population of images with a model's detections (pycocotools matching once); a data set
is a sample of its images (with replacement), whose AP estimates the population's AP (the AP of every
image weighted equally: the truth); the data set's own bootstrap resamples its images. The 95% interval
(``bootstrap_interval``'s bias-corrected normal interval) must cover the truth in 92-98% of 400 data sets."""

from __future__ import annotations

import numpy as np
import pytest
from verdict_helpers import coco_eval, detections, synthetic_val

from fastinst.engine.bootstrap import resample_metrics
from fastinst.engine.matching import ImageMatching, matching_from_eval
from fastinst.engine.verdicts import row_interval


@pytest.fixture(scope="module")
def population() -> ImageMatching:
    gt = synthetic_val(600, seed=1)
    return matching_from_eval(coco_eval(gt, detections(gt, 0.7, seed=3)))


def coverage(population: ImageMatching, data_sets: int, images: int, resamples: int, seed: int) -> tuple[int, float]:
    """How many of ``data_sets`` samples of ``images`` images have a 95% interval holding the truth, and
    the truth (AP of the population)."""
    n_pop = len(population.image_ids)
    truth = float(resample_metrics(population, np.ones((1, n_pop), np.int32))["AP"][0])
    rng = np.random.default_rng(seed)
    covered = 0
    for _ in range(data_sets):
        sample = rng.integers(0, n_pop, images)  # the data set: image indices into the population
        draws = np.vstack([sample, sample[rng.integers(0, images, (resamples, images))]])  # itself, then resamples
        counts = np.zeros((resamples + 1, n_pop), np.int32)
        np.add.at(counts, (np.repeat(np.arange(resamples + 1), images), draws.ravel()), 1)
        ap = resample_metrics(population, counts)["AP"]
        interval = row_interval(ap[:1], ap[None, 1:])
        covered += interval.low <= truth <= interval.high
    return covered, truth


def test_ap_interval_covers_the_true_ap_95_percent(population: ImageMatching) -> None:
    covered, truth = coverage(population, data_sets=400, images=300, resamples=100, seed=0)
    assert 0 < truth < 1
    assert 0.92 * 400 <= covered <= 0.98 * 400, f"{covered}/400"


@pytest.mark.slow
def test_ap_interval_coverage_with_more_data_sets_and_resamples(population: ImageMatching) -> None:
    covered, _truth = coverage(population, data_sets=1000, images=500, resamples=400, seed=1)
    assert 0.93 * 1000 <= covered <= 0.97 * 1000, f"{covered}/1000"
