"""Read-side views of the results database as DataFrames and paper-style tables.

The dashboard reuses these: ``runs_frame`` (one row per run with its metrics), ``status_frame``
(run counts by state per grid), ``grid_table`` (one row per grid row, mean and std over seeds)
and ``format_table`` (csv, Markdown or LaTeX).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from runner.db import STATUSES, SUCCEEDED, Database, GridRecord, GridRow, Metrics, Run

# (column in the table, metrics attribute, digits)
TABLE_COLUMNS = (("AP", "AP", 1), ("AP_S", "AP_S", 1), ("AP_M", "AP_M", 1), ("AP_L", "AP_L", 1),
                 ("GFLOPs", "gflops", 1), ("FPS", "fps", 1))
RUN_COLUMNS = ("run_id", "grid", "row", "seed", "status", "attempts", "max_attempts", "priority", "worker",
               "device", "config_hash", "variant_hash", "stages", "created_at", "started_at",
               "finished_at", "heartbeat_at", "error", "AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L",
               "AR100", "params", "gflops", "fps", "fps_device", "fps_dtype")


class ExportError(ValueError):
    """The requested grid or format does not exist."""


def runs_frame(db: Database, grid: str | None = None) -> pd.DataFrame:
    """One row per run (newest first) with its queue state, metrics and override columns."""

    def _query(s: Session) -> list[dict[str, Any]]:
        stmt = (select(Run, GridRecord.name, Metrics).join(GridRecord, Run.grid_id == GridRecord.id)
                .outerjoin(Metrics, Metrics.run_id == Run.id).order_by(Run.id.desc()))
        if grid:
            stmt = stmt.where(GridRecord.name == grid)
        out = []
        for run, grid_name, m in s.execute(stmt):
            row = {
                "run_id": run.id, "grid": grid_name, "row": run.row_name, "seed": run.seed,
                "status": run.status, "attempts": run.attempts, "max_attempts": run.max_attempts,
                "priority": run.priority, "worker": run.worker, "device": run.device,
                "config_hash": run.config_hash, "variant_hash": run.variant_hash, "stages": run.stages,
                "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
                "heartbeat_at": run.heartbeat_at, "error": run.error,
            }
            for col in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR100", "params", "gflops", "fps",
                        "fps_device", "fps_dtype"):
                row[col] = getattr(m, col) if m is not None else None
            row.update(run.overrides)
            out.append(row)
        return out

    rows = db.read(_query)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(RUN_COLUMNS))


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


AP_PERCENT = 100.0  # the database stores pycocotools' fractions; tables print AP in percent, as the paper


def grid_table(db: Database, grid: str) -> pd.DataFrame:
    """The grid's rows (in grid order) × AP, AP_S, AP_M, AP_L (in percent), GFLOPs, FPS: mean and std
    over seeds.

    Index columns are ``row`` (when the grid has explicit rows) and one column per axis key. For
    each metric there is a mean column (``AP``) and a std column (``AP_std``, NaN for one seed);
    ``seeds`` counts the succeeded runs that went into a row. Results come from succeeded runs of
    the row's variant with the grid's seeds and stages, whichever grid first queued them.
    """

    def _query(s: Session) -> tuple[GridRecord, list[GridRow], list[tuple[str, int, Metrics]]]:
        record = s.scalars(select(GridRecord).where(GridRecord.name == grid)).one_or_none()
        if record is None:
            names = list(s.scalars(select(GridRecord.name).order_by(GridRecord.name)))
            raise ExportError(f"no grid named {grid!r} (grids: {', '.join(names) or 'none'})")
        rows = list(record.rows)
        hashes = [r.variant_hash for r in rows]
        results = s.execute(
            select(Run.variant_hash, Run.seed, Metrics).join(Metrics, Metrics.run_id == Run.id)
            .where(Run.variant_hash.in_(hashes), Run.status == SUCCEEDED, Run.stages == record.stages,
                   Run.seed.in_(record.seeds))
            .order_by(Run.generation)
        ).all()
        return record, rows, [tuple(r) for r in results]

    record, rows, results = db.read(_query)
    latest: dict[tuple[str, int], Metrics] = {}
    for variant, seed, metrics in results:  # newest generation wins
        latest[(variant, seed)] = metrics
    explicit = bool(record.spec.get("rows"))
    out = []
    for row in rows:
        entry: dict[str, Any] = {"row": row.name} if explicit else {}
        entry.update({axis: row.overrides.get(axis) for axis in record.axes})
        per_seed = [latest[(row.variant_hash, seed)] for seed in record.seeds if (row.variant_hash, seed) in latest]
        entry["seeds"] = len(per_seed)
        for column, attr, _digits in TABLE_COLUMNS:
            values = pd.Series([getattr(m, attr) for m in per_seed], dtype="float64").dropna()
            if column.startswith("AP"):  # pycocotools reports -1 where an area range has no objects
                values = values[values >= 0] * AP_PERCENT
            entry[column] = values.mean() if len(values) else math.nan
            entry[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        out.append(entry)
    return pd.DataFrame(out)


def _cell(mean: float, std: float, digits: int, pm: str) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} {pm} {std:.{digits}f}"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """``csv`` (means and stds as numbers), ``md`` or ``latex`` (``mean ± std`` cells)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt not in ("md", "latex"):
        raise ExportError(f"unknown format {fmt!r}; choose csv, md or latex")
    metric_names = [c for c, _a, _d in TABLE_COLUMNS]
    keys = [c for c in table.columns if c not in metric_names and not c.endswith("_std") and c != "seeds"]
    header = keys + metric_names
    pm = "±" if fmt == "md" else r"$\pm$"
    body = []
    for rec in table.to_dict("records"):
        cells = [str(rec[k]) for k in keys]
        cells += [_cell(float(rec[c]), float(rec[f"{c}_std"]), d, pm) for c, _a, d in TABLE_COLUMNS]
        body.append(cells)
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(keys) + ["---:"] * len(metric_names)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + "\n"
    lines = [r"\begin{tabular}{" + "l" * len(keys) + "r" * len(metric_names) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) if i < len(keys) else c for i, c in enumerate(cells)) + r" \\"
              for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
