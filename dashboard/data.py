"""Read-only access to the results database for the dashboard, on top of ``runner.results``.

Every function opens one short read transaction (``Database.read``) and returns plain data
(DataFrames, dicts), so no session or lock outlives a call and a database being written by
workers is never blocked. Only SQLAlchemy's ORM is used: SQLite and PostgreSQL alike.

Which runs count, units (AP in percent, params in millions) and the speed selection are
``runner.results``' rules; the views call it directly for tables, per-seed results and speed rows.
Intervals and verdicts are ``runner.comparison``'s (``grid_intervals``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from fastinst.config import flatten
from fastinst.grid import SpeedSetting, parse_grid
from runner import comparison
from runner.db import (
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    Artifact,
    Database,
    GridRecord,
    Run,
    SpeedMeasurement,
    TrainRecord,
    utcnow,
)
from runner.results import AP_COLUMNS, STORED, interval_text, shown, stored_reference_speed

IMAGE_KINDS = ("predictions", "visualization", "visualizations", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# --------------------------------------------------------------------------- database state


def database_problem(db: Database) -> str | None:
    """Why the dashboard cannot show anything yet (missing file, no schema, no runs), or None."""
    if db.is_sqlite:
        path = db.url.database
        if path and path != ":memory:" and not Path(path).is_file():
            return (f"No database file at `{path}`. Queue a grid first: "
                    f"`runner --db {db.display_url} submit experiments/<grid>.yaml`.")
    tables = db.read(lambda s: set(inspect(s.connection()).get_table_names()))
    if not {"grids", "runs", "metrics"} <= tables:
        return (f"`{db.display_url}` has no fastinst-lab tables yet. Queue a grid first: "
                f"`runner --db {db.display_url} submit experiments/<grid>.yaml`.")
    if not db.read(lambda s: s.scalar(select(func.count()).select_from(Run))):
        return (f"`{db.display_url}` has no runs yet. Queue a grid with `runner submit` and start a worker "
                "with `runner work`; this page fills in as results arrive.")
    return None


# --------------------------------------------------------------------------- grids


@dataclass
class GridInfo:
    name: str
    axes: list[str]
    seeds: list[int]
    stages: str
    reference: str | None
    keys: list[str]  # the config keys its rows override (axes and explicit rows' keys), in first-seen order
    speed: SpeedSetting  # its reference speed setting
    categorical: list[str]  # those of ``keys`` with a text value in some row (query init, backbone, ...)
    rows: list[str]  # its rows' names, in grid order


def grids(db: Database) -> list[GridInfo]:
    """Every grid, by name, with its axes, overridden keys, reference speed setting and rows."""

    def _query(s: Session) -> list[GridInfo]:
        records = s.scalars(select(GridRecord).order_by(GridRecord.name))
        return [GridInfo(r.name, list(r.axes), list(r.seeds), r.stages, r.reference,
                         list(dict.fromkeys(k for row in r.rows for k in row.overrides)), stored_reference_speed(r),
                         list(dict.fromkeys(k for row in r.rows for k, v in row.overrides.items() if isinstance(v, str))),
                         [row.name for row in r.rows])
                for r in records]

    return db.read(_query)


def results_stamp(db: Database) -> tuple[int, ...]:
    """Changes whenever a run succeeds or gets an artifact or speed row: what keys cached comparisons."""
    queries = (select(func.count()).select_from(Run).where(Run.status == SUCCEEDED), select(func.max(Run.id)),
               select(func.max(Artifact.id)), select(func.max(SpeedMeasurement.id)))
    return db.read(lambda s: tuple(int(s.scalar(q) or 0) for q in queries))


def grid_intervals(db: Database, baselines: dict[str, str | None], metric: str = "AP",
                   setting: SpeedSetting | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Per grid of ``baselines`` (grid → its baseline row, or None), ``runner.comparison``'s frame on
    ``setting`` (None: each grid's reference): ``compare_grid`` against the baseline (intervals and
    verdicts) where it can be made, else ``row_intervals`` (intervals only); a grid where neither can be
    made has no frame. Also per grid why its verdicts or intervals are missing."""
    frames: dict[str, pd.DataFrame] = {}
    problems: dict[str, str] = {}
    for grid, baseline in baselines.items():
        if baseline is not None:
            try:
                frames[grid] = comparison.compare_grid(db, grid, baseline=baseline, metric=metric, setting=setting)
                continue
            except comparison.ComparisonError as exc:
                problems[grid] = f"no verdicts against {baseline}: {exc}"
        try:
            frames[grid] = comparison.row_intervals(db, grid, metric=metric, setting=setting)
        except comparison.ComparisonError as exc:
            problems[grid] = f"no 95% intervals: {exc}"
    return frames, problems


