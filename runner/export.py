"""``runner export`` and the queue summary: paper-style tables of a grid as CSV, Markdown or LaTeX.

Which runs count, units, seed aggregation and the speed setting are ``runner.results``' rules; this
module only lays the table out. Markdown and LaTeX are written by ``tabulate`` (which escapes LaTeX);
cells are ``mean ± std`` over seeds, FPS ``median [min–max]`` (the envelope of every timed repeat of
every seed), and a row without a speed measurement on the chosen setting says so.
"""

from __future__ import annotations

import math

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tabulate import tabulate

from fastinst.grid import SpeedSetting
from runner.db import STATUSES, SUCCEEDED, Database, GridRecord, Run
from runner.results import (
    METRICS,
    TABLE_METRICS,
    ExportError,
    grid_reference,
    grid_table,
    no_speed_text,
    runs_frame,
)

__all__ = ["ExportError", "FORMATS", "export_grid", "format_table", "grid_table", "runs_frame", "status_frame"]
FORMATS = ("csv", "md", "latex")
# CSV: the key columns, then per metric its mean and std, then the FPS spread columns.
CSV_SPEED = ("fps_min", "fps_max", "fps_repeats", "fps_runs", "fps_device", "speed_setting")


def status_frame(db: Database, grid: str | None = None) -> pd.DataFrame:
    """Run counts by state for each grid, with total and percent done (succeeded / total)."""

    def _query(s: Session) -> list[tuple[str, str, int]]:
        stmt = (select(GridRecord.name, Run.status, func.count()).join(Run, Run.grid_id == GridRecord.id)
                .group_by(GridRecord.name, Run.status).order_by(GridRecord.name))
        if grid:
            stmt = stmt.where(GridRecord.name == grid)
        return [tuple(r) for r in s.execute(stmt)]

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
    derived = {*METRICS, *(f"{m}_std" for m in METRICS), *CSV_SPEED, "seeds"}
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


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """``csv`` (numbers to 6 significant digits: means, stds, FPS spread columns) or ``md``/``latex`` (paper-style cells; the FPS
    header names the speed setting, the table's ``speed_setting`` column)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    keys = key_columns(table)
    if fmt == "csv":
        columns = [*keys, "seeds", *(c for m in TABLE_METRICS for c in (m, f"{m}_std")), *CSV_SPEED]
        return table.reindex(columns=columns).to_csv(index=False, float_format="%.6g")
    label = ", ".join(dict.fromkeys(table["speed_setting"])) if len(table) else "–"
    headers = [*keys, *(METRICS[m].title for m in TABLE_METRICS[:-1]), f"FPS ({label})"]
    body = [[str(rec[k]) for k in keys] + [_cell(rec, m) for m in TABLE_METRICS] for rec in table.to_dict("records")]
    align = ["left"] * len(keys) + ["right"] * len(TABLE_METRICS)
    text = tabulate(body, headers=headers, tablefmt="pipe" if fmt == "md" else "latex_booktabs",
                    colalign=align, disable_numparse=True)
    return text + "\n"


def export_grid(db: Database, grid: str, fmt: str, device: str | None = None, dtype: str | None = None,
                backend: str | None = None) -> str:
    """``runner export``: the grid's table in ``fmt``, FPS on the grid's reference speed setting with
    ``device``/``dtype``/``backend`` replacing its parts where given."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    reference = grid_reference(db, grid)
    chosen = SpeedSetting(device or reference.device, dtype or reference.dtype, backend or reference.backend)
    return format_table(grid_table(db, grid, chosen), fmt)
