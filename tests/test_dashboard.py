"""The dashboard: pure functions (Pareto front, points, intervals and verdict marks, tables, figures), its
data layer on SQLite and PostgreSQL, and every view through ``streamlit.testing.v1.AppTest`` on a database
with known rows (``dashboard_demo.fill_known``: AP stored in [0, 1], shown in percent). Its runs kept no
per-image matchings, so ``runner.comparison`` refuses them (the old-database path); the views' exact
intervals and verdict cells are checked on ``LAYERS_COMPARISON``, a comparison frame monkeypatched in its
place, and end to end on runs with real per-image matchings (``verdict_helpers.comparison_db``)."""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import yaml
from dashboard_demo import SPREAD, V100, fill_known, speed
from runner_helpers import DB_KINDS, open_db, url_for
from sqlalchemy import select
from streamlit.testing.v1 import AppTest
from verdict_helpers import comparison_db

from dashboard import data
from dashboard.figures import figure_bytes, tradeoff_chart, tradeoff_figure
from dashboard.paper import PaperError, load_reported
from dashboard.tables import filter_table, mark_verdicts, sort_table, verdict_legend
from dashboard.tradeoff import (
    TradeoffSpec,
    assign_lines,
    bars_note,
    paper_points,
    pareto_mask,
    tradeoff_points,
    with_intervals,
)
from fastinst.config import flatten
from fastinst.grid import SpeedSetting, parse_grid
from runner import comparison
from runner.comparison import COMPARE_COLUMNS, ComparisonError
from runner.db import Database, Run, init_db
from runner.export import with_verdicts
from runner.results import STORED, seed_results, speed_settings

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
CUDA, CPU = SpeedSetting("cuda", "float32"), SpeedSetting("cpu", "float32")
AXES = {"layers": ["model.decoder.num_layers"], "backbones": ["model.backbone.name"], "broken": ["model.num_ia_queries"]}
REPORTED = ("table,row,grid,row_name,AP,AP_S,AP_M,AP_L,GFLOPs,FPS,AR\n"
            "6a,D1,layers,model.decoder.num_layers=1,35.6,14.3,38.8,56.6,59.6,48.8,\n"
            "6a,D3,layers,model.decoder.num_layers=3,37.9,16.0,40.7,60.1,75.5,35.5,\n"
            "1,SOLOv2-R50,,,34.0,10.3,36.3,54.4,,41.3,\n")
LAYER = "model.decoder.num_layers"


def comparison_frame(rows: dict[str, dict[str, Any]], baseline: str | None, setting: str = "cuda/float32") -> pd.DataFrame:
    """A frame as ``runner.comparison.compare_grid`` returns it: per row name the given columns, the rest
    NaN (or "", False)."""
    empty = dict.fromkeys(("runs", *COMPARE_COLUMNS, "fps", "fps_lo", "fps_hi"), math.nan)
    empty.update(runs=2, verdict="", fps_verdict="", fps_paired=False, note="")
    frame = pd.DataFrame([{"row": name, **empty, **given} for name, given in rows.items()])
    frame.attrs.update(metric="AP", baseline=baseline, level=0.95, resamples=1000, speed_setting=setting)
    return frame


# The layers grid of ``fill_known`` against its baseline D3: D1 worse and faster, D2 undecided and slower.
LAYERS_COMPARISON = comparison_frame({
    f"{LAYER}=1": dict(value=35.1, value_lo=34.0, value_hi=36.2, delta=-2.8, delta_lo=-4.0, delta_hi=-1.6,
                       delta_width=2.4, p_better=0.05, verdict="worse", fps_ratio=1.44, fps_ratio_lo=1.40,
                       fps_ratio_hi=1.48, fps_verdict="faster", fps_paired=True, fps=51.0, fps_lo=50.2, fps_hi=51.8),
    f"{LAYER}=2": dict(value=36.2, value_lo=35.0, value_hi=37.4, delta=-1.7, delta_lo=-3.6, delta_hi=0.2,
                       delta_width=3.8, p_better=0.2, verdict="undecided", fps_ratio=0.85, fps_ratio_lo=0.8,
                       fps_ratio_hi=0.9, fps_verdict="slower", fps=30.0, fps_lo=29.6, fps_hi=30.4),
    f"{LAYER}=3": dict(value=37.9, value_lo=36.9, value_hi=38.9, verdict="baseline", fps=35.5, fps_lo=35.0,
                       fps_hi=36.0),
}, baseline=f"{LAYER}=3")


# --------------------------------------------------------------------------- pure functions


def test_pareto_mask_both_directions_and_ties() -> None:
    x = np.array([10.0, 20.0, 30.0, 20.0, 20.0])
    y = np.array([40.0, 38.0, 30.0, 35.0, 38.0])
    # Higher x better: (10, 40) is the most accurate, (30, 30) the fastest, (20, 38) between them;
    # (20, 35) is dominated and the duplicate (20, 38) counts once.
    assert pareto_mask(x, y, higher_x_better=True).tolist() == [True, True, True, False, False]
    # Lower x better (GFLOPs): (10, 40) beats everything.
    assert pareto_mask(x, y, higher_x_better=False).tolist() == [True, False, False, False, False]


