"""Speed-accuracy trade-off points, their lines and Pareto front (pure functions, no Streamlit).

``tradeoff_points`` turns the per-seed results (``runner.results.seed_results``) into one point per grid
row, aggregated over seeds as ``runner.results.aggregate_seeds`` does for tables: the mean accuracy (y,
bars ± its std over seeds) against FPS (the mean of the runs' median FPS, bars the min–max envelope of
every timed repeat) or GFLOPs (x). Points are coloured by curve (the grid, or a config key) and labelled by
the row's axis values (``D3``, ``Na100``) or by one key. ``with_intervals`` turns the bars into 95%
confidence intervals where ``runner.comparison`` can give them (runs with per-image matchings) and marks
the rows whose difference from their grid's baseline is undecided (``verdict``, a "?" after the label).

Lines join only rows that differ along one axis, ordered along it: within a curve and a grid, rows that
agree on every other overridden key form a line along the remaining one. Per curve and grid one axis is
chosen (numeric axes first, then the one putting most rows on lines); rows on no line are points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import pandas as pd

from fastinst.engine.verdicts import UNDECIDED
from runner.results import aggregate_seeds

X_AXES = {"FPS": "fps", "GFLOPs": "gflops"}
Y_METRICS = ("AP", "AP_S", "AP_M", "AP_L", "AP50", "AP75")
# Short labels for the paper's usual axes: D3 layers, Na100 IA-guided queries, Nb8 auxiliary queries.
LABEL_PREFIX = {"model.decoder.num_layers": "D", "model.num_ia_queries": "Na", "model.num_aux_queries": "Nb"}
POINT_COLUMNS = ["curve", "label", "grid", "row", "seeds", "x", "x_lo", "x_hi", "y", "y_std", "y_lo", "y_hi", "ci",
                 "verdict", "line", "line_axis", "order", "pareto"]
PAPER_COLUMNS = ["curve", "label", "table", "row", "x", "y"]


@dataclass(frozen=True)
class TradeoffSpec:
    """What to plot: ``y`` metric against ``x`` ("FPS" or "GFLOPs"), curves and labels by a column.

    ``curve_by``/``label_by`` are ``grid``, ``row`` or a dotted config key of the grids' axes;
    ``label_by="axes"`` labels a point with the values of its own grid's axes (but the curve's).
    """

    y: str = "AP"
    x: str = "FPS"
    curve_by: str = "grid"
    label_by: str = "axes"

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


def _is_number(value: Any) -> TypeGuard[int | float | np.integer | np.floating]:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def assign_lines(rows: list[dict[str, Any]], keys: list[str]) -> list[tuple[str | None, str | None, float]]:
    """For rows (each a mapping of ``keys`` → value) of one curve and grid: per row its line id, the line's
    axis and the row's position along it; ``(None, None, nan)`` for a lone point (module docstring)."""
    best: tuple[tuple[bool, int], str, dict[tuple[Any, ...], list[int]]] | None = None
    for axis in keys:
        others = [k for k in keys if k != axis]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(tuple(str(row.get(k)) for k in others), []).append(i)
        lines = {g: idx for g, idx in groups.items() if len({str(rows[i].get(axis)) for i in idx}) == len(idx) > 1}
        numeric = all(_is_number(rows[i].get(axis)) for idx in lines.values() for i in idx)
        score = (numeric, sum(len(idx) for idx in lines.values()))
        if lines and (best is None or score > best[0]):
            best = (score, axis, lines)
    out: list[tuple[str | None, str | None, float]] = [(None, None, math.nan)] * len(rows)
    if best is None:
        return out
    _score, axis, lines = best
    for group, idx in lines.items():
        values = [rows[i].get(axis) for i in idx]
        numbers = [v for v in values if _is_number(v)]
        order = sorted(range(len(idx)), key=lambda j: numbers[j]) if len(numbers) == len(values) \
            else range(len(idx))  # categorical: grid order
        for position, j in enumerate(order):
            out[idx[j]] = ("|".join((axis, *group)), axis, float(position))
    return out


