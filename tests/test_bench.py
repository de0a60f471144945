"""The speed protocol: repeats, median FPS, spread and latency percentiles (CPU, tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import TINY

from fastinst.cli import main
from fastinst.config import config_from_dict
from fastinst.data.spec import DataSpec
from fastinst.data.synthetic import make_synthetic
from fastinst.deploy.bench import bench, speed_summary


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


def test_bench_runs_a_backend(synth: DataSpec) -> None:
    torch.set_num_threads(1)
    cfg = config_from_dict(TINY)
    result = bench(cfg, None, synth, images=2, warmup=1, device="cpu", backend="eager", channels_last=True)
    assert result["backend"] == "eager" and result["channels_last"] is True and result["fps"] > 0
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        bench(cfg, None, synth, images=1, backend="tvm")


def test_bench_compare_prints_one_table(synth: DataSpec, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    config = tmp_path / "tiny.yaml"
    config.write_text(config_from_dict(TINY).to_yaml())
    data = ["--val-json", str(synth.val_json), "--val-images", str(synth.val_images)]
    assert main(["bench", str(config), *data, "--images", "2", "--repeats", "2",
                 "--warmup", "1", "--device", "cpu", "--compare", "--backends", "eager", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = json.loads(out[-1])
    assert [(r["backend"], r["dtype"], r["channels_last"]) for r in rows][:2] == [
        ("eager", "float32", False), ("eager", "float32", True)]
    assert rows[0]["score_dev"] == 0.0 and rows[0]["mask_iou_min"] == 1.0
    # without --weights every variant shares one random initialisation
    assert all(r["error"] is None and r["fps"] > 0 for r in rows)
    assert rows[1]["score_dev"] < 1e-4 and rows[1]["mask_iou_mean"] > 0.99, rows[1]
    assert any("eager float32 channels-last" in line for line in out) and "2 alternating rounds" in out[0]
    assert main(["bench", str(config), *data, "--compare", "--backends", "trt"]) == 2