def test_filter_and_sort_tables() -> None:
    table = pd.DataFrame({"model.decoder.num_layers": [9, 10, 1], "seeds": [2, 1, 2], "AP": [39.1, np.nan, 35.6],
                          "AP_std": [0.1, np.nan, 0.2]})
    by_layers = sort_table(table, "model.decoder.num_layers", ascending=False)
    assert by_layers["model.decoder.num_layers"].tolist() == [10, 9, 1]  # numbers sort as numbers
    assert sort_table(table, "AP", ascending=False)["AP"].tolist()[:2] == [39.1, 35.6]  # missing last
    assert filter_table(table, {"model.decoder.num_layers": ["1", "10"]}, min_seeds=2)["AP"].tolist() == [35.6]


def test_load_reported_formats_and_errors(tmp_path: Path) -> None:
    ours = tmp_path / "reported.csv"
    ours.write_text(REPORTED)
    frame = load_reported(ours)
    assert list(frame["row"]) == ["D1", "D3", "SOLOv2-R50"] and math.isnan(frame.loc[2, "GFLOPs"])
    assert list(frame["grid"]) == ["layers", "layers", ""]
    shared = tmp_path / "reported_numbers.csv"  # the shared/paper layout: no grid/row_name, extra columns
    shared.write_text("table,split,row,method,AP,AP_S,GFLOPs,FPS,notes\n6a,val2017,D0,FastInst,30.5,12.1,51.6,60.2,x\n")
    assert load_reported(shared).iloc[0][["row", "grid", "AP", "FPS"]].tolist() == ["D0", "", 30.5, 60.2]
    bad = tmp_path / "bad.csv"
    bad.write_text("table,row,AP\n6a,D1,thirty\n")
    with pytest.raises(PaperError, match="'AP' has a non-number 'thirty' \\(line 2\\)"):
        load_reported(bad)
    with pytest.raises(FileNotFoundError):
        load_reported(tmp_path / "absent.csv")


def _grid_lines(path: Path) -> dict[str, tuple[str | None, str | None, float]]:
    """Row name → (line, axis, order) for a grid file's rows, as the trade-off view draws them."""
    spec = yaml.safe_load(path.read_text())
    spec = {k: v for k, v in spec.items() if k not in ("data", "stage_options", "seed_policy")} | {"stages": ["analyze"]}
    grid = parse_grid(spec, source=str(path), root=path.parent)
    keys = list(dict.fromkeys(k for row in grid.rows for k in row.overrides))
    rows = [{k: flatten(row.config.to_dict())[k] for k in keys} for row in grid.rows]
    return {row.name: line for row, line in zip(grid.rows, assign_lines(rows, keys))}


def test_lines_join_rows_that_differ_along_one_axis() -> None:
    demo = _grid_lines(REPO / "experiments" / "demo.yaml")
    along = "model.decoder.num_layers"
    # D0 → D1 → D3 along the layers; D1-learnable differs in the query init too: a lone point.
    assert {n: (a, o) for n, (_l, a, o) in demo.items() if a} == {"D0": (along, 0.0), "D1": (along, 1.0),
                                                                  "D3": (along, 2.0)}
    assert demo["D1-learnable"][0] is None and len({line for line, _a, _o in demo.values() if line}) == 1
    table6a = _grid_lines(REPO / "experiments" / "paper" / "table6a.yaml")
    assert sorted(table6a, key=lambda n: table6a[n][2]) == ["D0", "D1", "D2", "D3", "D6", "D9"]
    assert len({line for line, _a, _o in table6a.values()}) == 1
    # Table 2 (query init × layers): one D1 → D3 line per query init, never across query inits.
    table2 = _grid_lines(REPO / "experiments" / "paper" / "table2.yaml")
    lines: dict[str, list[str]] = {}
    for name, (line, axis, _order) in sorted(table2.items(), key=lambda kv: kv[1][2]):
        assert axis == along
        lines.setdefault(line, []).append(name)
    assert sorted(lines.values()) == [[f"{init}-D1", f"{init}-D3"] for init in ("ia_guided", "learnable", "resize",
                                                                                 "zero")]


def seed_frame() -> pd.DataFrame:
    """Per-seed results (``seed_results``' columns) of grid ``layers`` (D1, D2, D3; two seeds: AP 35.1, 36.0,
    37.9 over seeds, FPS as ``fill_known``'s V100 rows) and grid ``other`` (D1, one seed)."""
    runs = [("layers", 1, 34.6, 50.0), ("layers", 1, 35.6, 52.0), ("layers", 2, 35.5, 30.0), ("layers", 2, 36.5, 30.0),
            ("layers", 3, 37.8, 35.0), ("layers", 3, 38.0, 36.0), ("other", 1, 30.0, 20.0)]
    return pd.DataFrame([{"grid": grid, "row": f"{LAYER}={n}", "seed": i % 2, "AP": ap, "gflops": 50.0 + n, "fps": fps,
                          "fps_min": fps - SPREAD, "fps_max": fps + SPREAD, "fps_repeats": 3, "fps_device": V100, LAYER: n}
                         for i, (grid, n, ap, fps) in enumerate(runs)])


