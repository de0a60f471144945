"""Which results count and how they are shown: the one module ``runner export`` and the dashboard share.

- **Which runs count.** A grid row's result for a seed is the newest generation of a *succeeded* run of
  the row's variant (config hash without seed) with that seed and the grid's stages, whichever grid
  queued it (the D3 baseline of every ablation is one run).
- **Speed.** A run may have any number of ``speed`` rows; one (device type, dtype, backend) setting is
  chosen (``SpeedSetting``, default: the grid's reference setting, ``fastinst.grid.reference_speed``) and
  per run the newest row with exactly that setting counts. A run without one has no FPS there, and
  tables say so (``no_speed_text``).
- **Units.** The database keeps pycocotools' AP fractions and raw parameter counts; frames from here carry
  display units (``METRICS``): AP in percent (COCO's -1, "no objects of that size", becomes missing),
  params in millions, GFLOPs, FPS.
- **Seeds.** A grid row's table entry is the mean and sample std over its seeds (``<metric>_std``, NaN
  for one seed). FPS per run is the median over its timed repeats with their min and max; over seeds
  ``fps`` is the mean of the runs' medians, ``fps_std`` their std, and ``fps_min``/``fps_max`` the envelope
  (lowest min, highest max) of every repeat of every seed; ``fps_repeats`` counts those repeats and
  ``fps_runs`` the seeds measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from fastinst.config import flatten
from fastinst.grid import SpeedSetting, reference_speed
from runner.db import SUCCEEDED, Database, GridRecord, GridRow, Metrics, Run, SpeedMeasurement, in_batches
from runner.errors import RunnerInputError


class ExportError(RunnerInputError):
    """The requested grid or format does not exist."""


@dataclass(frozen=True)
class MetricColumn:
    """A result column: ``name`` (frame column and ``metrics``/``speed`` attribute), header, unit, the
    factor from stored to shown values, and the digits tables print."""

    name: str
    title: str
    unit: str
    scale: float = 1.0
    digits: int = 1

    @property
    def is_ap(self) -> bool:
        return self.unit == "%"


METRICS: dict[str, MetricColumn] = {c.name: c for c in (
    *(MetricColumn(k, k, "%", 100.0) for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR100")),
    MetricColumn("params", "Params (M)", "M", 1e-6),
    MetricColumn("gflops", "GFLOPs", "GFLOPs"),
    MetricColumn("fps", "FPS", "images/s"),
)}
AP_COLUMNS = tuple(name for name, c in METRICS.items() if c.is_ap)
STORED = tuple(name for name in METRICS if name != "fps")  # columns of the ``metrics`` table
TABLE_METRICS = ("AP", "AP_S", "AP_M", "AP_L", "gflops", "fps")  # the paper's table columns
SPEED_COLUMNS = ("fps", "fps_min", "fps_max", "fps_repeats", "fps_device")
SEED_COLUMNS = ["grid", "row", "seed", "run_id", *METRICS, *SPEED_COLUMNS[1:], "speed_setting"]


def setting_text(setting: SpeedSetting) -> str:
    """``cuda/float32`` (``/backend`` when it is not the default eager)."""
    return f"{setting.device}/{setting.dtype}" + (f"/{setting.backend}" if setting.backend != "eager" else "")


def interval_text(value: float, low: float, high: float, digits: int = 1, signed: bool = False) -> str:
    """``12.3 [10.1, 14.5]`` (``+1.2 [-0.3, +2.7]`` with ``signed``); the value alone without bounds; ``–``."""
    if math.isnan(value):
        return "–"
    sign = "+" if signed else ""
    text = f"{value:{sign}.{digits}f}"
    return text if math.isnan(low) else f"{text} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def no_speed_text(label: str) -> str:
    """What a table shows for a row without a measurement on the setting ``label`` (``setting_text``)."""
    return f"no measurement on {label}"


def stored_reference_speed(record: GridRecord) -> SpeedSetting:
    """A stored grid's reference speed setting (its ``speed`` field, else the default by its resources)."""
    return reference_speed(record.spec or {})


