"""Speed-accuracy trade-off points and their Pareto front (pure functions, no Streamlit).

``tradeoff_points`` turns the per-seed results (``dashboard.data.grid_results``) into one point per
grid row: the mean over its seeds of an accuracy metric (y) against FPS or GFLOPs (x), grouped
into curves (by grid or by a config key) and labelled by the row's axis values (``D3``, ``Na100``)
or by one config key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

X_AXES = {"FPS": "fps", "GFLOPs": "gflops"}
Y_METRICS = ("AP", "AP_S", "AP_M", "AP_L", "AP50", "AP75")
# Short labels for the paper's usual axes: D3 layers, Na100 IA-guided queries, Nb8 auxiliary queries.
LABEL_PREFIX = {"model.decoder.num_layers": "D", "model.num_ia_queries": "Na", "model.num_aux_queries": "Nb"}
POINT_COLUMNS = ["curve", "label", "grid", "row", "seeds", "x", "y", "y_std", "pareto"]
PAPER_COLUMNS = ["curve", "label", "table", "row", "x", "y"]


@dataclass(frozen=True)
class TradeoffSpec:
    """What to plot: ``y`` metric against ``x`` ("FPS" or "GFLOPs"), curves and labels by a column.

    ``curve_by``/``label_by`` are ``grid``, ``row`` or a dotted config key of the grids' axes;
    ``label_by="axes"`` labels a point with the values of its own grid's axes (but the curve's).
    FPS points come from runs measured with ``fps_device``/``fps_dtype`` only (None: any).
    """

    y: str = "AP"
    x: str = "FPS"
    curve_by: str = "grid"
    label_by: str = "axes"
    fps_device: str | None = None
    fps_dtype: str | None = None

    @property
    def higher_x_better(self) -> bool:
        return self.x == "FPS"


def point_label(key: str, value: Any) -> str:
    """``D3`` for 3 decoder layers, ``Na100`` for 100 IA-guided queries, else the value as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(base)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{LABEL_PREFIX[key]}{value}" if key in LABEL_PREFIX else str(value)


def fps_settings(results: pd.DataFrame) -> list[tuple[str, str]]:
    """The (device, dtype) pairs FPS was measured with, most results first."""
    measured = results[results["fps"].notna()]
    pairs = measured[["fps_device", "fps_dtype"]].fillna("?").astype(str)
    counts = pairs.value_counts(sort=False).reset_index(name="n")
    counts = counts.sort_values(["n", "fps_device", "fps_dtype"], ascending=[False, True, True])
    return list(zip(counts["fps_device"], counts["fps_dtype"]))


def pareto_mask(x: np.ndarray, y: np.ndarray, higher_x_better: bool) -> np.ndarray:
    """True for the points no other point beats: higher y and better x (higher or lower), one strictly."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xs = -x if higher_x_better else x  # lower is better after this
    order = np.lexsort((-y, xs))  # best x first; among equal x, best y first
    mask = np.zeros(len(x), dtype=bool)
    best_y = -math.inf
    for i in order:
        if y[i] > best_y:
            mask[i] = True
            best_y = y[i]
    return mask


def tradeoff_points(results: pd.DataFrame, spec: TradeoffSpec, grid_axes: dict[str, list[str]]) -> pd.DataFrame:
    """One point per (grid, row): mean x and y over its seeds, its curve, label and Pareto flag."""
    x_col = X_AXES[spec.x]
    done = results
    if spec.x == "FPS":
        for column, wanted in (("fps_device", spec.fps_device), ("fps_dtype", spec.fps_dtype)):
            if wanted is not None:
                done = done[done[column].fillna("?").astype(str) == wanted]
    done = done[done[x_col].notna() & done[spec.y].notna()]
    rows = []
    for (grid, row), group in done.groupby(["grid", "row"], sort=False):
        first = group.iloc[0]
        rows.append({
            "curve": _column_text(first, spec.curve_by),
            "label": (",".join(point_label(a, first.get(a)) for a in grid_axes.get(grid, []) if a != spec.curve_by)
                      or str(row)
                      if spec.label_by == "axes" else _column_text(first, spec.label_by)),
            "grid": grid, "row": row, "seeds": len(group),
            "x": float(group[x_col].astype(float).mean()), "y": float(group[spec.y].astype(float).mean()),
            "y_std": float(group[spec.y].astype(float).std(ddof=1)) if len(group) > 1 else math.nan,
        })
    points = pd.DataFrame(rows, columns=POINT_COLUMNS[:-1])
    points["pareto"] = pareto_mask(points["x"].to_numpy(), points["y"].to_numpy(), spec.higher_x_better)
    return points.sort_values(["curve", "x"], kind="stable").reset_index(drop=True)


def _column_text(run: pd.Series, column: str) -> str:
    if column in ("grid", "row"):
        return str(run[column])
    return point_label(column, run.get(column))


def pareto_front(points: pd.DataFrame, spec: TradeoffSpec) -> pd.DataFrame:
    """The front's points in x order (from the slow/cheap end to the fast end), for drawing its line."""
    front = points[points["pareto"]]
    return front.sort_values("x", ascending=spec.higher_x_better).reset_index(drop=True)


def paper_points(reported: pd.DataFrame, spec: TradeoffSpec, tables: list[str], ours: pd.DataFrame) -> pd.DataFrame:
    """The rows of the paper's ``tables`` as points; a row that a grid row reproduces (its ``grid`` and
    ``row_name``) takes that row's curve, so it shares its colour; others form a curve per paper table."""
    if reported.empty:
        return pd.DataFrame(columns=PAPER_COLUMNS)
    chosen = reported[reported["table"].isin(tables) & reported[spec.x].notna() & reported[spec.y].notna()]
    curve_of = {(g, r): c for g, r, c in zip(ours["grid"], ours["row"], ours["curve"])}
    return pd.DataFrame({
        "curve": [curve_of.get((g, r), f"paper table {t}")
                  for g, r, t in zip(chosen["grid"], chosen["row_name"], chosen["table"])],
        "label": chosen["row"].to_numpy(), "table": chosen["table"].to_numpy(), "row": chosen["row_name"].to_numpy(),
        "x": chosen[spec.x].astype(float).to_numpy(), "y": chosen[spec.y].astype(float).to_numpy(),
    }, columns=PAPER_COLUMNS)