def test_points_take_95_intervals_and_mark_undecided_rows() -> None:
    spec, axes = TradeoffSpec(), {"layers": [LAYER], "other": [LAYER]}
    points = tradeoff_points(seed_frame(), spec, axes)
    # Without intervals: AP ± its std over seeds (one seed: none), FPS from the lowest to the highest repeat.
    plain = points.set_index(["grid", "label"])
    assert plain.loc[("layers", "D2"), ["y_lo", "y_hi", "x_lo", "x_hi"]].tolist() == pytest.approx(
        [36.0 - 0.5 ** 0.5, 36.0 + 0.5 ** 0.5, 29.5, 30.5])
    assert plain.loc[("other", "D1"), ["y_lo", "y_hi"]].tolist() == [30.0, 30.0]
    assert not points["ci"].any() and set(points["verdict"]) == {""}
    assert bars_note(points, spec) == ("bars of layers, other (no 95% intervals): ± std of AP over seeds, "
                                       "lowest–highest timed FPS repeat")

    # ``other``'s frame has no value for its row (e.g. AP undefined): its bars stay as they were.
    frames = {"layers": LAYERS_COMPARISON, "other": comparison_frame({f"{LAYER}=1": {}}, None)}
    marked = with_intervals(points, spec, frames)
    by = marked.set_index(["grid", "label"])
    assert by.loc[("layers", "D2?"), ["y_lo", "y_hi", "x_lo", "x_hi", "ci", "verdict"]].tolist() == [
        35.0, 37.4, 29.6, 30.4, True, "undecided"]
    assert by.loc[("layers", "D1"), ["y_lo", "x_hi", "verdict"]].tolist() == [34.0, 51.8, "worse"]
    assert by.loc[("layers", "D3"), "verdict"] == "baseline"
    assert by.loc[("other", "D1"), ["y_lo", "x_lo", "ci", "verdict"]].tolist() == [30.0, 19.5, False, ""]
    assert marked[["x", "y", "pareto", "line"]].equals(points[["x", "y", "pareto", "line"]])
    assert bars_note(marked, spec) == ("bars of layers: 95% confidence intervals of AP over seeds and val images, "
                                       "of FPS over the timed repeats · bars of other (no 95% intervals): ± std of "
                                       "AP over seeds, lowest–highest timed FPS repeat")
    assert with_intervals(points, spec, {}).equals(points)

    flops = TradeoffSpec(x="GFLOPs")
    cheap = with_intervals(tradeoff_points(seed_frame(), flops, axes), flops, frames)
    assert (cheap["x_lo"] == cheap["x"]).all() and (cheap["x_hi"] == cheap["x"]).all() and cheap["ci"].sum() == 3
    assert bars_note(cheap, flops).startswith("bars of layers: 95% confidence intervals of AP over seeds and val "
                                              "images · ")


def test_figures_draw_the_bars_and_hollow_undecided_points() -> None:
    spec = TradeoffSpec()
    layers = seed_frame().query("grid == 'layers'")
    points = with_intervals(tradeoff_points(layers, spec, {"layers": [LAYER]}), spec, {"layers": LAYERS_COMPARISON})
    paper = pd.DataFrame({"curve": ["layers"], "label": ["D3 paper"], "table": ["6a"], "row": [f"{LAYER}=3"],
                          "x": [35.5], "y": [37.9]})
    fig = tradeoff_figure(points, paper, spec, "FPS", "grid")
    ax = fig.axes[0]
    assert {"D1", "D2?", "D3", "D3 paper"} <= {t.get_text() for t in ax.texts}
    assert "undecided vs baseline (?)" in {t.get_text() for t in ax.get_legend().get_texts()}
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "white" and len(line.get_xdata())]
    assert [(list(h.get_xdata()), list(h.get_ydata())) for h in hollow] == [([30.0], [36.0])]  # D2 only
    bars = {tuple(map(tuple, np.round(seg, 6))) for c in ax.collections for seg in getattr(c, "get_segments", list)()}
    assert ((30.0, 35.0), (30.0, 37.4)) in bars and ((29.6, 36.0), (30.4, 36.0)) in bars  # the 95% intervals
    assert figure_bytes(fig, "png").startswith(b"\x89PNG") and figure_bytes(fig, "pdf").startswith(b"%PDF")

    chart = tradeoff_chart(points, paper, spec, "FPS", "grid").to_dict()
    dots = {layer["mark"].get("filled"): [r["label"] for r in chart["datasets"][layer["data"]["name"]]]
            for layer in chart["layer"] if layer["mark"]["type"] == "point" and layer["mark"].get("size") == 80}
    assert dots == {True: ["D3", "D1"], False: ["D2?"]}


def test_table_verdict_marks_and_legend() -> None:
    table = with_verdicts(pd.DataFrame({LAYER: [1, 2, 3], "seeds": [2, 2, 2]}), LAYERS_COMPARISON)
    marked = mark_verdicts(table)
    assert marked["verdict"].tolist() == [":red[worse]", ":orange-background[? undecided]", "baseline"]
    assert marked[LAYER].tolist() == ["1", ":orange-background[2 ?]", "3"]
    assert table["verdict"].tolist() == ["worse", "undecided", "baseline"]  # the downloads keep the words
    legend = verdict_legend(table)
    assert legend.startswith(f"Compared with {LAYER}=3: 95% intervals over seeds and 1000 paired val-image resamples")
    assert f"— {LAYER}=2: width 3.8 points ·" in legend and "on cuda/float32" in legend
    plain = pd.DataFrame({LAYER: [1], "seeds": [2]})
    assert mark_verdicts(plain) is plain


