"""The real dashboard server (``streamlit run``) on localhost, opened in headless Chromium via Playwright.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it); skips otherwise.
Screenshots of each view go to ``test-artifacts/`` (or ``$FASTINST_SCREENSHOT_DIR``; the README's
``docs/img/dashboard_*.png`` are made with that set to ``docs/img``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_demo import fill_demo

from runner.db import init_db

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("FASTINST_SCREENSHOT_DIR", REPO / "test-artifacts"))
CHART = ".vega-embed canvas, .vega-embed svg.marks"

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's package: apt-get install -y chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"streamlit did not answer within {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("dashboard_browser")
    url = f"sqlite:///{root / 'results.db'}"
    db = init_db(url)
    reported = fill_demo(db, root)
    db.dispose()
    port = _free_port()
    log = root / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--", "--db", url, "--paper", str(reported)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        browser.close()


def _open(page: sync_api.Page, server: str, query: str, heading: str) -> None:
    page.goto(f"{server}/?{query}", wait_until="domcontentloaded")
    # Streamlit renders over a websocket after the page loads: wait for the view's own content.
    page.get_by_role("heading", name=heading).wait_for(timeout=60_000)
    _wait_idle(page)


def _wait_idle(page: sync_api.Page) -> None:
    """Until the script run is over (Streamlit shows its status widget while a run is in progress)."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=60_000)


def _shot(page: sync_api.Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"dashboard_{name}.png"
    _wait_idle(page)
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    return path


def test_tradeoff_chart_renders(page: sync_api.Page, server: str) -> None:
    _open(page, server, "view=Trade-off", "Speed–accuracy trade-off")
    chart = page.locator(CHART).first
    chart.wait_for(timeout=60_000)
    box = chart.bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 300
    # Vega draws SVG text: the point labels (ours and the paper's) and the axis titles.
    page.locator(".vega-embed svg.marks text", has_text="D9").first.wait_for(timeout=30_000)
    texts = set(page.locator(".vega-embed svg.marks text").all_text_contents())
    assert {"D0", "D1", "D3", "D9", "Na10", "Na200", "AP"} <= texts, texts
    assert "FPS (cuda/float32, batch 1)" in texts, texts  # the grids' reference speed setting
    assert page.get_by_text("hollow diamonds: the paper's reported numbers").is_visible()
    _shot(page, "tradeoff")


def test_table_run_and_queue_views(page: sync_api.Page, server: str) -> None:
    _open(page, server, "view=Table&grid=table6a_layers", "Paper-style tables")
    table = page.locator("table", has_text="model.decoder.num_layers").first
    table.wait_for(timeout=30_000)
    assert "GFLOPs" in table.inner_text() and "±" in table.inner_text()
    assert "FPS (cuda/float32)" in table.inner_text() and "[" in table.inner_text()  # FPS median [min–max]
    assert table.locator("tbody tr").count() == 6  # D0, D1, D2, D3, D6, D9
    _shot(page, "table")

    page.set_viewport_size({"width": 1400, "height": 2100})  # the run view is long: curves and images too
    _open(page, server, "view=Run&run=3", "Run details")
    page.locator(CHART).first.wait_for(timeout=60_000)
    page.locator("[data-testid='stImage'] img").first.wait_for(timeout=30_000)
    assert page.get_by_role("combobox", name="Run").input_value().startswith("#3 · table6a_layers")
    page.get_by_role("heading", name="Speed").wait_for(timeout=30_000)  # every speed row of the run
    _shot(page, "run")
    page.set_viewport_size({"width": 1400, "height": 1000})

    _open(page, server, "view=Queue", "Queue")
    page.get_by_text("CUDA out of memory").first.wait_for(timeout=30_000)
    running = page.locator("[data-testid='stMetric']", has_text="running").first.inner_text()
    assert running.split() == ["running", "2"], running
    _shot(page, "queue")
