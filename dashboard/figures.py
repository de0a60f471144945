"""Figures built from plain DataFrames: the interactive Altair trade-off chart, the same figure in
matplotlib (for PNG/PDF downloads), and training-curve charts. No Streamlit here."""

from __future__ import annotations

import io

import altair as alt
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dashboard.tradeoff import TradeoffSpec, line_segments, pareto_front
from fastinst.engine.verdicts import UNDECIDED

OURS_TOOLTIP = [alt.Tooltip("curve:N"), alt.Tooltip("label:N"), alt.Tooltip("grid:N"), alt.Tooltip("row:N"),
                alt.Tooltip("seeds:Q"), alt.Tooltip("x:Q", format=".2f"), alt.Tooltip("x_lo:Q", title="x low", format=".2f"),
                alt.Tooltip("x_hi:Q", title="x high", format=".2f"), alt.Tooltip("y:Q", format=".2f"),
                alt.Tooltip("y_std:Q", title="y std", format=".2f"), alt.Tooltip("y_lo:Q", title="y low", format=".2f"),
                alt.Tooltip("y_hi:Q", title="y high", format=".2f"), alt.Tooltip("ci:N", title="95% intervals"),
                alt.Tooltip("verdict:N", title="vs baseline"), alt.Tooltip("line_axis:N", title="line along"),
                alt.Tooltip("pareto:N", title="Pareto front")]
PAPER_TOOLTIP = [alt.Tooltip("label:N", title="paper row"), alt.Tooltip("table:N", title="paper table"),
                 alt.Tooltip("x:Q", format=".1f"), alt.Tooltip("y:Q", format=".1f")]
LEGEND_NOTE = ("Filled dots: our runs (mean over seeds) · hollow dots, labels ending in '?': rows whose difference "
               "from their grid's baseline is undecided (its 95% interval holds 0) · lines join rows that differ along "
               "one axis · hollow diamonds: the paper's reported numbers · black rings and dashed line: Pareto front "
               "of our runs")


def undecided(points: pd.DataFrame) -> pd.Series:
    """True for the points whose difference from their grid's baseline is undecided (``with_intervals``)."""
    return points["verdict"] == UNDECIDED


def curve_colors(curves: list[str]) -> dict[str, str]:
    """A stable colour per curve name (tab10, cycling), in first-seen order."""
    tab10 = colormaps["tab10"]
    palette = [to_hex(tab10(i)) for i in range(tab10.N)]  # an int indexes the listed colours
    names = list(dict.fromkeys(curves))
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def tradeoff_chart(points: pd.DataFrame, paper: pd.DataFrame, spec: TradeoffSpec, x_title: str,
                   curve_title: str) -> alt.LayerChart:
    """Points with labels and error bars (filled; hollow where undecided), lines along one axis, the Pareto
    front as rings on a dashed line, paper points as hollow diamonds."""
    colors = curve_colors([*points["curve"], *paper["curve"]])
    marked = undecided(points)
    color = alt.Color("curve:N", title=curve_title,
                      scale=alt.Scale(domain=list(colors), range=list(colors.values())))
    x = alt.X("x:Q", title=x_title, scale=alt.Scale(zero=False))
    y = alt.Y("y:Q", title=spec.y, scale=alt.Scale(zero=False))
    ours = alt.Chart(points).encode(x=x, y=y, color=color)
    front = alt.Chart(pareto_front(points, spec)).encode(x=x, y=y)
    paper_base = alt.Chart(paper).encode(x=x, y=y)
    lines = alt.Chart(line_segments(points)).encode(x=x, y=y, color=color, detail="line:N", order="order:Q")
    layers = [
        front.mark_line(strokeDash=[5, 4], color="black", strokeWidth=1.2),
        lines.mark_line(strokeWidth=2),
        ours.mark_rule(strokeWidth=1.2).encode(x="x_lo:Q", x2="x_hi:Q"),
        ours.mark_rule(strokeWidth=1.2).encode(y="y_lo:Q", y2="y_hi:Q"),
        front.mark_point(shape="circle", size=300, filled=False, color="black", strokeWidth=1.2),
        *(alt.Chart(points[shown]).encode(x=x, y=y, color=color, tooltip=OURS_TOOLTIP)
          .mark_point(filled=filled, size=80, strokeWidth=2, opacity=1) for shown, filled in ((~marked, True), (marked, False))),
        ours.mark_text(align="left", dx=8, dy=-8, fontSize=12).encode(text="label:N"),
        paper_base.mark_point(shape="diamond", filled=False, size=120, strokeWidth=2)
        .encode(color=color, tooltip=PAPER_TOOLTIP),
        paper_base.mark_text(align="left", dx=8, dy=10, fontSize=10, color="gray").encode(text="label:N"),
    ]
    chart = alt.layer(*layers)
    assert isinstance(chart, alt.LayerChart)  # alt.layer facets only charts with facet encodings; these have none
    return chart.properties(height=480).interactive()


