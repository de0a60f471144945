"""Schema migrations, URL handling, and the export tables (mean ± std over seeds)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from runner_helpers import REPO, runner_cmd, write_grid
from sqlalchemy import text
from test_runner_migrations import head_revision

from fastinst.grid import load_grid
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
    init_db,
    resolve_url,
    safe_url,
)
from runner.export import format_table, grid_table, status_frame


def test_migrations_build_the_models_schema_and_rerun_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = init_db(url)
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == head_revision()
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    queue.submit(db, load_grid(write_grid(tmp_path / "g.yaml", seeds=2)))
    db.dispose()
    # Reopening an existing results.db keeps its data.
    again = init_db(url)
    assert len(queue.submit(again, load_grid(write_grid(tmp_path / "g.yaml", seeds=2))).active) == 2
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


def _fake_results(db: Database, values: dict[tuple[int, int], dict[str, float]]) -> None:
    """Finish queued runs with the given metrics, keyed by (num_layers, seed); leave the others queued."""
    claims = []
    while (c := queue.claim(db, "w", max_gpus=1, device="cpu")) is not None:
        claims.append(c)

    def _store(s, c):  # noqa: ANN001, ANN202
        run = queue.owned_run(s, c.run_id, c.token)
        m = values.get((run.overrides["model.decoder.num_layers"], run.seed))
        if m is None:
            run.status = QUEUED
        else:
            s.add(Metrics(run_id=run.id, **m))
            run.status = SUCCEEDED

    for c in claims:
        db.write(lambda s, c=c: _store(s, c))


def test_grid_table_mean_and_std_over_seeds(tmp_path: Path) -> None:
    db = init_db(f"sqlite:///{tmp_path / 'r.db'}")
    grid = load_grid(write_grid(tmp_path / "g.yaml", name="layers", seeds=[0, 1],
                                extra="axes:\n  model.decoder.num_layers: [1, 3]\n"))
    queue.submit(db, grid)
    _fake_results(db, {
        # the database holds pycocotools' fractions; the table prints percent
        (1, 0): {"AP": 0.30, "AP_S": 0.10, "AP_M": 0.20, "AP_L": 0.40, "gflops": 50.0, "fps": 20.0},
        (1, 1): {"AP": 0.32, "AP_S": 0.12, "AP_M": 0.22, "AP_L": 0.42, "gflops": 50.0, "fps": 22.0},
        (3, 0): {"AP": 0.35, "AP_S": -1.0, "AP_M": 0.25, "AP_L": 0.45, "gflops": 60.0, "fps": 15.0},
    })
    queue.submit(db, grid)  # nothing new: the table reads what is there
    table = grid_table(db, "layers")
    assert list(table["model.decoder.num_layers"]) == [1, 3]
    assert list(table["seeds"]) == [2, 1]
    assert table["AP"].tolist() == pytest.approx([31.0, 35.0])
    assert table["AP_std"][0] == pytest.approx(math.sqrt(2)) and math.isnan(table["AP_std"][1])
    md = format_table(table, "md")
    assert md.splitlines()[0] == "| model.decoder.num_layers | AP | AP_S | AP_M | AP_L | GFLOPs | FPS |"
    assert md.splitlines()[2] == "| 1 | 31.0 ± 1.4 | 11.0 ± 1.4 | 21.0 ± 1.4 | 41.0 ± 1.4 | 50.0 ± 0.0 | 21.0 ± 1.4 |"
    assert md.splitlines()[3] == "| 3 | 35.0 | – | 25.0 | 45.0 | 60.0 | 15.0 |"  # -1: no small objects
    latex = format_table(table, "latex")
    assert r"model.decoder.num\_layers & AP & AP\_S" in latex and r"31.0 $\pm$ 1.4" in latex
    csv = format_table(table, "csv").splitlines()
    assert csv[0].startswith("model.decoder.num_layers,seeds,AP,AP_std")
    status = status_frame(db).set_index("grid")
    assert status.loc["layers", "succeeded"] == 3 and status.loc["layers", "queued"] == 1
    assert status.loc["layers", "done_%"] == 75.0
    db.dispose()
    out = subprocess.run(runner_cmd(f"sqlite:///{tmp_path / 'r.db'}", "export", "layers", "--format", "md"),
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == md
    out = subprocess.run(runner_cmd(f"sqlite:///{tmp_path / 'r.db'}", "export", "nope"),
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no grid named 'nope' (grids: layers)" in out.stderr
