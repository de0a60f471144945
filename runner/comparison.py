"""``runner compare``: every row of a grid against its baseline, with intervals and verdicts.

Per row: its AP over seeds with a 95% interval (seeds and test images), ΔAP against the baseline with
its interval, P(row > baseline), the verdict and the interval's width, and the FPS ratio against the
baseline with its interval (``fastinst.engine.verdicts`` has the statistics, ``docs/verdicts.md`` the
method). The runs are those ``runner.results`` counts; AP on image resamples comes from each run's
per-image matching (artifact kind ``matching``, written by the eval stage), never from re-evaluating.
Every run of the comparison is resampled with the same ``resamples`` image multisets (``seed``), so
the comparison is paired over images. Nothing stored is changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from fastinst.engine.verdicts import (
    LEVEL,
    UNDECIDED,
    Interval,
    Verdict,
    ap_difference,
    fps_interval,
    fps_ratio,
    fps_ratio_unpaired,
    row_interval,
)
from fastinst.grid import COMPARABLE_METRICS, SpeedSetting
from runner.db import Artifact, Database, SpeedMeasurement
from runner.errors import RunnerInputError
from runner.results import (
    METRICS,
    counted_runs,
    grid_record,
    interval_text,
    setting_text,
    stored_reference_speed,
)
from runner.stages import MATCHING

RESAMPLES = 1000
VERDICT_WORDS = {"A better": "better", "B better": "worse", "A faster": "faster", "B faster": "slower",
                 UNDECIDED: UNDECIDED}
COMPARE_COLUMNS = ("runs", "value", "value_lo", "value_hi", "delta", "delta_lo", "delta_hi", "delta_width",
                   "p_better", "verdict", "fps_ratio", "fps_ratio_lo", "fps_ratio_hi", "fps_verdict", "fps_paired",
                   "note")


class ComparisonError(RunnerInputError):
    """The comparison cannot be made (unknown row, too few runs, missing matchings, other val sets)."""


@dataclass
class RowRuns:
    """The counted runs of one grid row: ids, seeds, matching files and speed rows on the setting."""

    name: str
    run_ids: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    matchings: list[str | None] = field(default_factory=list)
    speed: list[list[SpeedMeasurement]] = field(default_factory=list)  # per run, oldest first


def _row_runs(s: Session, grid: str, setting: SpeedSetting | None) -> tuple[str | None, SpeedSetting, list[RowRuns]]:
    record = grid_record(s, grid)
    chosen = setting or stored_reference_speed(record)
    runs = counted_runs(s, [record])
    rows = []
    for row in record.rows:
        entry = RowRuns(row.name)
        for seed in record.row_seeds(row.name):
            hit = runs.get((row.variant_hash, seed, record.stages))
            if hit is not None:
                entry.run_ids.append(hit[0].id)
                entry.labels.append(f"run {hit[0].id} (seed {seed})")
        rows.append(entry)
    ids = [i for r in rows for i in r.run_ids]
    matchings = {a.run_id: a.path for a in s.scalars(
        select(Artifact).where(Artifact.run_id.in_(ids), Artifact.kind == MATCHING).order_by(Artifact.id))}
    speed: dict[int, list[SpeedMeasurement]] = {}
    for measurement in s.scalars(select(SpeedMeasurement).where(
            SpeedMeasurement.run_id.in_(ids), SpeedMeasurement.device_type == chosen.device,
            SpeedMeasurement.dtype == chosen.dtype, SpeedMeasurement.backend == chosen.backend)
            .order_by(SpeedMeasurement.created_at, SpeedMeasurement.id)):
        speed.setdefault(measurement.run_id, []).append(measurement)
    for entry in rows:
        entry.matchings = [matchings.get(i) for i in entry.run_ids]
        entry.speed = [speed.get(i, []) for i in entry.run_ids]
    return record.reference, chosen, rows


# --------------------------------------------------------------------------- AP on image resamples


def _load_matchings(rows: list[RowRuns]) -> dict[int, Any]:
    """run id → its ``ImageMatching``; ``ComparisonError`` naming the runs without one, and the rows
    evaluated on another val set than the first."""
    from fastinst.engine.matching import ImageMatching, MatchingError

    missing = [f"{row.name}: {label}" for row in rows for label, path in zip(row.labels, row.matchings)
               if path is None or not Path(path).is_file()]
    if missing:
        raise ComparisonError(
            f"no per-image matching for {'; '.join(missing)} (evaluated before matchings were kept, or the file "
            f"is gone); evaluate again (runner submit GRID --force) to compare with intervals")
    loaded: dict[int, Any] = {}
    fingerprints: dict[str, list[str]] = {}
    for row in rows:
        for run_id, path in zip(row.run_ids, row.matchings):
            try:
                loaded[run_id] = ImageMatching.load(str(path))
            except MatchingError as exc:
                raise ComparisonError(f"{row.name}: {exc}") from None
            fingerprints.setdefault(loaded[run_id].fingerprint, []).append(f"{row.name} run {run_id}")
    if len(fingerprints) > 1:
        groups = " vs ".join(f"[{', '.join(names)}]" for names in fingerprints.values())
        raise ComparisonError(f"these runs were evaluated on different val sets (images or annotations differ), "
                              f"so their APs cannot be paired: {groups}")
    return loaded


def resampled_metric(matchings: dict[int, Any], metric: str, resamples: int, seed: int) -> dict[int, np.ndarray]:
    """run id → ``(1 + resamples,)`` its ``metric`` (percent) on the full val set, then on each of the
    shared image resamples (NaN where COCO gives -1)."""
    from fastinst.engine.bootstrap import resample_counts, resample_metrics

    if not matchings:
        return {}
    n_images = len(next(iter(matchings.values())).image_ids)
    counts = np.vstack([np.ones((1, n_images), np.int32),
                        resample_counts(n_images, resamples, np.random.default_rng(seed))])
    out = {}
    for run_id, matching in matchings.items():
        values = resample_metrics(matching, counts)[metric].astype(float)
        out[run_id] = np.where(values < 0, np.nan, values * METRICS[metric].scale)
    return out


# --------------------------------------------------------------------------- FPS ratios


def _interleave_group(row: SpeedMeasurement) -> str | None:
    info = (row.extra or {}).get("interleave")
    return info.get("group") if isinstance(info, dict) else None


def _rounds(row: SpeedMeasurement) -> list[float]:
    return [float(v) for v in (row.extra or {}).get("fps_repeats") or [row.fps]]


def speed_verdict(a: RowRuns, b: RowRuns, level: float) -> Verdict | None:
    """FPS(a) / FPS(b): from the newest interleaved group holding runs of both, else unpaired from each
    run's newest row; None when either row has no measurement on the setting."""
    groups: dict[str, tuple[Any, list[SpeedMeasurement], list[SpeedMeasurement]]] = {}
    for side, entry in enumerate((a, b)):
        for rows in entry.speed:
            for row in rows:
                group = _interleave_group(row)
                if group is not None:
                    found = groups.setdefault(group, (row.created_at, [], []))
                    found[1 + side].append(row)
    shared = [(when, ra, rb) for when, ra, rb in groups.values() if ra and rb]
    if shared:
        _when, rows_a, rows_b = max(shared, key=lambda g: g[0])
        length = min(len(_rounds(r)) for r in [*rows_a, *rows_b])
        return fps_ratio(np.array([_rounds(r)[:length] for r in rows_a]),
                         np.array([_rounds(r)[:length] for r in rows_b]), level)
    newest_a = [rows[-1] for rows in a.speed if rows]
    newest_b = [rows[-1] for rows in b.speed if rows]
    if not newest_a or not newest_b:
        return None
    return fps_ratio_unpaired(np.concatenate([_rounds(r) for r in newest_a]),
                              np.concatenate([_rounds(r) for r in newest_b]), level)


