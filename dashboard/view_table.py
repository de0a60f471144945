"""Table view: a grid as the paper prints it (rows = axis values, columns = metrics, mean ± std over
seeds, FPS on a chosen device/dtype with its spread), with the comparison against a baseline row where
it can be made (AP with its 95% interval, ΔAP, P(better), verdicts; undecided rows marked), filters,
sorting and CSV/Markdown/LaTeX downloads from ``runner.export.format_table``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import comparisons, data
from dashboard.paper import PaperError, load_reported
from dashboard.tables import filter_table, mark_verdicts, sort_table, verdict_legend
from dashboard.widgets import follow_default, speed_selector
from fastinst.grid import SpeedSetting
from runner.comparison import ComparisonError
from runner.db import Database
from runner.export import format_table, key_columns, with_verdicts
from runner.formats import TABLE_FORMATS
from runner.results import METRICS, TABLE_METRICS, grid_table, setting_text

DOWNLOAD = {"csv": ("CSV", "text/csv"), "md": ("Markdown", "text/markdown"), "latex": ("LaTeX", "application/x-latex")}
FORMATS = tuple((fmt, *DOWNLOAD[fmt]) for fmt in TABLE_FORMATS)  # (format, label, MIME type)
NO_BASELINE = ""  # the baseline select box's "no comparison"


def render(db: Database, paper_path: Path) -> None:
    st.header("Paper-style tables")
    grids = data.grids(db)
    names = [g.name for g in grids]
    wanted = st.query_params.get("grid", "")  # a link to one grid's table: ?view=Table&grid=NAME
    grid = st.selectbox("Grid", names, index=names.index(wanted) if wanted in names else 0, key="table_grid")
    st.query_params["grid"] = grid
    info = next(g for g in grids if g.name == grid)
    st.caption(f"Axes: {', '.join(info.axes) or '(explicit rows)'} · seeds {info.seeds} · stages {info.stages}"
               + (f" · baseline row: {info.reference}" if info.reference else ""))
    speed_column, baseline_column = st.columns(2)
    with speed_column:
        setting = speed_selector(db, [grid], info.speed, key="table_speed")
    full = grid_table(db, grid, setting)
    if full.empty:
        st.info(f"Grid {grid!r} has no rows.")
        return
    full = _compared(db, info, setting, full, baseline_column)

    keys = key_columns(full)
    filters = {}
    with st.expander("Filters and sorting", expanded=False):
        columns = st.columns(max(1, len(keys)))
        for column, key in zip(columns, keys):
            values = list(dict.fromkeys(full[key].map(str)))
            filters[key] = column.multiselect(key, values, default=values, key=f"table_filter_{key}")
        c1, c2, c3 = st.columns(3)
        min_seeds = c1.number_input("At least this many seeds", 0, max(1, len(info.seeds)), 0, key="table_min_seeds")
        sort_by = c2.selectbox("Sort by", ["(grid order)", *keys, *TABLE_METRICS], key="table_sort",
                               format_func=lambda c: METRICS[c].title if c in METRICS else c)
        descending = c3.toggle("Descending", value=False, key="table_desc")
    shown = sort_table(filter_table(full, filters, int(min_seeds)), None if sort_by == "(grid order)" else sort_by,
                       not descending)
    missing = int((shown["seeds"] > 0).sum() - (shown["fps_runs"] > 0).sum())
    st.caption(f"{len(shown)} of {len(full)} rows · AP in percent · mean ± std over the succeeded seeds · FPS on "
               f"{setting_text(setting)}, batch 1: mean of the runs' medians [lowest–highest timed repeat]"
               + (f" · measured on {'; '.join(dict.fromkeys(shown['fps_device'].dropna()))}"
                  if shown["fps_device"].notna().any() else "")
               + (f" · {missing} row(s) with results have no measurement on {setting_text(setting)}" if missing else ""))
    st.markdown(format_table(mark_verdicts(shown), "md"))
    if "verdict" in shown.columns:
        st.caption(verdict_legend(shown))

    texts = {fmt: format_table(shown, fmt) for fmt, _label, _mime in FORMATS}
    for column, (fmt, label, mime) in zip(st.columns([1, 1, 1, 3])[:3], FORMATS):
        suffix = {"md": "md", "latex": "tex", "csv": "csv"}[fmt]
        column.download_button(label, texts[fmt], f"{grid}.{suffix}", mime, key=f"table_dl_{fmt}")
    with st.expander("Export text", expanded=False):
        for tab, (fmt, _label, _mime) in zip(st.tabs([label for _f, label, _m in FORMATS]), FORMATS):
            tab.code(texts[fmt], language={"csv": None, "md": "markdown", "latex": "latex"}[fmt])

    _paper_rows(paper_path, grid)


def _compared(db: Database, info: data.GridInfo, setting: SpeedSetting, table: pd.DataFrame,
              column: DeltaGenerator) -> pd.DataFrame:
    """``table`` with the comparison against the baseline row chosen in ``column`` (default: the grid's;
    ``with_verdicts``) where it can be made; as it is, with a note saying why, where not."""
    options = [NO_BASELINE, *info.rows]
    follow_default("table_baseline", info.reference or NO_BASELINE, options, info.name)
    baseline = column.selectbox("Compare with the baseline row", options, key="table_baseline",
                                format_func=lambda r: r or "(none)")
    if baseline == NO_BASELINE:
        column.caption("Choose a baseline row to compare every row with it (95% intervals and verdicts).")
        return table
    try:
        return with_verdicts(table, comparisons.compare_grid(db, info.name, baseline, setting))
    except ComparisonError as exc:
        st.info(f"No comparison with {baseline}: {exc}")
        return table


def _paper_rows(path: Path, grid: str) -> None:
    try:
        reported = load_reported(path)
    except (FileNotFoundError, PaperError):
        return
    rows = reported[reported["grid"] == grid]
    if rows.empty:
        return
    st.subheader("The paper's numbers for this grid")
    metrics = [c for c in ("AP", "AP_S", "AP_M", "AP_L", "GFLOPs", "FPS") if rows[c].notna().any()]
    st.dataframe(pd.DataFrame(rows[["table", "row", "row_name", *metrics]]), hide_index=True)