def tradeoff_points(results: pd.DataFrame, spec: TradeoffSpec, grid_axes: dict[str, list[str]],
                    grid_keys: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One point per (grid, row) with x and y over its seeds, their bars (``x_lo``/``x_hi``, ``y_lo``/``y_hi``:
    module docstring; ``ci`` False, ``verdict`` ""), its curve, label, line and Pareto flag.

    ``grid_axes``: each grid's axes (for labels); ``grid_keys``: each grid's overridden config keys (what
    its rows differ in; default: its axes)."""
    x_col = X_AXES[spec.x]
    done = results[results[x_col].notna() & results[spec.y].notna()]
    rows: list[dict[str, Any]] = []
    for (grid, row), group in done.groupby(["grid", "row"], sort=False):
        first = group.iloc[0]
        agg = aggregate_seeds(group)
        rows.append({
            "curve": _column_text(first, spec.curve_by),
            "label": (",".join(point_label(a, first.get(a)) for a in grid_axes.get(grid, []) if a != spec.curve_by)
                      or str(row)
                      if spec.label_by == "axes" else _column_text(first, spec.label_by)),
            "grid": grid, "row": row, "seeds": len(group), "x": agg[x_col],
            "x_lo": agg["fps_min"] if x_col == "fps" else agg[x_col],
            "x_hi": agg["fps_max"] if x_col == "fps" else agg[x_col],
            "y": agg[spec.y], "y_std": agg[f"{spec.y}_std"],
            "y_lo": agg[spec.y] - np.nan_to_num(agg[f"{spec.y}_std"]),
            "y_hi": agg[spec.y] + np.nan_to_num(agg[f"{spec.y}_std"]),
            "ci": False, "verdict": "",
            "_keys": {k: first.get(k) for k in (grid_keys or grid_axes).get(grid, []) if k != spec.curve_by},
        })
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["curve"], r["grid"]), []).append(r)
    for members in groups.values():
        keys = list(dict.fromkeys(k for r in members for k in r["_keys"]))
        for r, (line, axis, order) in zip(members, assign_lines([r["_keys"] for r in members], keys)):
            r.update(line=None if line is None else f"{r['curve']}|{r['grid']}|{line}", line_axis=axis, order=order)
    points = pd.DataFrame([{k: v for k, v in r.items() if k != "_keys"} for r in rows], columns=POINT_COLUMNS[:-1])
    points["pareto"] = pareto_mask(points["x"].to_numpy(), points["y"].to_numpy(), spec.higher_x_better)
    return points.sort_values(["curve", "x"], kind="stable").reset_index(drop=True)


def with_intervals(points: pd.DataFrame, spec: TradeoffSpec, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``points`` with 95% confidence intervals as bars where ``frames`` (grid → ``runner.comparison``'s frame,
    ``data.grid_intervals``) has them: ``y_lo``/``y_hi`` from ``value_lo``/``value_hi`` (then ``ci`` is True),
    FPS ``x_lo``/``x_hi`` from ``fps_lo``/``fps_hi``; ``verdict`` against the grid's baseline, and a "?" after
    the label of a row whose difference from it is undecided. Other points keep their bars."""
    if not frames:
        return points
    found = pd.concat([f[["row", "value_lo", "value_hi", "fps_lo", "fps_hi", "verdict"]].assign(grid=g)
                       for g, f in frames.items()])
    merged = points[["grid", "row"]].merge(found, on=["grid", "row"], how="left")
    ci = merged["value_lo"].notna().to_numpy()
    fps_ci = merged["fps_lo"].notna().to_numpy() & (spec.x == "FPS")
    verdict = merged["verdict"].fillna("").to_numpy()
    return points.assign(
        y_lo=np.where(ci, merged["value_lo"], points["y_lo"]), y_hi=np.where(ci, merged["value_hi"], points["y_hi"]),
        x_lo=np.where(fps_ci, merged["fps_lo"], points["x_lo"]), x_hi=np.where(fps_ci, merged["fps_hi"], points["x_hi"]),
        ci=ci, verdict=verdict, label=np.where(verdict == UNDECIDED, points["label"] + "?", points["label"]))


def bars_note(points: pd.DataFrame, spec: TradeoffSpec) -> str:
    """What the bars of ``points`` (``with_intervals``) are, naming the grids with and without 95% intervals."""
    grids = list(dict.fromkeys(points["grid"]))
    with_ci = [g for g in grids if points.loc[points["grid"] == g, "ci"].any()]
    without = [g for g in grids if g not in with_ci]
    fps = spec.x == "FPS"
    parts = []
    if with_ci:
        parts.append(f"bars of {', '.join(with_ci)}: 95% confidence intervals of {spec.y} over seeds and val images"
                     + (", of FPS over the timed repeats" if fps else ""))
    if without:
        parts.append(f"bars of {', '.join(without)} (no 95% intervals): ± std of {spec.y} over seeds"
                     + (", lowest–highest timed FPS repeat" if fps else ""))
    return " · ".join(parts)


def unmeasured_rows(results: pd.DataFrame, spec: TradeoffSpec) -> list[str]:
    """``grid / row`` of the rows with a result for ``spec.y`` but no ``spec.x`` (e.g. no FPS on the setting)."""
    x_col = X_AXES[spec.x]
    has_y = results[results[spec.y].notna()]
    measured = set(zip(*[has_y.loc[has_y[x_col].notna(), c] for c in ("grid", "row")]))
    return list(dict.fromkeys(f"{g} / {r}" for g, r in zip(has_y["grid"], has_y["row"]) if (g, r) not in measured))


def _column_text(run: pd.Series, column: str) -> str:
    if column in ("grid", "row"):
        return str(run[column])
    return point_label(column, run.get(column))


def pareto_front(points: pd.DataFrame, spec: TradeoffSpec) -> pd.DataFrame:
    """The front's points in x order (from the slow/cheap end to the fast end), for drawing its line."""
    front = points[points["pareto"]]
    return front.sort_values("x", ascending=spec.higher_x_better).reset_index(drop=True)


def line_segments(points: pd.DataFrame) -> pd.DataFrame:
    """The points that lie on a line, in line order (for drawing the lines)."""
    return points[points["line"].notna()].sort_values(["line", "order"], kind="stable").reset_index(drop=True)


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