def base_config(spec: dict[str, Any], grid_path: str | None) -> dict[str, Any]:
    """The resolved config of a grid's ``base`` (a file is read relative to the grid file).

    Raises ``GridError`` when the base cannot be resolved (e.g. its file moved since the submit).
    """
    mini: dict[str, Any] = {"name": "base", "stages": ["analyze"]}
    if spec.get("base") is not None:
        mini["base"] = spec["base"]
    root = Path(grid_path).parent if grid_path else Path.cwd()
    return parse_grid(mini, source=grid_path or "<grid>", root=root).rows[0].config.to_dict()


def config_diff(base: dict[str, Any], config: dict[str, Any]) -> pd.DataFrame:
    """The dotted keys whose values differ: ``key``, ``base``, ``run`` (as text, sorted by key)."""
    flat_base, flat_run = flatten(base), flatten(config)
    keys = sorted(k for k in flat_base.keys() | flat_run.keys() if flat_base.get(k, _MISSING) != flat_run.get(k, _MISSING))
    return pd.DataFrame({"key": keys, "base": [_text(flat_base.get(k, _MISSING)) for k in keys],
                         "run": [_text(flat_run.get(k, _MISSING)) for k in keys]})


_MISSING = object()


def _text(value: Any) -> str:
    return "(absent)" if value is _MISSING else str(value)


# --------------------------------------------------------------------------- one run


@dataclass
class RunDetail:
    run_id: int
    status: str
    attempts: int
    max_attempts: int
    worker: str | None
    device: str | None
    stages: str
    overrides: dict[str, Any]
    config: dict[str, Any]
    config_hash: str
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    git_commit: str | None
    packages: dict[str, Any]
    run_dir: str | None
    grid_spec: dict[str, Any]
    grid_path: str | None
    metrics: dict[str, Any] | None  # display units (runner.results), and ``extra``
    artifacts: list[tuple[str, str]] = field(default_factory=list)


def run_detail(db: Database, run_id: int) -> RunDetail | None:
    def _query(s: Session) -> RunDetail | None:
        run = s.get(Run, run_id)
        if run is None:
            return None
        metrics: dict[str, Any] | None = None
        if run.metrics is not None:
            metrics = {c: shown(c, getattr(run.metrics, c)) for c in STORED}
            metrics["extra"] = dict(run.metrics.extra or {})
        artifacts = [(a.kind, a.path) for a in s.scalars(select(Artifact).where(Artifact.run_id == run_id)
                                                          .order_by(Artifact.id))]
        return RunDetail(
            run.id, run.status, run.attempts, run.max_attempts, run.worker,
            run.device, run.stages, dict(run.overrides), dict(run.config), run.config_hash,
            run.started_at, run.finished_at, run.error, run.git_commit, dict(run.packages or {}), run.run_dir,
            dict(run.grid.spec), run.grid.path, metrics, artifacts,
        )

    return db.read(_query)


def ap_text(metrics: dict[str, Any]) -> str:
    """``AP 12.3 [10.1, 14.5] · AP50 … (95% CI over val images)``: a run's AP (``RunDetail.metrics``) and
    each AP column with its image-bootstrap interval in ``extra["eval"]`` (``AP_ci`` …, fractions as
    stored); ``AP 12.3`` alone for a run evaluated before intervals were kept; "" for a run without AP."""
    if math.isnan(metrics["AP"]):
        return ""
    cis = (metrics.get("extra") or {}).get("eval") or {}
    texts = []
    for column in AP_COLUMNS:
        ci = cis.get(f"{column}_ci") or ()
        if len(ci) == 2 and not math.isnan(metrics[column]):
            low, high = (shown(column, v) for v in ci)
            texts.append(f"{column} {interval_text(metrics[column], low, high)}")
    return " · ".join(texts) + " (95% CI over val images)" if texts else f"AP {metrics['AP']:.1f}"


