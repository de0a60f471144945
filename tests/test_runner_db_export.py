"""Schema migrations, URL handling, and the export tables (mean ± std over seeds)."""

from __future__ import annotations

import io
import math
import subprocess
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from runner_helpers import REPO, runner_cmd, write_grid
from sqlalchemy import select, text
from test_runner_migrations import head_revision

from fastinst.grid import SpeedSetting
from runner import queue
from runner.db import (
    DEFAULT_URL,
    QUEUED,
    REPO_ROOT,
    SUCCEEDED,
    VERSION_TABLE,
    Base,
    Database,
    Metrics,
    SpeedMeasurement,
    init_db,
    resolve_url,
    safe_url,
    utcnow,
)
from runner.export import ExportError, export_grid, format_table, grid_table, status_frame
from runner.stages import load_stage_grid


def test_migrations_build_the_models_schema_and_rerun_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = init_db(url)
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == head_revision()
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    queue.submit(db, load_stage_grid(write_grid(tmp_path / "g.yaml", seeds=2)))
    db.dispose()
    # Reopening an existing results.db keeps its data.
    again = init_db(url)
    assert len(queue.submit(again, load_stage_grid(write_grid(tmp_path / "g.yaml", seeds=2))).active) == 2
    again.dispose()


def test_url_resolution_and_password_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTINST_DB", raising=False)
    assert resolve_url() == DEFAULT_URL == f"sqlite:///{REPO_ROOT / 'results.db'}"
    monkeypatch.setenv("FASTINST_DB", "sqlite:///env.db")
    assert resolve_url() == "sqlite:///env.db" and resolve_url("sqlite:///flag.db") == "sqlite:///flag.db"
    url = "postgresql+psycopg://user:s3cret@db.example:5432/results"
    assert "s3cret" not in safe_url(url) and "***" in safe_url(url)
    assert "s3cret" not in Database(url).display_url