def test_run_ap_with_its_interval_over_val_images() -> None:
    metrics = {**dict.fromkeys(STORED, math.nan), "AP": 35.0, "AP50": 54.0,
               "extra": {"eval": {"AP_ci": [0.33, 0.37], "AP50_ci": [0.5, 0.6], "AP_S_ci": [-1.0, -1.0]}}}
    assert data.ap_text(metrics) == "AP 35.0 [33.0, 37.0] · AP50 54.0 [50.0, 60.0] (95% CI over val images)"
    assert data.ap_text({**metrics, "extra": {"timings": {}}}) == "AP 35.0"  # evaluated before intervals were kept
    assert data.ap_text({**metrics, "AP": math.nan}) == ""


# --------------------------------------------------------------------------- data layer, SQLite and PostgreSQL


@pytest.fixture(params=DB_KINDS)
def filled_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    for url in url_for(request.param, tmp_path):
        for db in open_db(url):
            fill_known(db, tmp_path)
            yield db


def test_points_and_front_from_the_database(filled_any: Database) -> None:
    assert speed_settings(filled_any) == [CPU, CUDA]  # 8 runs measured on the CPU, 6 on the V100

    results = seed_results(filled_any, setting=CUDA)
    v100 = tradeoff_points(results, TradeoffSpec(), AXES)
    got = {r.label: (r.x, round(r.y, 6), r.seeds, r.pareto) for r in v100.itertuples()}
    # D1 seed 0 also has an older V100 row at 10 FPS: the newest one (50) counts.
    assert got == {"D1": (51.0, 35.1, 2, True), "D2": (30.0, 36.2, 2, False), "D3": (35.5, 37.9, 2, True)}
    assert v100["label"].tolist() == ["D2", "D3", "D1"]  # by curve, then x
    assert v100["y_std"].round(4).tolist() == [0.2828, 0.1414, 0.1414]
    assert (v100["x_lo"] + SPREAD).tolist() == [30.0, 35.0, 50.0] and (v100["x_hi"] - SPREAD).tolist() == [30.0, 36.0, 52.0]
    assert v100["line_axis"].tolist() == ["model.decoder.num_layers"] * 3 and v100["line"].nunique() == 1
    assert v100.set_index("label")["order"].to_dict() == {"D1": 0.0, "D2": 1.0, "D3": 2.0}
    assert set(results.loc[results["fps"].isna(), "grid"]) == {"backbones"}  # measured on the CPU only

    cpu = tradeoff_points(seed_results(filled_any, setting=CPU), TradeoffSpec(), AXES)
    assert sorted(zip(cpu["label"], cpu["x"].round(6))) == [("D1", 5.1), ("D2", 3.0), ("D3", 3.55),
                                                            ("resnet101", 1.5), ("resnet18", 2.0)]

    flops = tradeoff_points(results, TradeoffSpec(x="GFLOPs"), AXES)  # lower is better; no speed involved
    front = flops[flops["pareto"]].sort_values("x")
    assert list(zip(front["curve"], front["label"])) == [("backbones", "resnet18"), ("layers", "D1"),
                                                          ("layers", "D2"), ("layers", "D3")]

    assert data.status_counts(filled_any) == {"queued": 1, "running": 1, "succeeded": 8, "failed": 1,
                                              "cancelled": 0}
    running = data.running_jobs(filled_any)
    assert running[["worker", "device", "progress"]].values.tolist() == [["host-b:7", "cuda:1", None]]
    problems = data.problem_runs(filled_any)
    assert data.error_summary(problems.loc[0, "error"]) == "RuntimeError: CUDA out of memory (known failure)"


def test_paper_points_share_the_curve_of_the_row_they_reproduce(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(REPORTED)
    reported = load_reported(tmp_path / "r.csv")
    ours = pd.DataFrame({"grid": ["layers"], "row": ["model.decoder.num_layers=1"], "curve": ["layers"]})
    paper = paper_points(reported, TradeoffSpec(), ["6a", "1"], ours)
    assert paper[["curve", "label", "x", "y"]].values.tolist() == [
        ["layers", "D1", 48.8, 35.6], ["paper table 6a", "D3", 35.5, 37.9], ["paper table 1", "SOLOv2-R50", 41.3, 34.0]]
    assert paper_points(reported, TradeoffSpec(x="GFLOPs"), ["1"], ours).empty  # SOLOv2 has no GFLOPs


# --------------------------------------------------------------------------- the app (AppTest)


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root / 'results.db'}"
    db = init_db(url)
    fill_known(db, root)
    db.dispose()
    reported = root / "reported.csv"
    reported.write_text(REPORTED)
    yield url, reported


