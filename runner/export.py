"""``runner export`` and the queue summary: paper-style tables of a grid as CSV, Markdown or LaTeX.

Which runs count, units, seed aggregation and the speed setting are ``runner.results``' rules; this
module only lays the table out. Markdown and LaTeX are written by ``tabulate`` (which escapes LaTeX);
cells are ``mean ± std`` over seeds, FPS ``median [min–max]`` (the envelope of every timed repeat of
every seed), and a row without a speed measurement on the chosen setting says so.

Where the grid has a baseline and its runs kept their per-image matchings, the table also carries the
comparison with the baseline (``runner.comparison``, ``with_verdicts``): the AP cell becomes the mean
with its 95% interval over seeds and images, then ΔAP [interval], P(better), the verdict, and the FPS
ratio [interval] with its verdict. In LaTeX a decided difference is marked ``*``, explained in the caption.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tabulate import tabulate

from fastinst.grid import SpeedSetting
from runner.db import STATUSES, SUCCEEDED, Database, GridRecord, Run
from runner.formats import TABLE_FORMATS
from runner.results import (
    METRICS,
    TABLE_METRICS,
    ExportError,
    grid_reference,
    grid_table,
    interval_text,
    no_speed_text,
    runs_frame,
)

__all__ = ["ExportError", "FORMATS", "export_grid", "format_table", "grid_table", "runs_frame", "status_frame"]
FORMATS = TABLE_FORMATS
# CSV: the key columns, then per metric its mean and std, then the FPS spread columns.
CSV_SPEED = ("fps_min", "fps_max", "fps_repeats", "fps_runs", "fps_device", "speed_setting")
# The comparison with the baseline (``with_verdicts``), after the metric columns.
VERDICT_COLUMNS = ("baseline", "compared", "value_lo", "value_hi", "delta", "delta_lo", "delta_hi", "delta_width",
                   "p_better", "verdict", "fps_ratio", "fps_ratio_lo", "fps_ratio_hi", "fps_verdict", "fps_paired")
MARK = "*"  # LaTeX: a decided difference


def with_verdicts(table: pd.DataFrame, comparison: pd.DataFrame) -> pd.DataFrame:
    """``grid_table``'s frame with ``comparison_frame``'s columns (same grid, same row order) added:
    ``baseline``, ``compared`` (the metric), ``value_lo``/``value_hi`` (its interval), ``delta`` …"""
    if len(table) != len(comparison):
        raise ExportError(f"table and comparison differ in rows ({len(table)} vs {len(comparison)})")
    out = table.copy()
    out["baseline"] = comparison.attrs["baseline"]
    out["compared"] = comparison.attrs["metric"]
    for column in VERDICT_COLUMNS[2:]:
        out[column] = comparison[column].to_numpy()
    out.attrs.update(comparison.attrs)
    return out


def status_frame(db: Database, grid: str | None = None) -> pd.DataFrame:
    """Run counts by state for each grid, with total and percent done (succeeded / total)."""

    def _query(s: Session) -> list[tuple[str, str, int]]:
        stmt = (select(GridRecord.name, Run.status, func.count()).join(Run, Run.grid_id == GridRecord.id)
                .group_by(GridRecord.name, Run.status).order_by(GridRecord.name))
        if grid:
            stmt = stmt.where(GridRecord.name == grid)
        return [(name, status, n) for name, status, n in s.execute(stmt)]

    counts = db.read(_query)
    frame = pd.DataFrame(counts, columns=["grid", "status", "n"])
    table = frame.pivot_table(index="grid", columns="status", values="n", aggfunc="sum", fill_value=0)
    table = table.reindex(columns=list(STATUSES), fill_value=0).astype(int)
    table["total"] = table.sum(axis=1)
    table["done_%"] = (100.0 * table[SUCCEEDED] / table["total"].where(table["total"] > 0)).round(1)
    table.columns.name = None
    return table.reset_index()


def key_columns(table: pd.DataFrame) -> list[str]:
    """The columns of a ``grid_table`` that identify a row: ``row`` and the axis keys."""
    derived = {*METRICS, *(f"{m}_std" for m in METRICS), *CSV_SPEED, *VERDICT_COLUMNS, "seeds"}
    return [c for c in table.columns if c not in derived]


def _cell(table_row: dict, metric: str) -> str:
    digits = METRICS[metric].digits
    mean = float(table_row[metric])
    if math.isnan(mean):
        return no_speed_text(table_row["speed_setting"]) if metric == "fps" else "–"
    if metric == "fps":
        return f"{mean:.{digits}f} [{float(table_row['fps_min']):.{digits}f}–{float(table_row['fps_max']):.{digits}f}]"
    std = float(table_row[f"{metric}_std"])
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _verdict_cells(rec: dict, latex: bool) -> list[str]:
    """ΔAP [CI], P(better), verdict, FPS ratio [CI], speed verdict of one row (``with_verdicts``)."""
    if rec["verdict"] == "baseline":
        return ["–", "–", "baseline", "–", "–"]
    delta = interval_text(rec["delta"], rec["delta_lo"], rec["delta_hi"], 1, signed=True)
    ratio = interval_text(rec["fps_ratio"], rec["fps_ratio_lo"], rec["fps_ratio_hi"], 2)
    if latex:
        delta += MARK if rec["verdict"] in ("better", "worse") else ""
        ratio += MARK if rec["fps_verdict"] in ("faster", "slower") else ""
    elif not math.isnan(rec["delta_width"]):
        delta += f" (w {rec['delta_width']:.1f})"
    p_better = "–" if math.isnan(rec["p_better"]) else f"{rec['p_better']:.2f}"
    return [delta, p_better, rec["verdict"] or "–", ratio, rec["fps_verdict"] or "–"]


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """``csv`` (numbers to 6 significant digits: means, stds, FPS spread columns, and the verdict columns
    where ``with_verdicts`` added them) or ``md``/``latex`` (paper-style cells; the FPS header names the
    speed setting, the table's ``speed_setting`` column; verdict columns where present)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    keys = key_columns(table)
    verdicts = "verdict" in table.columns
    if fmt == "csv":
        columns = [*keys, "seeds", *(c for m in TABLE_METRICS for c in (m, f"{m}_std")), *CSV_SPEED,
                   *(VERDICT_COLUMNS if verdicts else ())]
        return table.reindex(columns=columns).to_csv(index=False, float_format="%.6g")
    label = ", ".join(dict.fromkeys(table["speed_setting"])) if len(table) else "–"
    headers = [*keys, *(METRICS[m].title for m in TABLE_METRICS[:-1]), f"FPS ({label})"]
    body = [[str(rec[k]) for k in keys] + [_cell(rec, m) for m in TABLE_METRICS] for rec in table.to_dict("records")]
    if verdicts:
        metric, base = table.attrs.get("metric", "AP"), table.attrs.get("baseline", "baseline")
        position = len(keys) + TABLE_METRICS.index(metric) if metric in TABLE_METRICS else None
        if position is not None:
            headers[position] = f"{METRICS[metric].title} [95% CI]"
        headers += [f"Δ{metric} vs {base} [95% CI]", "P(better)", "verdict", f"FPS ratio vs {base} [95% CI]", "speed"]
        for cells, rec in zip(body, table.to_dict("records")):
            if position is not None and not math.isnan(rec["value_lo"]):
                cells[position] = interval_text(rec["value"] if "value" in rec else rec[metric], rec["value_lo"],
                                            rec["value_hi"], METRICS[metric].digits)
            cells += _verdict_cells(rec, fmt == "latex")
    align = ["left"] * len(keys) + ["right"] * (len(headers) - len(keys))
    text = tabulate(body, headers=headers, tablefmt="pipe" if fmt == "md" else "latex_booktabs",
                    colalign=align, disable_numparse=True)
    if fmt == "latex" and verdicts:
        caption = (f"{table.attrs.get('metric', 'AP')} in percent with 95\\% intervals over seeds and "
                   f"{table.attrs.get('resamples', '')} paired image resamples; "
                   f"{MARK} marks a difference from the baseline {table.attrs.get('baseline', '')} that is "
                   f"decided (its interval excludes 0, or 1 for the FPS ratio).")
        return f"\\begin{{table}}\n\\centering\n{text}\n\\caption{{{caption}}}\n\\end{{table}}\n"
    return text + "\n"


def export_grid(db: Database, grid: str, fmt: str, device: str | None = None, dtype: str | None = None,
                backend: str | None = None, baseline: str | None = None, metric: str = "AP",
                note: Callable[[str], None] | None = None) -> str:
    """``runner export``: the grid's table in ``fmt``, FPS on the grid's reference speed setting with
    ``device``/``dtype``/``backend`` replacing its parts where given, with the comparison against
    ``baseline`` (None: the grid's) where it can be made; ``note`` hears why it could not."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    from runner.comparison import ComparisonError, compare_grid

    reference = grid_reference(db, grid)
    chosen = SpeedSetting(device or reference.device, dtype or reference.dtype, backend or reference.backend)
    table = grid_table(db, grid, chosen)
    try:
        table = with_verdicts(table, compare_grid(db, grid, baseline=baseline, metric=metric, setting=chosen))
    except ComparisonError as exc:
        if baseline is not None:
            raise
        if note is not None:
            note(f"no verdicts: {exc}")
    return format_table(table, fmt)