def grid_record(s: Session, grid: str) -> GridRecord:
    record = s.scalars(select(GridRecord).where(GridRecord.name == grid)).one_or_none()
    if record is None:
        names = list(s.scalars(select(GridRecord.name).order_by(GridRecord.name)))
        raise ExportError(f"no grid named {grid!r} (grids: {', '.join(names) or 'none'})")
    return record


def grid_reference(db: Database, grid: str) -> SpeedSetting:
    """The reference speed setting of the stored grid ``grid``."""
    return db.read(lambda s: stored_reference_speed(grid_record(s, grid)))


def shown(name: str, value: Any) -> float:
    """A stored value in display units (NaN where missing; COCO's -1 AP is missing)."""
    if value is None:
        return math.nan
    column = METRICS[name]
    if column.is_ap and value < 0:
        return math.nan
    return float(value) * column.scale


# --------------------------------------------------------------------------- selection


def newest_speed(s: Session, run_ids: Iterable[int], setting: SpeedSetting) -> dict[int, SpeedMeasurement]:
    """Per run, the newest speed row measured with exactly ``setting`` (runs without one are absent)."""
    ids = sorted(set(run_ids))
    found: dict[int, SpeedMeasurement] = {}
    for batch in in_batches(ids):
        stmt = (select(SpeedMeasurement)
                .where(SpeedMeasurement.run_id.in_(batch), SpeedMeasurement.device_type == setting.device,
                       SpeedMeasurement.dtype == setting.dtype, SpeedMeasurement.backend == setting.backend)
                .order_by(SpeedMeasurement.created_at, SpeedMeasurement.id))
        for row in s.scalars(stmt):
            found[row.run_id] = row  # later rows win
    return found


def counted_runs(s: Session, records: list[GridRecord]) -> dict[tuple[str, int, str], tuple[Run, Metrics | None]]:
    """(variant hash, seed, stages) → the newest generation's succeeded run (and its metrics)."""
    hashes = sorted({row.variant_hash for r in records for row in r.rows})
    found: dict[tuple[str, int, str], tuple[Run, Metrics | None]] = {}
    for batch in in_batches(hashes):
        stmt = (select(Run, Metrics).outerjoin(Metrics, Metrics.run_id == Run.id)
                .where(Run.variant_hash.in_(batch), Run.status == SUCCEEDED)
                .order_by(Run.generation, Run.id))
        for run, metrics in s.execute(stmt):
            found[(run.variant_hash, run.seed, run.stages)] = (run, metrics)  # newest generation wins
    return found


def _speed_values(speed: SpeedMeasurement | None) -> dict[str, Any]:
    if speed is None:
        return {"fps": math.nan, "fps_min": math.nan, "fps_max": math.nan, "fps_repeats": 0, "fps_device": None}
    return {"fps": speed.fps, "fps_min": speed.fps_min, "fps_max": speed.fps_max, "fps_repeats": speed.repeats,
            "fps_device": speed.device}


def seed_results(db: Database, grid: str | None = None, setting: SpeedSetting | None = None) -> pd.DataFrame:
    """One row per (grid, grid row, seed) with a counted run: metrics in display units, the run's FPS on
    ``setting`` (None: each grid's reference setting), ``speed_setting`` (its text), and the run's value of
    every config key that some row of its grid overrides (so rows of one grid are comparable key by key)."""

    def _query(s: Session) -> list[dict[str, Any]]:
        records = [grid_record(s, grid)] if grid is not None else \
            list(s.scalars(select(GridRecord).order_by(GridRecord.name)))
        runs = counted_runs(s, records)
        out = []
        for record in records:
            chosen = setting or stored_reference_speed(record)
            hits = [(row, seed, runs.get((row.variant_hash, seed, record.stages)))
                    for row in record.rows for seed in record.row_seeds(row.name)]
            speed = newest_speed(s, [hit[0].id for _r, _s, hit in hits if hit], chosen)
            keys = list(dict.fromkeys(k for row in record.rows for k in row.overrides))
            for row, seed, hit in hits:
                if hit is None:
                    continue
                run, metrics = hit
                entry: dict[str, Any] = {"grid": record.name, "row": row.name, "seed": seed, "run_id": run.id}
                entry.update({k: shown(k, getattr(metrics, k) if metrics else None) for k in STORED})
                entry.update(_speed_values(speed.get(run.id)))
                entry["speed_setting"] = setting_text(chosen)
                config = flatten(run.config)
                entry.update({k: config.get(k, row.overrides.get(k)) for k in keys})
                out.append(entry)
        return out

    rows = db.read(_query)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=SEED_COLUMNS)