def train_records(db: Database, run_id: int) -> pd.DataFrame:
    """Per-step records of a run's latest attempt, long format: ``step``, ``series``, ``value``.

    Series are ``loss`` (the total), each named loss and ``lr``.
    """

    def _query(s: Session) -> list[tuple[int, float | None, float | None, dict[str, Any]]]:
        latest = s.scalar(select(func.max(TrainRecord.attempt)).where(TrainRecord.run_id == run_id))
        if latest is None:
            return []
        stmt = (select(TrainRecord.step, TrainRecord.loss, TrainRecord.lr, TrainRecord.losses)
                .where(TrainRecord.run_id == run_id, TrainRecord.attempt == latest).order_by(TrainRecord.step))
        return [tuple(r) for r in s.execute(stmt)]

    rows = []
    for step, loss, lr, losses in db.read(_query):
        items = [("loss", loss), ("lr", lr), *sorted((losses or {}).items())]
        rows += [{"step": step, "series": k, "value": float(v)} for k, v in items
                 if v is not None and math.isfinite(float(v))]
    return pd.DataFrame(rows, columns=["step", "series", "value"])


def artifact_images(artifacts: list[tuple[str, str]], limit: int = 8) -> list[Path]:
    """Image files among a run's visualization artifacts (a file, or the images in a folder)."""
    found: list[Path] = []
    for kind, path in artifacts:
        if kind not in IMAGE_KINDS:
            continue
        p = Path(path)
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
    return found[:limit]


# --------------------------------------------------------------------------- queue


def status_counts(db: Database) -> dict[str, int]:
    """Runs per state, every state present (0 when none)."""
    counts = dict(db.read(lambda s: [(status, n) for status, n in s.execute(
        select(Run.status, func.count()).group_by(Run.status))]))
    return {status: int(counts.get(status, 0)) for status in STATUSES}


def running_jobs(db: Database) -> pd.DataFrame:
    """Running runs with worker, device, timings and training progress (last step / ``solver.max_iter``)."""

    def _query(s: Session) -> list[dict[str, Any]]:
        active = list(s.execute(select(Run, GridRecord.name).join(GridRecord, Run.grid_id == GridRecord.id)
                                .where(Run.status == RUNNING).order_by(Run.started_at)))
        ids = [run.id for run, _ in active]
        steps = dict(s.execute(select(TrainRecord.run_id, func.max(TrainRecord.step))
                               .where(TrainRecord.run_id.in_(ids)).group_by(TrainRecord.run_id)).all()) if ids else {}
        now = utcnow()
        out = []
        for run, grid in active:
            max_iter = (run.config.get("solver") or {}).get("max_iter") if "train" in run.stages.split(",") else None
            step = steps.get(run.id)
            progress = min(1.0, (step + 1) / max_iter) if step is not None and max_iter else None
            out.append({
                "run_id": run.id, "grid": grid, "row": run.row_name, "seed": run.seed, "worker": run.worker,
                "device": run.device, "attempt": f"{run.attempts}/{run.max_attempts}", "stages": run.stages,
                "step": step, "progress": progress,
                "running_s": (now - run.started_at).total_seconds() if run.started_at else None,
                "heartbeat_s": (now - run.heartbeat_at).total_seconds() if run.heartbeat_at else None,
            })
        return out

    columns = ["run_id", "grid", "row", "seed", "progress", "step", "worker", "device", "attempt", "running_s",
               "heartbeat_s", "stages"]
    return pd.DataFrame(db.read(_query), columns=columns)


def problem_runs(db: Database, limit: int = 50) -> pd.DataFrame:
    """Failed runs, and queued or running ones retrying after an error, newest first, with the error text."""

    def _query(s: Session) -> list[dict[str, Any]]:
        stmt = (select(Run, GridRecord.name).join(GridRecord, Run.grid_id == GridRecord.id)
                .where((Run.status == FAILED) | (Run.status.in_((QUEUED, RUNNING)) & Run.error.is_not(None)))
                .order_by(Run.id.desc()).limit(limit))
        return [{"run_id": run.id, "grid": grid, "row": run.row_name, "seed": run.seed, "status": run.status,
                 "attempts": f"{run.attempts}/{run.max_attempts}", "worker": run.worker,
                 "finished_at": run.finished_at, "error": run.error or ""} for run, grid in s.execute(stmt)]

    columns = ["run_id", "grid", "row", "seed", "status", "attempts", "worker", "finished_at", "error"]
    return pd.DataFrame(db.read(_query), columns=columns)


def error_summary(error: str, lines: int = 1) -> str:
    """The last non-empty line(s) of an error text (a traceback's exception line)."""
    kept = [line for line in error.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])