# --------------------------------------------------------------------------- the table


def _check(rows: list[RowRuns], baseline: str | None, grid: str) -> RowRuns:
    names = [r.name for r in rows]
    if baseline is None:
        raise ComparisonError(f"grid {grid!r} names no baseline row; pass --baseline ROW (rows: {', '.join(names)})")
    if baseline not in names:
        raise ComparisonError(f"no row named {baseline!r} in grid {grid!r} (rows: {', '.join(names)})")
    base = rows[names.index(baseline)]
    if len(base.run_ids) < 2:
        raise ComparisonError(f"baseline {baseline!r} has {len(base.run_ids)} succeeded run(s); a comparison needs "
                              f"at least 2 (seed variation): give the grid more seeds, or a seed_policy")
    return base


def _interval_columns(interval: Interval) -> dict[str, float]:
    return {"value": interval.estimate, "value_lo": interval.low, "value_hi": interval.high}


def _base_record(entry: RowRuns) -> dict[str, Any]:
    record: dict[str, Any] = {"row": entry.name, "runs": len(entry.run_ids), "note": ""}
    record.update(dict.fromkeys(COMPARE_COLUMNS[1:-1], math.nan))
    record.update(verdict="", fps_verdict="", fps_paired=False, fps=math.nan, fps_lo=math.nan, fps_hi=math.nan)
    return record