# --------------------------------------------------------------------------- aggregation over seeds


def aggregate_seeds(per_seed: pd.DataFrame) -> dict[str, Any]:
    """The seeds of one grid row → mean/std per metric and the FPS envelope (module docstring)."""
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for name in METRICS:
        values = pd.to_numeric(per_seed[name], errors="coerce").dropna() if name in per_seed else pd.Series([])
        out[name] = float(values.mean()) if len(values) else math.nan
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    measured = per_seed[pd.to_numeric(per_seed["fps"], errors="coerce").notna()] if len(per_seed) else per_seed
    out["fps_min"] = float(measured["fps_min"].min()) if len(measured) else math.nan
    out["fps_max"] = float(measured["fps_max"].max()) if len(measured) else math.nan
    out["fps_repeats"] = int(measured["fps_repeats"].sum()) if len(measured) else 0
    out["fps_runs"] = len(measured)
    out["fps_device"] = "; ".join(dict.fromkeys(str(d) for d in measured["fps_device"])) if len(measured) else None
    return out


def grid_table(db: Database, grid: str, setting: SpeedSetting | None = None) -> pd.DataFrame:
    """The grid's rows (in grid order) × every metric: mean and std over seeds, FPS on ``setting`` (None:
    the grid's reference setting) with its envelope (module docstring).

    Key columns are ``row`` (when the grid has explicit rows) and one column per axis key, then ``seeds``,
    the metrics (``AP``, ``AP_std``, … ``fps``, ``fps_std``, ``fps_min``, ``fps_max``, ``fps_repeats``,
    ``fps_runs``, ``fps_device``) and ``speed_setting`` (the setting's text, ``setting_text``).
    """

    def _grid(s: Session) -> tuple[list[GridRow], list[str], bool, SpeedSetting]:
        record = grid_record(s, grid)
        return list(record.rows), list(record.axes), bool(record.spec.get("rows")), stored_reference_speed(record)

    rows, axes, explicit, reference = db.read(_grid)
    chosen = setting or reference
    per_seed = seed_results(db, grid, chosen)
    out = []
    for row in rows:
        entry: dict[str, Any] = {"row": row.name} if explicit else {}
        entry.update({axis: row.overrides.get(axis) for axis in axes})
        entry.update(aggregate_seeds(per_seed[per_seed["row"] == row.name]))
        entry["speed_setting"] = setting_text(chosen)
        out.append(entry)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- runs and speed rows