def test_grid_intervals_fall_back_from_verdicts_to_intervals_to_none(monkeypatch: pytest.MonkeyPatch,
                                                                     known: tuple[str, Path]) -> None:
    db = Database(known[0])
    # The runs kept no per-image matchings (an old database): runner.comparison refuses every grid.
    frames, problems = data.grid_intervals(db, {"layers": f"{LAYER}=3", "backbones": None})
    assert not frames and list(problems) == ["layers", "backbones"]
    assert problems["layers"].startswith(f"no 95% intervals: no per-image matching for {LAYER}=1: run ")

    def compare(db: Database, grid: str, *, baseline: str | None = None, **_: Any) -> pd.DataFrame:
        raise ComparisonError(f"baseline {baseline!r} has 1 succeeded run(s)")

    monkeypatch.setattr(comparison, "compare_grid", compare)
    monkeypatch.setattr(comparison, "row_intervals", lambda db, grid, **_: LAYERS_COMPARISON)
    frames, problems = data.grid_intervals(db, {"layers": f"{LAYER}=1"}, "AP", CUDA)
    assert frames["layers"] is LAYERS_COMPARISON
    assert problems == {"layers": f"no verdicts against {LAYER}=1: baseline '{LAYER}=1' has 1 succeeded run(s)"}
    db.dispose()


