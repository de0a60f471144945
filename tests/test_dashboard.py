"""The dashboard: pure functions (Pareto front, points, tables, figures), its data layer on SQLite and
PostgreSQL, and every view through ``streamlit.testing.v1.AppTest`` on a database with known rows
(``dashboard_demo.fill_known``: AP stored in [0, 1], shown in percent)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dashboard_demo import V100, fill_known
from runner_helpers import DB_KINDS, open_db, url_for
from streamlit.testing.v1 import AppTest

from dashboard import data
from dashboard.figures import figure_bytes, tradeoff_figure
from dashboard.paper import PaperError, load_reported
from dashboard.tables import filter_table, sort_table
from dashboard.tradeoff import TradeoffSpec, fps_settings, paper_points, pareto_mask, tradeoff_points
from runner.db import Database, init_db

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
AXES = {"layers": ["model.decoder.num_layers"], "backbones": ["model.backbone.name"], "broken": ["model.num_ia_queries"]}
REPORTED = ("table,row,grid,row_name,AP,AP_S,AP_M,AP_L,GFLOPs,FPS,AR\n"
            "6a,D1,layers,model.decoder.num_layers=1,35.6,14.3,38.8,56.6,59.6,48.8,\n"
            "6a,D3,layers,model.decoder.num_layers=3,37.9,16.0,40.7,60.1,75.5,35.5,\n"
            "1,SOLOv2-R50,,,34.0,10.3,36.3,54.4,,41.3,\n")


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


def test_figure_downloads_are_png_and_pdf() -> None:
    points = pd.DataFrame({"curve": ["g", "g"], "label": ["D1", "D3"], "grid": ["g", "g"], "row": ["a", "b"],
                           "seeds": [1, 1], "x": [50.0, 35.0], "y": [35.0, 38.0], "y_std": [np.nan, np.nan],
                           "pareto": [True, True]})
    paper = pd.DataFrame({"curve": ["g"], "label": ["D3 paper"], "table": ["6a"], "row": ["b"], "x": [35.5], "y": [37.9]})
    fig = tradeoff_figure(points, paper, TradeoffSpec(), "FPS", "grid")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"D1", "D3", "D3 paper"} <= texts
    assert figure_bytes(fig, "png").startswith(b"\x89PNG") and figure_bytes(fig, "pdf").startswith(b"%PDF")


# --------------------------------------------------------------------------- data layer, SQLite and PostgreSQL


@pytest.fixture(params=DB_KINDS)
def filled_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    for url in url_for(request.param, tmp_path):
        for db in open_db(url):
            fill_known(db, tmp_path)
            yield db


def test_points_and_front_from_the_database(filled_any: Database) -> None:
    results = data.grid_results(filled_any)
    assert fps_settings(results) == [(V100, "float32"), ("cpu", "float32")]

    v100 = tradeoff_points(results, TradeoffSpec(fps_device=V100, fps_dtype="float32"), AXES)
    got = {r.label: (r.x, round(r.y, 6), r.seeds, r.pareto) for r in v100.itertuples()}
    assert got == {"D1": (51.0, 35.1, 2, True), "D2": (30.0, 36.2, 2, False), "D3": (35.5, 37.9, 2, True)}
    assert v100["label"].tolist() == ["D2", "D3", "D1"]  # by curve, then x
    assert v100["y_std"].round(4).tolist() == [0.2828, 0.1414, 0.1414]

    cpu = tradeoff_points(results, TradeoffSpec(fps_device="cpu", fps_dtype="float32"), AXES)
    assert sorted(zip(cpu["label"], cpu["pareto"])) == [("resnet101", True), ("resnet18", True)]

    flops = tradeoff_points(results, TradeoffSpec(x="GFLOPs"), AXES)  # lower is better; every device counts
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


def _app(monkeypatch: pytest.MonkeyPatch, *argv: str, view: str | None = None) -> AppTest:
    monkeypatch.setattr(sys, "argv", [APP, *argv])
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
    assert at.selectbox(key="tradeoff_fps").value == (V100, "float32")
    points = _frame(at, "pareto")
    assert list(zip(points["label"], points["x"], points["y"].round(6), points["pareto"])) == [
        ("D2", 30.0, 36.2, False), ("D3", 35.5, 37.9, True), ("D1", 51.0, 35.1, True)]
    paper = _frame(at, "table", "curve")
    assert paper[["curve", "label", "x"]].values.tolist() == [["layers", "D1", 48.8], ["layers", "D3", 35.5]]
    chart = next(c for c in at.get("vega_lite_chart"))
    spec = json.loads(chart.proto.spec)
    assert spec["layer"][0]["mark"]["strokeDash"] and "FPS (cuda:0" in json.dumps(spec)
    assert {b.key for b in at.get("download_button")} == {"tradeoff_png", "tradeoff_pdf"}

    at.radio(key="tradeoff_x").set_value("GFLOPs").run()
    points = _frame(at, "pareto")
    assert sorted(points.loc[points["pareto"], "label"]) == ["D1", "D2", "D3", "resnet18"]
    at.toggle(key="tradeoff_overlay").set_value(False).run()
    assert not any("table" in df.value.columns for df in at.dataframe)  # no paper points


def test_app_without_paper_file_says_so(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path],
                                        tmp_path: Path) -> None:
    at = _app(monkeypatch, "--db", known[0], "--paper", str(tmp_path / "absent.csv"))
    assert any("no reported numbers at" in c.value for c in at.caption)


def test_app_table_values_filters_and_exports(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path]) -> None:
    url, reported = known
    at = _app(monkeypatch, "--db", url, "--paper", str(reported), view="Table")
    at.selectbox(key="table_grid").set_value("layers").run()
    table = at.markdown[0].value if "| model.decoder.num_layers |" in at.markdown[0].value else next(
        m.value for m in at.markdown if "| model.decoder.num_layers |" in m.value)
    lines = table.strip().splitlines()
    assert lines[0] == "| model.decoder.num_layers | AP | AP_S | AP_M | AP_L | GFLOPs | FPS |"
    assert lines[2:] == ["| 1 | 35.1 ± 0.1 | – | – | – | 59.6 ± 0.0 | 51.0 ± 1.4 |",
                         "| 2 | 36.2 ± 0.3 | – | – | – | 67.5 ± 0.0 | 30.0 ± 0.0 |",
                         "| 3 | 37.9 ± 0.1 | – | – | – | 75.5 ± 0.0 | 35.5 ± 0.7 |"]
    latex, csv = (next(c.value for c in at.code if marker in c.value) for marker in (r"\begin{tabular}", "seeds"))
    assert r"3 & 37.9 $\pm$ 0.1 & – & – & – & 75.5 $\pm$ 0.0 & 35.5 $\pm$ 0.7 \\" in latex
    assert csv.splitlines()[0].startswith("model.decoder.num_layers,seeds,AP,AP_std")
    assert list(_frame(at, "row_name")["row"]) == ["D1", "D3"]

    at.multiselect(key="table_filter_model.decoder.num_layers").set_value(["1", "3"]).run()
    at.selectbox(key="table_sort").set_value("AP").run()
    at.toggle(key="table_desc").set_value(True).run()
    rows = next(m.value for m in at.markdown if "| model.decoder.num_layers |" in m.value).strip().splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| 3", "| 1"]


def test_app_run_view(monkeypatch: pytest.MonkeyPatch, known: tuple[str, Path]) -> None:
    at = _app(monkeypatch, "--db", known[0], view="Run")
    run_id = next(k for k in at.selectbox(key="run").options if "layers / model.decoder.num_layers=1 · seed 0" in k)
    at.selectbox(key="run").set_value(int(run_id.split(" ")[0].lstrip("#"))).run()
    diff = _frame(at, "key", "base")
    assert diff.set_index("key").loc["model.decoder.num_layers"].tolist() == ["3", "1"]
    metrics = _frame(at, "AP", "fps")
    assert metrics.loc[0, "AP"] == pytest.approx(35.0) and metrics.loc[0, "fps"] == 50.0
    assert len(at.get("vega_lite_chart")) == 2  # losses and learning rate
    assert any("no prediction images" in i.value for i in at.info)


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