def tradeoff_figure(points: pd.DataFrame, paper: pd.DataFrame, spec: TradeoffSpec, x_title: str,
                    curve_title: str) -> Figure:
    """The trade-off chart in matplotlib (same points, bars, undecided marks, colours, labels, front and paper
    markers)."""
    colors = curve_colors([*points["curve"], *paper["curve"]])
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    front = pareto_front(points, spec)
    if len(front):
        ax.plot(front["x"], front["y"], "--", color="black", lw=1, zorder=1)
        ax.scatter(front["x"], front["y"], s=180, facecolors="none", edgecolors="black", lw=1, zorder=2)
    for _line, group in line_segments(points).groupby("line", sort=False):
        ax.plot(group["x"], group["y"], "-", color=colors[group["curve"].iloc[0]], lw=2, zorder=3)
    for curve, group in points.groupby("curve", sort=False):
        # An interval need not be centred on the mean (e.g. FPS: geometric vs arithmetic mean): clip at 0.
        ax.errorbar(group["x"], group["y"], xerr=np.clip([group["x"] - group["x_lo"], group["x_hi"] - group["x"]], 0, None),
                    yerr=np.clip([group["y"] - group["y_lo"], group["y_hi"] - group["y"]], 0, None), fmt="o",
                    color=colors[curve], ms=6, elinewidth=1, capsize=2, label=curve, zorder=3)
        hollow = group[undecided(group)]
        ax.plot(hollow["x"], hollow["y"], "o", ls="", mfc="white", mec=colors[curve], mew=1.5, ms=6, zorder=4)
        for label, px, py in zip(group["label"], group["x"], group["y"]):
            ax.annotate(label, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for curve, group in paper.groupby("curve", sort=False):
        ax.scatter(group["x"], group["y"], marker="D", s=45, facecolors="none", edgecolors=colors[curve],
                   lw=1.5, zorder=3, label=None if curve in set(points["curve"]) else curve)
        for label, px, py in zip(group["label"], group["x"], group["y"]):
            ax.annotate(label, (px, py), textcoords="offset points", xytext=(5, -10), fontsize=7, color="gray")
    handles, labels = ax.get_legend_handles_labels()
    extra = [(Line2D([], [], ls="--", color="black", marker="o", mfc="none", ms=9), "Pareto front")] if len(front) else []
    if undecided(points).any():
        extra.append((Line2D([], [], ls="", marker="o", mfc="white", mec="gray", mew=1.5, ms=6),
                      "undecided vs baseline (?)"))
    if len(paper):
        extra.append((Line2D([], [], ls="", marker="D", mfc="none", mec="gray", ms=6), "paper (reported)"))
    ax.legend([*handles, *(h for h, _ in extra)], [*labels, *(t for _, t in extra)], title=curve_title,
              fontsize=8, title_fontsize=8, loc="best")
    ax.set_xlabel(x_title)
    ax.set_ylabel(spec.y)
    ax.grid(True, alpha=0.3)
    return fig


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as ``png`` (200 dpi) or ``pdf`` bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=200 if fmt == "png" else None)
    return buffer.getvalue()


def curves_chart(records: pd.DataFrame, series: list[str], log_y: bool, title: str) -> alt.Chart:
    """Lines of the chosen ``series`` of a long (step, series, value) frame against the step."""
    data = records[records["series"].isin(series)]
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    return (alt.Chart(data, title=title).mark_line()
            .encode(x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title=None, scale=scale),
                    color=alt.Color("series:N", title=None),
                    tooltip=["series:N", "step:Q", alt.Tooltip("value:Q", format=".4g")])
            .properties(height=300).interactive())
