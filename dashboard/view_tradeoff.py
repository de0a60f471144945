"""Trade-off view: an accuracy metric against FPS (on a chosen device/dtype/backend, with its spread) or
GFLOPs; lines along one axis, labels, error bars (95% confidence intervals where the runs kept per-image
matchings), rows undecided against their grid's baseline marked, Pareto front, paper overlay."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import comparisons, data
from dashboard.figures import LEGEND_NOTE, figure_bytes, tradeoff_chart, tradeoff_figure
from dashboard.paper import PaperError, load_reported, tables_for_grids
from dashboard.tradeoff import (
    X_AXES,
    Y_METRICS,
    TradeoffSpec,
    bars_note,
    paper_points,
    tradeoff_points,
    unmeasured_rows,
    with_intervals,
)
from dashboard.widgets import follow_default, speed_selector
from runner.db import Database
from runner.results import seed_results, setting_text


def render(db: Database, paper_path: Path) -> None:
    st.header("Speed–accuracy trade-off")
    grids = data.grids(db)
    names = [g.name for g in grids]
    chosen = st.multiselect("Grids", names, default=names, key="tradeoff_grids")
    axes = list(dict.fromkeys(key for g in grids if g.name in chosen for key in g.keys))  # axes and rows' keys
    c1, c2, c3, c4 = st.columns(4)
    y = c1.selectbox("Accuracy", Y_METRICS, key="tradeoff_y")
    x = c2.radio("Against", list(X_AXES), horizontal=True, key="tradeoff_x")
    # One grid over several keys: a curve per value of its first text key (query init, backbone), lines
    # along the others; otherwise a curve per grid.
    categorical = [k for g in grids if g.name in chosen for k in g.categorical]
    default = categorical[0] if len(chosen) == 1 and len(axes) > 1 and categorical else "grid"
    follow_default("tradeoff_curve", default, ["grid", *axes], tuple(chosen))
    curve_by = c3.selectbox("One curve per", ["grid", *axes], key="tradeoff_curve")
    label_by = c4.selectbox("Label points by", ["axes", "row", *axes], key="tradeoff_label",
                            format_func=lambda v: "the grid's axis values" if v == "axes" else v)
    references = [g.speed for g in grids if g.name in chosen] or [g.speed for g in grids]
    reference = max(dict.fromkeys(references), key=references.count)  # the chosen grids' most common one
    setting = speed_selector(db, chosen, reference, key="tradeoff_speed")
    results = seed_results(db, setting=setting)
    results = results[results["grid"].isin(chosen)]
    x_title = "GFLOPs" if x == "GFLOPs" else f"FPS ({setting_text(setting)}, batch 1)"
    spec = TradeoffSpec(y=y, x=x, curve_by=curve_by, label_by=label_by)
    points = tradeoff_points(results, spec, {g.name: g.axes for g in grids}, {g.name: g.keys for g in grids})
    frames, problems = comparisons.grid_intervals(
        db, {g.name: g.reference for g in grids if g.name in set(points["grid"])}, y, setting)
    points = with_intervals(points, spec, frames)
    paper = _paper_overlay(paper_path, spec, chosen, points)
    missing = unmeasured_rows(results, spec)
    if missing and x == "FPS":
        st.caption(f"No measurement on {setting_text(setting)} for {len(missing)} row(s) with {y}, not plotted: "
                   + ", ".join(missing))

    if points.empty and paper.empty:
        st.info(f"No succeeded run of the chosen grids has both {y} and {x} yet (runs need the eval stage "
                f"for AP and the {'bench' if x == 'FPS' else 'analyze'} stage for {x}).")
        return
    curve_title = curve_by if curve_by != "grid" else "grid"
    st.altair_chart(tradeoff_chart(points, paper, spec, x_title, curve_title), width="stretch",
                    key="tradeoff_chart")
    st.caption(" · ".join(filter(None, [LEGEND_NOTE, bars_note(points, spec),
                                         "paper FPS: V100, batch 1" if x == "FPS" and not paper.empty else ""])))
    if problems:
        with st.expander(f"No 95% intervals or verdicts for {len(problems)} grid(s)", expanded=False):
            st.markdown("\n".join(f"- **{grid}**: {problem}" for grid, problem in problems.items()))
    d1, d2, _ = st.columns([1, 1, 4])
    stem = f"tradeoff_{y}_vs_{x}"
    for column, fmt, mime in ((d1, "png", "image/png"), (d2, "pdf", "application/pdf")):
        # Rendered only when clicked (matplotlib takes a second or two).
        render_file = partial(_figure_file, points, paper, spec, x_title, curve_title, fmt)
        column.download_button(fmt.upper(), render_file, f"{stem}.{fmt}", mime, on_click="ignore",
                               key=f"tradeoff_{fmt}")
    with st.expander("Points", expanded=False):
        st.dataframe(points, hide_index=True)
        if not paper.empty:
            st.caption("The paper's points")
            st.dataframe(paper, hide_index=True)


def _figure_file(points: pd.DataFrame, paper: pd.DataFrame, spec: TradeoffSpec, x_title: str, curve_title: str,
                 fmt: str) -> bytes:
    return figure_bytes(tradeoff_figure(points, paper, spec, x_title, curve_title), fmt)


def _paper_overlay(path: Path, spec: TradeoffSpec, grids: list[str], points: pd.DataFrame) -> pd.DataFrame:
    """The paper points the user asks for (and a note when there are none to show)."""
    empty = paper_points(pd.DataFrame(), spec, [], points)
    try:
        reported = load_reported(path)
    except FileNotFoundError:
        st.caption(f"Paper overlay: no reported numbers at `{path}`, so the paper's points are not shown.")
        return empty
    except PaperError as exc:
        st.warning(f"Paper overlay off: {exc}")
        return empty
    c1, c2 = st.columns([1, 3])
    if not c1.toggle("Overlay the paper's numbers", value=True, key="tradeoff_overlay"):
        return empty
    tables = list(dict.fromkeys(reported["table"]))
    chosen = c2.multiselect("Paper tables", tables, default=tables_for_grids(reported, grids), key="tradeoff_tables")
    paper = paper_points(reported, spec, chosen, points)
    if paper.empty:
        st.caption(f"Paper overlay: `{path.name}` has no {spec.y}/{spec.x} numbers for these grids or tables.")
    return paper