def _app(monkeypatch: pytest.MonkeyPatch, *argv: str, view: str | None = None) -> AppTest:
    monkeypatch.setattr(sys, "argv", [APP, *argv])
    st.cache_data.clear()  # cached comparisons of another test (same database, other monkeypatched results)
    at = AppTest.from_file(APP, default_timeout=60)
    if view:
        at.query_params["view"] = view
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _frame(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first table on the page that has all of ``columns``."""
    return next(df.value for df in at.dataframe if set(columns) <= set(df.value.columns))


def test_app_tradeoff_points_front_and_overlay(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path]) -> None:
    url, reported = known
    at = _app(monkeypatch, "--db", url, "--paper", str(reported))
    # Two of the three grids have the CPU as their reference; layers names cuda/float32.
    assert at.selectbox(key="tradeoff_speed").value == CPU
    assert sorted(_frame(at, "pareto")["x"].round(6)) == [1.5, 2.0, 3.0, 3.55, 5.1]
    at.multiselect(key="tradeoff_grids").set_value(["layers"]).run()
    assert at.selectbox(key="tradeoff_speed").value == CUDA  # the chosen grid's reference
    points = _frame(at, "pareto")
    assert list(zip(points["label"], points["x"], points["y"].round(6), points["pareto"])) == [
        ("D2", 30.0, 36.2, False), ("D3", 35.5, 37.9, True), ("D1", 51.0, 35.1, True)]
    paper = _frame(at, "table", "curve")
    assert paper[["curve", "label", "x"]].values.tolist() == [["layers", "D1", 48.8], ["layers", "D3", 35.5]]
    chart = next(c for c in at.get("vega_lite_chart"))
    spec = json.loads(chart.proto.spec)
    assert spec["layer"][0]["mark"]["strokeDash"] and "FPS (cuda/float32, batch 1)" in json.dumps(spec)
    assert {"x_lo", "x_hi", "y_lo", "y_hi"} <= set(json.dumps(spec).replace('"', " ").split())  # error bars
    assert {b.key for b in at.get("download_button")} == {"tradeoff_png", "tradeoff_pdf"}

    at.multiselect(key="tradeoff_grids").set_value(["backbones", "broken", "layers"]).run()
    at.radio(key="tradeoff_x").set_value("GFLOPs").run()
    points = _frame(at, "pareto")
    assert sorted(points.loc[points["pareto"], "label"]) == ["D1", "D2", "D3", "resnet18"]
    at.toggle(key="tradeoff_overlay").set_value(False).run()
    assert not any("table" in df.value.columns for df in at.dataframe)  # no paper points


def test_app_tradeoff_intervals_and_undecided_marks(monkeypatch: pytest.MonkeyPatch,
                                                   known: tuple[str, Path]) -> None:
    calls = []

    def compare(db: Database, grid: str, *, baseline: str | None = None, metric: str = "AP",
                setting: SpeedSetting | None = None, **_: Any) -> pd.DataFrame:
        calls.append((grid, baseline, metric, setting))
        return LAYERS_COMPARISON.copy()

    def intervals(db: Database, grid: str, **_: Any) -> pd.DataFrame:
        raise ComparisonError(f"no per-image matching for {grid}")

    monkeypatch.setattr(comparison, "compare_grid", compare)
    monkeypatch.setattr(comparison, "row_intervals", intervals)
    url, reported = known
    at = _app(monkeypatch, "--db", url, "--paper", str(reported))
    at.multiselect(key="tradeoff_grids").set_value(["layers"]).run()
    assert calls[-1] == ("layers", f"{LAYER}=3", "AP", CUDA)  # its baseline, on the plotted setting
    points = _frame(at, "pareto")
    assert points[["label", "x", "x_lo", "x_hi", "y_lo", "y_hi", "ci", "verdict"]].values.tolist() == [
        ["D2?", 30.0, 29.6, 30.4, 35.0, 37.4, True, "undecided"], ["D3", 35.5, 35.0, 36.0, 36.9, 38.9, True, "baseline"],
        ["D1", 51.0, 50.2, 51.8, 34.0, 36.2, True, "worse"]]
    spec = json.loads(next(iter(at.get("vega_lite_chart"))).proto.spec)
    assert {"type": "point", "filled": False, "size": 80, "strokeWidth": 2, "opacity": 1} in [
        layer["mark"] for layer in spec["layer"]]  # the hollow undecided dot
    caption = next(c.value for c in at.caption if "Pareto front" in c.value)
    assert "labels ending in '?'" in caption and "bars of layers: 95% confidence intervals of AP" in caption
    assert not any("No 95% intervals" in e.label for e in at.expander)

    at.multiselect(key="tradeoff_grids").set_value(["backbones", "layers"]).run()
    at.selectbox(key="tradeoff_speed").set_value(CUDA).run()
    at.radio(key="tradeoff_x").set_value("GFLOPs").run()  # backbones have no V100 FPS, but GFLOPs
    caption = next(c.value for c in at.caption if "Pareto front" in c.value)
    assert "bars of layers: 95% confidence intervals" in caption
    assert "bars of backbones (no 95% intervals): ± std of AP over seeds" in caption
    assert any(e.label == "No 95% intervals or verdicts for 1 grid(s)" for e in at.expander)
    assert "- **backbones**: no 95% intervals: no per-image matching for backbones" in [m.value for m in at.markdown]


def test_app_without_paper_file_says_so(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path],
                                        tmp_path: Path) -> None:
    at = _app(monkeypatch, "--db", known[0], "--paper", str(tmp_path / "absent.csv"))
    assert any("no reported numbers at" in c.value for c in at.caption)


def test_app_table_values_filters_and_exports(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path]) -> None:
    url, reported = known
    at = _app(monkeypatch, "--db", url, "--paper", str(reported), view="Table")
    at.selectbox(key="table_grid").set_value("layers").run()
    assert at.selectbox(key="table_speed").value == CUDA  # the grid's reference
    # The runs kept no per-image matchings (an old database): no comparison with the baseline, the plain table.
    assert at.selectbox(key="table_baseline").value == f"{LAYER}=3"
    assert [i.value.split(":")[0] for i in at.info] == [f"No comparison with {LAYER}=3"]
    assert "no per-image matching for" in at.info[0].value
    assert _table_cells(at) == [
        ["model.decoder.num_layers", "AP", "AP_S", "AP_M", "AP_L", "GFLOPs", "FPS (cuda/float32)"],
        ["1", "35.1 ± 0.1", "–", "–", "–", "59.6 ± 0.0", "51.0 [49.5–52.5]"],
        ["2", "36.2 ± 0.3", "–", "–", "–", "67.5 ± 0.0", "30.0 [29.5–30.5]"],
        ["3", "37.9 ± 0.1", "–", "–", "–", "75.5 ± 0.0", "35.5 [34.5–36.5]"]]
    latex, csv = (next(c.value for c in at.code if marker in c.value) for marker in (r"\begin{tabular}", "seeds"))
    assert " & ".join(["3", "37.9 ± 0.1", "–", "–", "–", "75.5 ± 0.0", "35.5 [34.5–36.5]"]) in " ".join(latex.split())
    frame = pd.read_csv(io.StringIO(csv))
    assert list(frame.columns[:4]) == ["model.decoder.num_layers", "seeds", "AP", "AP_std"]
    assert frame[["fps", "fps_min", "fps_max", "fps_repeats", "fps_device"]].values.tolist()[0] == [
        51.0, 49.5, 52.5, 6, V100]
    assert list(_frame(at, "row_name")["row"]) == ["D1", "D3"]

    assert any(f"measured on {V100}" in c.value for c in at.caption)
    at.selectbox(key="table_speed").set_value(CPU).run()  # the same runs' CPU rows
    assert [row[-1] for row in _table_cells(at)] == ["FPS (cpu/float32)", "5.1 [4.5–5.7]", "3.0 [2.5–3.5]",
                                                     "3.5 [3.0–4.1]"]
    at.selectbox(key="table_speed").set_value(CUDA).run()
    at.multiselect(key="table_filter_model.decoder.num_layers").set_value(["1", "3"]).run()
    at.selectbox(key="table_sort").set_value("AP").run()
    at.toggle(key="table_desc").set_value(True).run()
    assert [row[0] for row in _table_cells(at)[1:]] == ["3", "1"]


def test_app_table_verdicts_against_a_baseline(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path]) -> None:
    calls = []

    def compare(db: Database, grid: str, *, baseline: str | None = None, setting: SpeedSetting | None = None,
                **_: Any) -> pd.DataFrame:
        calls.append((grid, baseline, setting))
        if baseline != f"{LAYER}=3":
            raise ComparisonError(f"baseline {baseline!r} has 1 succeeded run(s)")
        return LAYERS_COMPARISON.copy()

    monkeypatch.setattr(comparison, "compare_grid", compare)
    url, reported = known
    at = _app(monkeypatch, "--db", url, "--paper", str(reported), view="Table")
    at.selectbox(key="table_grid").set_value("layers").run()
    assert at.selectbox(key="table_baseline").value == f"{LAYER}=3"  # the grid's baseline
    assert calls[-1] == ("layers", f"{LAYER}=3", CUDA) and not at.info
    assert _table_cells(at) == [
        [LAYER, "AP [95% CI]", "AP_S", "AP_M", "AP_L", "GFLOPs", "FPS (cuda/float32)", f"ΔAP vs {LAYER}=3 [95% CI]",
         "P(better)", "verdict", f"FPS ratio vs {LAYER}=3 [95% CI]", "speed"],
        ["1", "35.1 [34.0, 36.2]", "–", "–", "–", "59.6 ± 0.0", "51.0 [49.5–52.5]", "-2.8 [-4.0, -1.6] (w 2.4)", "0.05",
         ":red[worse]", "1.44 [1.40, 1.48]", "faster"],
        [":orange-background[2 ?]", "36.2 [35.0, 37.4]", "–", "–", "–", "67.5 ± 0.0", "30.0 [29.5–30.5]", "-1.7 [-3.6, +0.2] (w 3.8)", "0.20",
         ":orange-background[? undecided]", "0.85 [0.80, 0.90]", "slower"],
        ["3", "37.9 [36.9, 38.9]", "–", "–", "–", "75.5 ± 0.0", "35.5 [34.5–36.5]", "–", "–", "baseline", "–", "–"]]
    assert any(f"— {LAYER}=2: width 3.8 points" in c.value for c in at.caption)  # the legend
    latex, csv = (next(c.value for c in at.code if marker in c.value) for marker in (r"\begin{tabular}", "seeds"))
    assert "-2.8 [-4.0, -1.6]*" in latex and "undecided" in latex  # downloads: the same columns, plain words
    frame = pd.read_csv(io.StringIO(csv))
    assert frame["verdict"].tolist() == ["worse", "undecided", "baseline"]
    assert frame["delta_width"].tolist()[:2] == [2.4, 3.8] and frame["baseline"].unique().tolist() == [f"{LAYER}=3"]

    at.multiselect(key="table_filter_model.decoder.num_layers").set_value(["2", "3"]).run()  # filters keep verdicts
    assert [row[9] for row in _table_cells(at)[1:]] == [":orange-background[? undecided]", "baseline"]
    at.selectbox(key="table_baseline").set_value(f"{LAYER}=1").run()  # cannot be compared: the plain table
    assert at.info[0].value == f"No comparison with {LAYER}=1: baseline '{LAYER}=1' has 1 succeeded run(s)"
    assert _table_cells(at)[0][1] == "AP" and len(_table_cells(at)[0]) == 7
    at.selectbox(key="table_baseline").set_value("").run()
    assert not at.info and any("Choose a baseline row" in c.value for c in at.caption)
    at.selectbox(key="table_grid").set_value("backbones").run()  # no baseline of its own
    assert at.selectbox(key="table_baseline").value == "" and calls[-1][0] == "layers"


def _table_cells(at: AppTest, key: str = LAYER) -> list[list[str]]:
    """The header and body cells of the view's Markdown table (its first column: ``key``)."""
    table = next(m.value for m in at.markdown if m.value.startswith(f"| {key} "))
    lines = table.strip().splitlines()
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in [lines[0], *lines[2:]]]