def _row_fps(entry: RowRuns, level: float) -> dict[str, float]:
    newest = [rows[-1] for rows in entry.speed if rows]
    if not newest:
        return {}
    interval = fps_interval(np.concatenate([_rounds(r) for r in newest]), level)
    return {"fps": interval.estimate, "fps_lo": interval.low, "fps_hi": interval.high}


def _evaluate_rows(db: Database, grid: str, metric: str, resamples: int, level: float, seed: int,
                   setting: SpeedSetting | None, baseline: str | None, need_baseline: bool) -> pd.DataFrame:
    if metric not in COMPARABLE_METRICS:
        raise ComparisonError(f"--metric {metric!r}: choose from {list(COMPARABLE_METRICS)}")
    if resamples < 2:
        raise ComparisonError(f"--resamples {resamples}: need at least 2")
    stored_baseline, chosen, rows = db.read(lambda s: _row_runs(s, grid, setting))
    base = _check(rows, baseline or stored_baseline, grid) if need_baseline else None
    values = resampled_metric(_load_matchings(rows), metric, resamples, seed)

    def _arrays(entry: RowRuns) -> tuple[np.ndarray, np.ndarray]:
        stacked = np.array([values[i] for i in entry.run_ids])
        return stacked[:, 0], stacked[:, 1:]

    out = []
    for entry in rows:
        record = _base_record(entry)
        record.update(_row_fps(entry, level))
        out.append(record)
        if not entry.run_ids:
            record["note"] = "no succeeded run"
            continue
        full, resampled = _arrays(entry)
        if np.isnan(full).any():
            record["note"] = f"{metric} undefined on this val set (no objects of that size)"
            continue
        interval = row_interval(full, resampled, level)
        top = METRICS[metric].scale  # AP is at most 1 (100%): the interval is clipped to [0, 100]
        record.update(value=interval.estimate, value_lo=max(0.0, interval.low), value_hi=min(top, interval.high),
                      note=interval.note)
        if base is None:
            continue
        if entry is base:
            record["verdict"] = "baseline"
            continue
        base_full, base_resampled = _arrays(base)
        if len(entry.run_ids) < 2:
            record.update(verdict=UNDECIDED, note="1 run: seed variation unknown, no verdict")
        elif not np.isnan(base_full).any():
            verdict = ap_difference(full, resampled, base_full, base_resampled, level)
            record.update(delta=verdict.interval.estimate, delta_lo=verdict.interval.low,
                          delta_hi=verdict.interval.high, delta_width=verdict.interval.width,
                          p_better=verdict.p_better, verdict=VERDICT_WORDS[verdict.verdict])
        speed = speed_verdict(entry, base, level)
        if speed is not None:
            record.update(fps_ratio=speed.interval.estimate, fps_ratio_lo=speed.interval.low,
                          fps_ratio_hi=speed.interval.high, fps_verdict=VERDICT_WORDS[speed.verdict],
                          fps_paired=speed.paired)
    frame = pd.DataFrame(out, columns=["row", *COMPARE_COLUMNS, "fps", "fps_lo", "fps_hi"])
    frame.attrs.update(metric=metric, baseline=base.name if base else None, level=level, resamples=resamples,
                       speed_setting=setting_text(chosen))
    return frame