def test_status_password_never_printed(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/none"  # nothing listens on port 1
    out = subprocess.run(runner_cmd(url, "status"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "s3cret" not in out.stdout + out.stderr


def _speed(run_id: int, device_type: str, fps: float, spread: float = 0.0, dtype: str = "float32",
           minutes_ago: float = 0.0) -> SpeedMeasurement:
    return SpeedMeasurement(
        run_id=run_id, device_type=device_type, device="Tesla V100" if device_type == "cuda" else "Xeon", dtype=dtype,
        backend="eager", fps=fps, fps_min=fps - spread, fps_max=fps + spread, latency_ms={"median": 1000 / fps},
        repeats=3, images=10, warmup=2, threads=2, host="h", packages={}, concurrent=[], source="measure", extra={},
        created_at=utcnow() - timedelta(minutes=minutes_ago))


def _fake_results(db: Database, values: dict[tuple[int, int], dict[str, float]]) -> None:
    """Finish queued runs with the given metrics, keyed by (num_layers, seed); ``cpu``/``cuda`` values become
    speed rows (spread ±1 on the CPU); leave the other runs queued."""
    claims = []
    while (c := queue.claim(db, "w", max_gpus=1, device="cpu")) is not None:
        claims.append(c)

    def _store(s, c):  # noqa: ANN001, ANN202
        run = queue.owned_run(s, c.run_id, c.token)
        m = dict(values.get((run.overrides["model.decoder.num_layers"], run.seed)) or {})
        if not m:
            run.status = QUEUED
            return
        for device_type, spread in (("cpu", 1.0), ("cuda", 0.0)):
            if device_type in m:
                s.add(_speed(run.id, device_type, m.pop(device_type), spread))
        s.add(Metrics(run_id=run.id, **m))
        run.status = SUCCEEDED

    for c in claims:
        db.write(lambda s, c=c: _store(s, c))


def test_grid_table_mean_and_std_over_seeds(tmp_path: Path) -> None:
    db = init_db(f"sqlite:///{tmp_path / 'r.db'}")
    grid = load_stage_grid(write_grid(tmp_path / "g.yaml", name="layers", seeds=[0, 1],
                                extra="axes:\n  model.decoder.num_layers: [1, 3]\n"))
    assert grid.speed == SpeedSetting("cpu", "float32", "eager")  # a gpus: 0 grid
    queue.submit(db, grid)
    _fake_results(db, {
        # the database holds pycocotools' fractions; the table prints percent
        (1, 0): {"AP": 0.30, "AP_S": 0.10, "AP_M": 0.20, "AP_L": 0.40, "gflops": 50.0, "cpu": 20.0, "cuda": 200.0},
        (1, 1): {"AP": 0.32, "AP_S": 0.12, "AP_M": 0.22, "AP_L": 0.42, "gflops": 50.0, "cpu": 22.0, "cuda": 220.0},
        (3, 0): {"AP": 0.35, "AP_S": -1.0, "AP_M": 0.25, "AP_L": 0.45, "gflops": 60.0, "cuda": 150.0},
    })
    queue.submit(db, grid)  # nothing new: the table reads what is there
    table = grid_table(db, "layers")
    assert list(table["model.decoder.num_layers"]) == [1, 3]
    assert list(table["seeds"]) == [2, 1]
    assert table["AP"].tolist() == pytest.approx([31.0, 35.0])
    assert table["AP_std"][0] == pytest.approx(math.sqrt(2)) and math.isnan(table["AP_std"][1])
    # FPS on the grid's reference setting (cpu/float32): mean of the medians, envelope of the repeats
    assert table["fps"][0] == 21.0 and (table["fps_min"][0], table["fps_max"][0]) == (19.0, 23.0)
    assert table["fps_repeats"][0] == 6 and math.isnan(table["fps"][1])  # D3 has no CPU measurement
    md = format_table(table, "md").splitlines()
    assert [c.strip() for c in md[0].strip("|").split("|")] == [
        "model.decoder.num_layers", "AP", "AP_S", "AP_M", "AP_L", "GFLOPs", "FPS (cpu/float32)"]
    assert [c.strip() for c in md[2].strip("|").split("|")] == [
        "1", "31.0 ± 1.4", "11.0 ± 1.4", "21.0 ± 1.4", "41.0 ± 1.4", "50.0 ± 0.0", "21.0 [19.0–23.0]"]
    assert [c.strip() for c in md[3].strip("|").split("|")] == [  # -1: no small objects
        "3", "35.0", "–", "25.0", "45.0", "60.0", "no measurement on cpu/float32"]
    latex = format_table(table, "latex")
    assert r"model.decoder.num\_layers" in latex and r"AP\_S" in latex and "31.0 ± 1.4" in latex
    assert latex.startswith(r"\begin{tabular}{lrrrrrr}") and r"\toprule" in latex
    csv = pd.read_csv(io.StringIO(format_table(table, "csv")))
    assert list(csv.columns[:4]) == ["model.decoder.num_layers", "seeds", "AP", "AP_std"]
    assert {"fps", "fps_std", "fps_min", "fps_max", "fps_repeats", "fps_device", "speed_setting"} <= set(csv.columns)
    assert csv.loc[0, ["fps", "fps_min", "fps_max", "fps_device"]].tolist() == [21.0, 19.0, 23.0, "Xeon"]
    status = status_frame(db).set_index("grid")
    assert status.loc["layers", "succeeded"] == 3 and status.loc["layers", "queued"] == 1
    assert status.loc["layers", "done_%"] == 75.0
    db.dispose()
    url = f"sqlite:///{tmp_path / 'r.db'}"
    out = subprocess.run(runner_cmd(url, "export", "layers", "--format", "md"),
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "\n".join(md) + "\n"
    out = subprocess.run(runner_cmd(url, "export", "nope"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no grid named 'nope' (grids: layers)" in out.stderr


def test_export_picks_the_device_and_dtype_asked(tmp_path: Path) -> None:
    db = init_db(f"sqlite:///{tmp_path / 'r.db'}")
    queue.submit(db, load_stage_grid(write_grid(tmp_path / "g.yaml", name="layers", seeds=[0],
                                          extra="axes:\n  model.decoder.num_layers: [1, 3]\n")))
    _fake_results(db, {(1, 0): {"AP": 0.3, "cpu": 20.0, "cuda": 200.0}, (3, 0): {"AP": 0.35, "cuda": 150.0}})
    run_ids = db.read(lambda s: [m.run_id for m in s.scalars(select(Metrics).order_by(Metrics.run_id))])
    # An older CUDA measurement of D1 and a float16 one: the newest float32 row counts.
    db.write(lambda s: s.add_all([_speed(run_ids[0], "cuda", 100.0, minutes_ago=60),
                                  _speed(run_ids[0], "cuda", 400.0, dtype="float16")]))
    cuda = pd.read_csv(io.StringIO(export_grid(db, "layers", "csv", device="cuda")))
    assert cuda["fps"].tolist() == [200.0, 150.0] and set(cuda["speed_setting"]) == {"cuda/float32"}
    half = pd.read_csv(io.StringIO(export_grid(db, "layers", "csv", device="cuda", dtype="float16")))
    assert half["fps"].tolist()[0] == 400.0 and math.isnan(half["fps"][1])
    cpu = export_grid(db, "layers", "md")  # the grid's reference: cpu/float32
    assert "20.0 [19.0–21.0]" in cpu and "no measurement on cpu/float32" in cpu and "200.0" not in cpu
    with pytest.raises(ExportError, match="unknown format 'xls'"):
        export_grid(db, "layers", "xls")
    db.dispose()
    out = subprocess.run(runner_cmd(f"sqlite:///{tmp_path / 'r.db'}", "export", "layers", "--format", "csv",
                                    "--device", "cuda", "--dtype", "float16"),
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cli = pd.read_csv(io.StringIO(out.stdout))
    assert cli["fps"].tolist()[0] == 400.0 and cli["speed_setting"].tolist() == ["cuda/float16"] * 2