def test_app_run_view(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path]) -> None:
    at = _app(monkeypatch, "--db", known[0], view="Run")
    run_id = next(k for k in at.selectbox(key="run").options if "layers / model.decoder.num_layers=1 · seed 0" in k)
    at.selectbox(key="run").set_value(int(run_id.split(" ")[0].lstrip("#"))).run()
    diff = _frame(at, "key", "base")
    assert diff.set_index("key").loc["model.decoder.num_layers"].tolist() == ["3", "1"]
    metrics = _frame(at, "AP", "gflops")
    assert metrics.loc[0, "AP"] == pytest.approx(35.0) and metrics.loc[0, "params"] == pytest.approx(30.0)
    assert "**AP 35.0 [33.0, 37.0] (95% CI over val images)**" in [m.value for m in at.markdown]
    speed = _frame(at, "setting", "fps_min")  # every speed row, newest first
    assert speed[["setting", "fps"]].values.tolist() == [["cuda/float32", 50.0], ["cpu/float32", 5.0],
                                                         ["cuda/float32", 10.0]]
    assert len(at.get("vega_lite_chart")) == 2  # losses and learning rate
    assert any("no prediction images" in i.value for i in at.info)
    seed1 = next(k for k in at.selectbox(key="run").options if "layers / model.decoder.num_layers=1 · seed 1" in k)
    at.selectbox(key="run").set_value(int(seed1.split(" ")[0].lstrip("#"))).run()
    assert "**AP 35.2**" in [m.value for m in at.markdown]  # evaluated without an interval: AP alone


def test_app_queue_view(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path]) -> None:
    at = _app(monkeypatch, "--db", known[0], view="Queue")
    assert {m.label: m.value for m in at.metric} == {"queued": "1", "running": "1", "succeeded": "8", "failed": "1",
                                                    "cancelled": "0"}
    assert _frame(at, "worker", "progress")["worker"].tolist() == ["host-b:7"]
    assert any("CUDA out of memory (known failure)" in e.label for e in at.expander)
    assert _frame(at, "done_%").set_index("grid").loc["layers", "done_%"] == 100.0