def compare_grid(db: Database, grid: str, *, baseline: str | None = None, metric: str = "AP",
                 resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
                 setting: SpeedSetting | None = None) -> pd.DataFrame:
    """One row per grid row (grid order): ``row``, ``runs``, ``value`` [``value_lo``, ``value_hi``] (the
    row's ``metric`` in percent), ``delta`` [``delta_lo``, ``delta_hi``] and ``delta_width`` (against the
    baseline), ``p_better``, ``verdict`` (``better``/``worse``/``undecided``/``baseline``), ``fps_ratio``
    [``fps_ratio_lo``, ``fps_ratio_hi``], ``fps_verdict`` (``faster``/``slower``/``undecided``),
    ``fps_paired`` (interleaved), ``note``, and the row's ``fps`` [``fps_lo``, ``fps_hi``]; attributes
    ``metric``, ``baseline``, ``level``, ``resamples``, ``speed_setting``. ``baseline`` None: the grid's.
    ``ComparisonError`` for bad input (module docstring)."""
    return _evaluate_rows(db, grid, metric, resamples, level, seed, setting, baseline, need_baseline=True)


def row_intervals(db: Database, grid: str, *, metric: str = "AP", resamples: int = RESAMPLES, level: float = LEVEL,
                  seed: int = 0, setting: SpeedSetting | None = None) -> pd.DataFrame:
    """``compare_grid``'s frame without the comparison (no baseline needed): per row ``value``
    [``value_lo``, ``value_hi``] and ``fps`` [``fps_lo``, ``fps_hi``] (geometric mean of the timed repeats
    of each run's newest row on ``setting``, t interval on their logs)."""
    return _evaluate_rows(db, grid, metric, resamples, level, seed, setting, None, need_baseline=False)


def format_comparison(frame: pd.DataFrame) -> str:
    """The comparison as a plain-text table a person reads (``runner compare``)."""
    from tabulate import tabulate

    metric, level = frame.attrs["metric"], frame.attrs["level"]
    pct = f"{100 * level:.0f}%"
    body = []
    for rec in frame.to_dict("records"):
        body.append([rec["row"], rec["runs"], interval_text(rec["value"], rec["value_lo"], rec["value_hi"], 1),
                     "–" if rec["verdict"] == "baseline" else interval_text(rec["delta"], rec["delta_lo"], rec["delta_hi"],
                                                                       1, signed=True),
                     "–" if math.isnan(rec["delta_width"]) else f"{rec['delta_width']:.1f}",
                     "–" if math.isnan(rec["p_better"]) else f"{rec['p_better']:.2f}", rec["verdict"] or "–",
                     interval_text(rec["fps_ratio"], rec["fps_ratio_lo"], rec["fps_ratio_hi"], 2)
                     + ("" if rec["fps_paired"] or math.isnan(rec["fps_ratio"]) else " (not interleaved)"),
                     rec["fps_verdict"] or "–", rec["note"]])
    headers = ["row", "runs", f"{metric} [{pct} CI]", f"Δ{metric} vs {frame.attrs['baseline']} [{pct} CI]", "width",
               "P(better)", "verdict", f"FPS ratio [{pct} CI]", "speed", "note"]
    table = tabulate(body, headers=headers, disable_numparse=True)
    return (f"{table}\n\n{metric} in percent; intervals over seeds and {frame.attrs['resamples']} paired image "
            f"resamples; FPS ratio = row / {frame.attrs['baseline']} on {frame.attrs['speed_setting']}. "
            f"'undecided' means the interval holds 0 (or 1 for speed): the width says how large a difference "
            f"could still hide there.\n")