def runs_frame(db: Database, grid: str | None = None) -> pd.DataFrame:
    """One row per run (newest first): queue state, metrics in display units, the FPS of its newest speed
    row on any setting (``fps_setting`` says which), and its override columns."""

    def _query(s: Session) -> list[dict[str, Any]]:
        stmt = (select(Run, GridRecord.name, Metrics).join(GridRecord, Run.grid_id == GridRecord.id)
                .outerjoin(Metrics, Metrics.run_id == Run.id).order_by(Run.id.desc()))
        if grid:
            stmt = stmt.where(GridRecord.name == grid)
        found = list(s.execute(stmt))
        newest: dict[int, SpeedMeasurement] = {}
        ids = [run.id for run, _g, _m in found]
        for batch in in_batches(ids):
            for measured in s.scalars(select(SpeedMeasurement).where(SpeedMeasurement.run_id.in_(batch))
                                      .order_by(SpeedMeasurement.created_at, SpeedMeasurement.id)):
                newest[measured.run_id] = measured
        out = []
        for run, grid_name, m in found:
            speed = newest.get(run.id)
            row = {
                "run_id": run.id, "grid": grid_name, "row": run.row_name, "seed": run.seed,
                "status": run.status, "attempts": run.attempts, "max_attempts": run.max_attempts,
                "priority": run.priority, "worker": run.worker, "device": run.device,
                "config_hash": run.config_hash, "variant_hash": run.variant_hash, "stages": run.stages,
                "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
                "heartbeat_at": run.heartbeat_at, "error": run.error,
            }
            row.update({k: shown(k, getattr(m, k) if m else None) for k in STORED})
            row["fps"] = speed.fps if speed else math.nan
            row["fps_setting"] = setting_text(SpeedSetting(speed.device_type, speed.dtype, speed.backend)) \
                if speed else None
            row.update(run.overrides)
            out.append(row)
        return out

    rows = db.read(_query)
    columns = ["run_id", "grid", "row", "seed", "status", "attempts", "max_attempts", "priority", "worker", "device",
               "config_hash", "variant_hash", "stages", "created_at", "started_at", "finished_at", "heartbeat_at",
               "error", *METRICS, "fps_setting"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


SPEED_ROW_COLUMNS = ["id", "setting", "device", "fps", "fps_min", "fps_max", "repeats", "images", "warmup",
                     "threads", "latency_median_ms", "latency_p90_ms", "host", "source", "concurrent", "created_at"]


def run_speed(db: Database, run_id: int) -> pd.DataFrame:
    """Every speed row of a run, newest first."""

    def _query(s: Session) -> list[dict[str, Any]]:
        stmt = (select(SpeedMeasurement).where(SpeedMeasurement.run_id == run_id)
                .order_by(SpeedMeasurement.created_at.desc(), SpeedMeasurement.id.desc()))
        return [{"id": r.id, "setting": setting_text(SpeedSetting(r.device_type, r.dtype, r.backend)),
                 "device": r.device, "fps": r.fps, "fps_min": r.fps_min, "fps_max": r.fps_max, "repeats": r.repeats,
                 "images": r.images, "warmup": r.warmup, "threads": r.threads,
                 "latency_median_ms": (r.latency_ms or {}).get("median"), "latency_p90_ms": (r.latency_ms or {}).get("p90"),
                 "host": r.host, "source": r.source, "concurrent": len(r.concurrent or []), "created_at": r.created_at}
                for r in s.scalars(stmt)]

    return pd.DataFrame(db.read(_query), columns=SPEED_ROW_COLUMNS)


def speed_settings(db: Database, grids: list[str] | None = None) -> list[SpeedSetting]:
    """The settings measured for runs of ``grids`` (None: all), most measured runs first."""

    def _query(s: Session) -> list[tuple[str, str, str, int]]:
        stmt = (select(SpeedMeasurement.device_type, SpeedMeasurement.dtype, SpeedMeasurement.backend,
                       SpeedMeasurement.run_id).join(Run, Run.id == SpeedMeasurement.run_id)
                .join(GridRecord, GridRecord.id == Run.grid_id))
        if grids is not None:
            stmt = stmt.where(GridRecord.name.in_(grids))
        return [(device, dtype, backend, run_id) for device, dtype, backend, run_id in s.execute(stmt)]

    runs: dict[SpeedSetting, set[int]] = {}
    for device, dtype, backend, run_id in db.read(_query):
        runs.setdefault(SpeedSetting(device, dtype, backend), set()).add(run_id)
    return sorted(runs, key=lambda k: (-len(runs[k]), str(k)))
