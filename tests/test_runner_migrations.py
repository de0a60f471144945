"""Upgrading a database written by an older schema keeps its data (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from runner.db import Database, SpeedMeasurement, init_db

MIGRATIONS = Path(__file__).resolve().parents[1] / "runner" / "migrations"


def _alembic() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic()).get_current_head() or ""


def _upgrade(db: Database, revision: str) -> None:
    cfg = _alembic()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_schema_0001_fps_moves_to_the_speed_table(db_url: str) -> None:
    old = Database(db_url)
    _upgrade(old, "0001")
    with old.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO grids (id, name, spec, axes, seeds, stages, created_at, updated_at) "
            "VALUES (1, 'g', '{}', '[]', '[0]', 'train,bench', '2026-01-01', '2026-01-01')"))
        for run_id, fps, device in ((1, 12.5, "cpu"), (2, None, None)):
            conn.execute(text(
                "INSERT INTO runs (id, grid_id, row_name, overrides, config, config_hash, variant_hash, seed, "
                "stages, stage_options, gpus, run_key, generation, status, priority, attempts, max_attempts, "
                "device, created_at) VALUES (:id, 1, 'r', '{}', '{}', 'h', 'v', 0, 'train,bench', '{}', 0, "
                ":key, 0, 'succeeded', 0, 1, 3, 'cpu', '2026-01-01')"), {"id": run_id, "key": f"k{run_id}"})
            conn.execute(text("INSERT INTO metrics (run_id, \"AP\", fps, fps_device, fps_dtype, extra) "
                              "VALUES (:id, 0.5, :fps, :dev, 'float32', '{}')"),
                         {"id": run_id, "fps": fps, "dev": device})
    old.dispose()
    db = init_db(db_url)
    rows = db.read(lambda s: list(s.scalars(select(SpeedMeasurement))))
    assert [(r.run_id, r.fps, r.fps_min, r.fps_max, r.device_type, r.dtype, r.repeats, r.source)
            for r in rows] == [(1, 12.5, 12.5, 12.5, "cpu", "float32", 1, "schema-0001")]
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT \"AP\" FROM metrics WHERE run_id = 1")).scalar() == 0.5
        # 0003: old runs have no host yet; the measurement queue starts empty.
        assert conn.execute(text("SELECT host FROM runs ORDER BY id")).scalars().all() == [None, None]
        assert conn.execute(text("SELECT count(*) FROM measure_jobs")).scalar() == 0
    db.dispose()
