"""Shared helpers for the runner tests: database URLs (SQLite file, PostgreSQL schema), grids, workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from runner.db import Database, Run, init_db, safe_url

REPO = Path(__file__).resolve().parents[1]
PG_ENV = "FASTINST_TEST_POSTGRES_URL"


def postgres_url() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server (dropped afterwards), or a skip saying why."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (.ci/run sets it to the local server); PostgreSQL test skipped")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # unreachable server, bad credentials, ...
        admin.dispose()
        pytest.skip(f"PostgreSQL at {safe_url(base)} is unreachable: {exc}")
    try:
        yield make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


DB_KINDS = ["sqlite", "postgresql"]


def url_for(kind: str, tmp_path: Path) -> Iterator[str]:
    """For a ``db_url`` fixture parametrised over ``DB_KINDS``: a SQLite file or a PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
    else:
        yield from postgres_url()


def open_db(url: str) -> Iterator[Database]:
    database = init_db(url)
    yield database
    database.dispose()


def write_grid(path: Path, *, name: str = "noop", seeds: int | list[int] = 1, noop: dict[str, Any] | None = None,
               extra: str = "", gpus: int = 0) -> Path:
    options = f"stage_options:\n  noop: {noop}\n" if noop else ""
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        stages: [noop]
        seeds: {seeds}
        resources: {{gpus: {gpus}}}
        """) + options + textwrap.dedent(extra))
    return path


def runner_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "runner.cli", "--db", url, *args]


def start_worker(url: str, tmp_path: Path, name: str, *args: str, stale_after: float = 3.0) -> subprocess.Popen[bytes]:
    log = open(tmp_path / f"worker-{name}.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        runner_cmd(url, "work", "--cpu-slots", "1", "--poll", "0.2", "--heartbeat", "0.5",
                   "--stale-after", str(stale_after), "--runs-dir", str(tmp_path / "runs"), "--name", name, *args),
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )


def terminate(worker: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM to a worker (as Ctrl-C, ``kill`` or SLURM stop it), then its exit code."""
    worker.send_signal(signal.SIGTERM)
    return worker.wait(timeout=timeout)


@contextmanager
def reaped(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kills whichever of ``procs`` still runs when the block ends, so a failing test leaves no worker."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def count_runs(db: Database, *statuses: str) -> int:
    stmt = select(func.count()).select_from(Run)
    if statuses:
        stmt = stmt.where(Run.status.in_(statuses))
    return db.read(lambda s: s.scalar(stmt))


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.log")))


def run_in_threads(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> None:
    """Start one thread per argument tuple, all at once, and wait for every one."""
    threads = [threading.Thread(target=target, args=a) for a in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