def test_app_empty_states(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "absent.db"
    monkeypatch.setenv("FASTINST_DB", f"sqlite:///{missing}")
    at = _app(monkeypatch)
    assert "No database file at" in at.info[0].value and not missing.exists()
    init_db(f"sqlite:///{missing}").dispose()
    at = _app(monkeypatch)
    assert "has no runs yet" in at.info[0].value


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database of runs with real per-image matchings (``verdict_helpers.comparison_db``): grid ``cmp``,
    rows ``base`` (its baseline), ``same`` (base's config, so base's runs) and ``better``, 3 seeds; CPU speed
    rows at 20 FPS (base) and 25 FPS (better)."""
    root = tmp_path_factory.mktemp("evaluated")
    url = f"sqlite:///{root / 'results.db'}"
    db = init_db(url)
    comparison_db(root, db, {"base": 0.55, "same": 0.55, "better": 0.95}, seeds=3, same=("same",))
    runs = db.read(lambda s: [(r.id, r.row_name) for r in s.scalars(select(Run))])
    db.write(lambda s: s.add_all([speed(i, 20.0 if row == "base" else 25.0, "cpu") for i, row in runs]))
    db.dispose()
    return url


def test_app_views_on_runs_with_matchings(monkeypatch: pytest.MonkeyPatch, evaluated: str) -> None:
    at = _app(monkeypatch, "--db", evaluated, view="Table")
    assert at.selectbox(key="table_baseline").value == "base" and not at.info
    header, *rows = _table_cells(at, "row")
    assert header[1] == "AP [95% CI]" and header[7:] == ["ΔAP vs base [95% CI]", "P(better)", "verdict",
                                                         "FPS ratio vs base [95% CI]", "speed"]
    assert [(r[0], r[9], r[11]) for r in rows] == [
        ("base", "baseline", "–"), (":orange-background[same ?]", ":orange-background[? undecided]", "undecided"),
        ("better", ":green[better]", "faster")]
    assert rows[1][7].startswith("+0.0 [-") and any("same: width" in c.value for c in at.caption)

    at = _app(monkeypatch, "--db", evaluated)
    points = _frame(at, "pareto").set_index("label")
    assert points["verdict"].to_dict() == {"base": "baseline", "same?": "undecided", "better": "better"}
    assert points["ci"].all() and (points["y_lo"] < points["y"]).all() and (points["y"] < points["y_hi"]).all()
    assert (points["x_lo"] < points["x"]).all() and (points["x"] < points["x_hi"]).all()
    assert any("bars of cmp: 95% confidence intervals" in c.value for c in at.caption)

    at = _app(monkeypatch, "--db", evaluated, view="Run")
    ap = _frame(at, "AP", "gflops").loc[0, "AP"]
    text = next(m.value for m in at.markdown if m.value.startswith("**AP "))
    assert text.startswith(f"**AP {ap:.1f} [") and text.endswith("(95% CI over val images)**")


def _paper_like(db: Database, path: Path, fps: dict[str, float]) -> None:
    """Queue a grid file's rows as noop runs (one seed) and finish them: AP and CPU FPS by row name."""
    from dashboard_demo import runs_of, speed, succeed

    from runner import queue
    from runner.stages import parse_stage_grid as runner_grid

    spec = yaml.safe_load(path.read_text())
    spec = {k: v for k, v in spec.items() if k not in ("data", "stage_options", "seed_policy")} | {
        "stages": ["noop"], "seeds": [0], "resources": {"gpus": 0}}
    grid = runner_grid(spec, source=str(path), root=path.parent)
    queue.submit(db, grid)
    names = {row.hash: row.name for row in grid.rows}
    hashes = db.read(lambda s: {r.id: r.variant_hash for r in s.scalars(select(Run))})
    for run_id, _overrides, _seed in runs_of(db, grid.name):
        name = names[hashes[run_id]]
        succeed(db, run_id, ap=fps[name] / 100 + 0.2, gflops=10.0, speeds=(speed(run_id, fps[name], "cpu"),))


def test_app_tradeoff_lines_on_explicit_row_grids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lines.db'}"
    db = init_db(url)
    _paper_like(db, REPO / "experiments" / "demo.yaml", {"D0": 12.0, "D1": 10.0, "D3": 7.0, "D1-learnable": 10.5})
    _paper_like(db, REPO / "experiments" / "paper" / "table2.yaml",
                {f"{q}-D{d}": 10.0 - d + i * 0.1 for i, q in enumerate(("zero", "learnable", "resize", "ia_guided"))
                 for d in (1, 3)})
    db.dispose()
    at = _app(monkeypatch, "--db", url, "--paper", str(tmp_path / "none.csv"))
    at.multiselect(key="tradeoff_grids").set_value(["demo"]).run()
    assert at.selectbox(key="tradeoff_curve").value == "model.query_init"  # a curve per query init
    points = _frame(at, "pareto").set_index("label")
    on_line = points[points["line"].notna()]
    assert on_line.sort_values("order").index.tolist() == ["D0", "D1", "D3"] and on_line["line"].nunique() == 1
    assert pd.isna(points.loc["D1-learnable", "line"])  # differs in the query init too: a point
    at.selectbox(key="tradeoff_curve").set_value("grid").run()  # one colour: still no line through D1-learnable
    points = _frame(at, "pareto").set_index("label")
    assert pd.isna(points.loc["D1-learnable", "line"]) and points["line"].nunique() == 1

    at.multiselect(key="tradeoff_grids").set_value(["table2"]).run()
    points = _frame(at, "pareto")
    assert sorted(points["curve"].unique()) == ["ia_guided", "learnable", "resize", "zero"]
    assert (points["line_axis"] == "model.decoder.num_layers").all()
    assert points.groupby("curve")["line"].nunique().tolist() == [1, 1, 1, 1]
