"""runner.stages: one registry of stages (run function, typed options, data needed, products)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from fastinst.config import Config
from fastinst.grid import GridError, StageOptionError
from runner.db import Metrics
from runner.job import metrics_row, speed_rows
from runner.stages import STAGES, BenchOptions, EvalOptions, JobContext, load_stage_grid


def _ctx(tmp_path: Path, options: dict, attempt: int = 1) -> tuple[JobContext, list[dict]]:
    records: list[dict] = []
    return JobContext(7, attempt, Config(), None, options, tmp_path, records.append), records


def test_every_stage_is_complete() -> None:
    assert list(STAGES) == ["train", "eval", "analyze", "bench", "noop"]  # the order stages run in
    metric_columns = {c.name for c in Metrics.__table__.columns}
    for name, stage in STAGES.items():
        assert stage.name == name
        assert callable(stage.run) != stage.exclusive, name  # exclusive: run by runner.measure, not here
        assert dataclasses.is_dataclass(stage.options)
        stage.options()  # every option has a default
        assert set(stage.metrics) <= metric_columns, name
    assert [n for n, s in STAGES.items() if s.needs_data] == ["train", "eval", "bench"]
    assert [n for n, s in STAGES.items() if s.exclusive] == ["bench"]  # timed: alone on its host
    assert STAGES["eval"].metrics[0] == "AP" and STAGES["analyze"].metrics == ("params", "gflops")


def test_options_get_their_defaults_and_types() -> None:
    assert STAGES["eval"].parse_options({}) == EvalOptions(weights=None, vis_images=8)
    assert STAGES["bench"].parse_options({"images": 30, "repeats": 5}) == BenchOptions(images=30, repeats=5)
    assert STAGES["analyze"].parse_options({"size": [256, 320]}).size == (256, 320)


@pytest.mark.parametrize(("stage", "options", "message"), [
    ("eval", {"vis_image": 3}, "unknown option 'vis_image' for stage 'eval' (known: ['weights', 'vis_images', 'bootstrap'])"),
    ("eval", {"vis_images": True}, "eval.vis_images: expected an integer >= 0, got True"),
    ("bench", {"repeats": 0}, "bench.repeats: expected an integer >= 1, got 0"),
    ("bench", {"weights": 3}, "bench.weights: expected a string or null, got 3"),
    ("analyze", {"size": [256]}, "analyze.size: expected a list of 2 integers >= 1 or null, got [256]"),
    ("noop", {"sleep": "long"}, "noop.sleep: expected a number >= 0, got 'long'"),
    ("noop", {"metrics": {"AP": "high"}}, "noop.metrics: expected a mapping of names to numbers, got {'AP': 'high'}"),
    ("noop", {"metrics": {"accuracy": 1.0}}, "noop.metrics: unknown name 'accuracy'"),
])
def test_bad_options_name_the_option(stage: str, options: dict, message: str) -> None:
    with pytest.raises(StageOptionError) as info:
        STAGES[stage].check_options(options)
    assert message in str(info.value) and info.value.key == next(iter(options))


def test_unknown_option_in_a_grid_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent("""\
        name: g
        stages: [analyze, bench]
        data: .
        stage_options:
          bench:
            images: 10
            repets: 3
    """))
    with pytest.raises(GridError) as info:
        load_stage_grid(path)
    assert str(info.value).startswith(f"{path}:7: stage_options: unknown option 'repets' for stage 'bench'")


def test_noop_reports_metrics_records_and_speed(tmp_path: Path) -> None:
    ctx, records = _ctx(tmp_path, {"noop": {"records": 2, "metrics": {"AP": 0.5, "fps": 12.5, "fps_min": 12.0}}})
    result = STAGES["noop"].run(ctx)
    assert [r["iteration"] for r in records] == [1, 2]
    assert result["AP"] == 0.5 and result["speed"]["fps"] == 12.5 and result["speed"]["fps_min"] == 12.0
    row = metrics_row(7, {"noop": result}, {"noop_s": 0.1})
    assert row.AP == 0.5 and row.fps is None and "speed" not in row.extra.get("noop", {})
    (speed,) = speed_rows(7, {"noop": result})
    assert (speed.fps, speed.fps_min, speed.fps_max, speed.device_type, speed.dtype, speed.backend, speed.source) == (
        12.5, 12.0, 12.5, "cpu", "float32", "eager", "stage")
    ctx, _ = _ctx(tmp_path, {"noop": {"fail_attempts": 1}})
    with pytest.raises(RuntimeError, match="failing attempt 1"):
        STAGES["noop"].run(ctx)


def test_metrics_row_takes_each_stages_columns_and_keeps_the_rest() -> None:
    results = {"eval": {"AP": 0.25, "AP50": 0.5, "num_images": 10}, "analyze": {"params": 3.0e6, "gflops": 12.5}}
    row = metrics_row(3, results, {"eval_s": 1.0})
    assert (row.AP, row.AP50, row.params, row.gflops) == (0.25, 0.5, 3_000_000, 12.5)
    assert row.extra == {"timings": {"eval_s": 1.0}, "eval": {"num_images": 10}}
