"""The speed protocol: repeats, median FPS, spread and latency percentiles (CPU, tiny model)."""

from __future__ import annotations

import pytest
import torch
from test_train import TINY

from fastinst.config import config_from_dict
from fastinst.data.spec import DataSpec
from fastinst.data.synthetic import make_synthetic
from fastinst.engine.bench import bench, speed_summary


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> DataSpec:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, num_train=2, num_val=3, size=96, seed=1, workers=1)
    return DataSpec.from_folder(root)


def test_speed_summary_median_spread_percentiles() -> None:
    # three repeats of two calls: 0.5 s, 0.25 s and 1.0 s per pass → 4, 8 and 2 FPS
    summary = speed_summary([[0.25, 0.25], [0.125, 0.125], [0.5, 0.5]])
    assert summary["fps_repeats"] == [4.0, 8.0, 2.0]
    assert (summary["fps"], summary["fps_min"], summary["fps_max"]) == (4.0, 2.0, 8.0)
    assert summary["median_ms"] == 250.0 and summary["p99_ms"] == 500.0 and summary["p90_ms"] == 500.0
    assert summary["mean_ms"] == pytest.approx(1000 * 1.75 / 6)


def test_bench_fields_and_repeats(synth: DataSpec) -> None:
    torch.set_num_threads(1)
    cfg = config_from_dict(TINY)
    result = bench(cfg, None, synth, images=3, warmup=1, device="cpu", repeats=2)
    assert result["num_images"] == 3 and result["repeats"] == 2 and len(result["fps_repeats"]) == 2
    assert result["fps_min"] <= result["fps"] <= result["fps_max"]
    assert result["dtype"] == "float32" and result["device_type"] == "cpu" and result["host"]
    assert result["threads"] == 1 and result["torch"] == torch.__version__ and result["test_size"] == [96, 128]
    with pytest.raises(ValueError, match="dtype"):
        bench(cfg, None, synth, images=1, dtype="int8")
    with pytest.raises(ValueError, match="repeats"):
        bench(cfg, None, synth, images=1, repeats=0)
