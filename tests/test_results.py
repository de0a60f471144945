"""runner.results: which runs count, units, seed aggregation and the speed selection."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from dashboard_demo import CPU, V100, grid, runs_of, speed, succeed

from fastinst.grid import SpeedSetting
from runner import queue
from runner.db import FAILED, Database, Run, init_db
from runner.export import format_table
from runner.results import (
    ExportError,
    aggregate_seeds,
    grid_reference,
    grid_table,
    run_speed,
    runs_frame,
    seed_results,
    shown,
)

CUDA16 = SpeedSetting("cuda", "float16")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = init_db(f"sqlite:///{tmp_path / 'r.db'}")
    queue.submit(database, grid("g", {"model.decoder.num_layers": [1, 3]}, [0, 1], tmp_path, speed={"device": "cuda"}))
    (d1s0, _o, _s), (d1s1, _o1, _s1), (d3s0, _o2, _s2), (d3s1, _o3, _s3) = runs_of(database, "g")
    succeed(database, d1s0, ap=0.30, gflops=50.0, ap_sml=(-1.0, 0.2, 0.4), speeds=(
        speed(d1s0, 10.0, minutes_ago=90), speed(d1s0, 20.0, minutes_ago=10),  # the newer one counts
        speed(d1s0, 40.0, dtype="float16"), speed(d1s0, 2.0, "cpu")))
    succeed(database, d1s1, ap=0.32, gflops=50.0, speeds=(speed(d1s1, 22.0),))
    succeed(database, d3s0, ap=0.35, gflops=60.0, speeds=(speed(d3s0, 2.5, "cpu"),))  # no CUDA measurement
    database.write(lambda s: setattr(s.get(Run, d3s1), "status", FAILED))  # a failed run does not count
    yield database
    database.dispose()


def test_units_and_seed_aggregation(db: Database) -> None:
    per_seed = seed_results(db, "g")
    assert per_seed["speed_setting"].unique().tolist() == ["cuda/float32"]  # the grid's reference
    assert per_seed["AP"].tolist() == pytest.approx([30.0, 32.0, 35.0])  # fractions → percent
    assert math.isnan(per_seed["AP_S"][0]) and per_seed["AP_M"][0] == pytest.approx(20.0)  # -1 → missing
    assert per_seed["params"].tolist() == pytest.approx([30.0] * 3)  # millions
    assert per_seed["model.decoder.num_layers"].tolist() == [1, 1, 3]
    table = grid_table(db, "g")
    d1, d3 = table.to_dict("records")
    assert (d1["seeds"], d1["AP"], d1["AP_std"]) == (2, pytest.approx(31.0), pytest.approx(math.sqrt(2)))
    # FPS: mean of the runs' medians, envelope of their repeats (demo rows spread ± 0.5), repeats summed.
    assert (d1["fps"], d1["fps_min"], d1["fps_max"], d1["fps_repeats"], d1["fps_runs"]) == (21.0, 19.5, 22.5, 6, 2)
    assert d1["fps_device"] == V100
    assert d3["seeds"] == 1 and math.isnan(d3["fps"]) and d3["fps_runs"] == 0 and pd.isna(d3["fps_device"])
    assert aggregate_seeds(per_seed.iloc[:0])["seeds"] == 0
    assert shown("AP", None) != shown("AP", None)  # NaN


def test_speed_selection_picks_the_setting_asked(db: Database) -> None:
    assert grid_reference(db, "g") == SpeedSetting("cuda", "float32", "eager")
    half = grid_table(db, "g", CUDA16)
    assert half["fps"].tolist()[0] == 40.0 and math.isnan(half["fps"][1])
    cpu = grid_table(db, "g", SpeedSetting("cpu", "float32"))
    assert cpu["fps"].tolist() == [2.0, 2.5] and cpu["fps_device"].tolist() == [CPU, CPU]
    onnx = grid_table(db, "g", SpeedSetting("cuda", "float32", "onnxruntime"))
    assert onnx["fps"].isna().all()
    md = format_table(onnx, "md")
    assert "FPS (cuda/float32/onnxruntime)" in md and md.count("no measurement on cuda/float32/onnxruntime") == 2
    with pytest.raises(ExportError, match=r"no grid named 'h' \(grids: g\)"):
        grid_table(db, "h")


def test_runs_frame_and_speed_rows_of_a_run(db: Database) -> None:
    runs = runs_frame(db, "g").set_index("row")
    d1 = runs[runs["seed"] == 0].loc["model.decoder.num_layers=1"]
    # the newest speed row of the run on any setting (10 minutes old)
    assert (d1["fps"], d1["fps_setting"], d1["AP"]) == (20.0, "cuda/float32", pytest.approx(30.0))
    rows = run_speed(db, int(d1["run_id"]))
    assert rows["fps"].tolist() == [20.0, 2.0, 40.0, 10.0]  # newest first (the CPU row was written after float16)
    assert rows["setting"].tolist() == ["cuda/float32", "cpu/float32", "cuda/float16", "cuda/float32"]
    assert rows["repeats"].tolist() == [3] * 4 and rows["device"].tolist()[:2] == [V100, CPU]


def test_the_newest_generation_counts(db: Database, tmp_path: Path) -> None:
    before = {r: s for r, _o, s in runs_of(db, "g")}
    queue.submit(db, grid("g", {"model.decoder.num_layers": [1, 3]}, [0, 1], tmp_path, speed={"device": "cuda"}),
                 force=True)  # a new generation of the succeeded runs; the failed one is requeued
    rerun = next(r for r, o, s in runs_of(db, "g") if r not in before and o["model.decoder.num_layers"] == 1 and s == 0)
    assert grid_table(db, "g")["AP"][0] == pytest.approx(31.0)  # queued: the old generation still counts
    succeed(db, rerun, ap=0.40, gflops=50.0, speeds=(speed(rerun, 30.0),))
    d1 = grid_table(db, "g").iloc[0]
    assert (d1["AP"], d1["fps"]) == (pytest.approx(36.0), 26.0)
