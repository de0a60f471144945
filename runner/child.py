"""What a worker's child processes share (``runner.job`` for a run, ``runner.measure`` for measurement
jobs): the runs folder layout, the ``speed`` row of a timing result, a failed attempt's exit code, and
the command-line entry that claims ids by token and dies with its worker. Both job kinds import it; it
imports neither.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner import queue
from runner.db import REPO_ROOT, Database, SpeedMeasurement, resolve_url
from runner.errors import RunnerInputError

DEFAULT_RUNS_DIR = REPO_ROOT / "runs"


def run_dir_for(runs_dir: str | Path, grid: str, run_id: int) -> Path:
    """The folder of run ``run_id`` of grid ``grid`` under ``runs_dir``."""
    return Path(runs_dir) / grid / str(run_id)


def speed_row(run_id: int, result: dict[str, Any], source: str) -> SpeedMeasurement:
    """Map one ``fastinst.deploy.bench.bench`` result onto a ``speed`` row (``source``: "stage" | "measure")."""
    latency = {k: float(result[f"{k}_ms"]) for k in ("mean", "median", "p90", "p99") if f"{k}_ms" in result}
    packages = {k: result[k] for k in ("torch", "torchvision") if k in result}
    extra = {k: result[k] for k in ("fps_repeats", "test_size", "weights") if k in result}
    return SpeedMeasurement(
        run_id=run_id, device_type=str(result["device_type"]), device=str(result["device"]),
        dtype=str(result["dtype"]), backend=str(result.get("backend", "eager")), fps=float(result["fps"]),
        fps_min=float(result["fps_min"]), fps_max=float(result["fps_max"]), latency_ms=latency,
        repeats=int(result["repeats"]), images=int(result["num_images"]), warmup=int(result["warmup"]),
        threads=int(result["threads"]), host=str(result["host"]), packages=packages,
        concurrent=list(result.get("concurrent", [])), source=source, extra=json.loads(json.dumps(extra, default=str)),
    )


def failed_attempt(db: Database, exc: Exception, job_id: int, token: str, kind: str, record: bool = True) -> int:
    """A job's exit code after ``exc``: 3 when its claim was lost (someone else owns the job now), else 1
    after recording the failed attempt (requeued or failed). The project's input errors (a broken
    checkpoint, config or dataset) are stored as their one-line message; anything else with its traceback."""
    if isinstance(exc, queue.LostClaim):
        print(f"stopping: {exc}", flush=True)
        return 3
    from fastinst.checkpoint import CheckpointError
    from fastinst.config import ConfigError
    from fastinst.data import DatasetError

    user_error = isinstance(exc, (CheckpointError, ConfigError, DatasetError, RunnerInputError))
    error = f"{type(exc).__name__}: {exc}" if user_error else traceback.format_exc()
    print(error, file=sys.stderr, flush=True)
    if record:
        print(f"{kind} {job_id}: attempt failed, now {queue.fail(db, job_id, token, error, kind=kind)}", flush=True)
    return 1


def die_with_parent(parent_pid: int | None) -> None:
    """On Linux, get SIGKILL when the worker dies, so an orphaned job never keeps running."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


def child_main(argv: list[str] | None, prog: str, id_name: str, description: str,
               body: Callable[[Database, list[tuple[int, str]], str], int], many: bool = False) -> int:
    """A worker's child process (``runner.job``, ``runner.measure``): ``body(db, [(id, token), ...],
    runs_dir)`` with the claim tokens from ``$FASTINST_RUN_TOKEN`` (comma-separated in id order; ``many``:
    several ids), dying with the worker that started it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(id_name, type=int, nargs="+" if many else None)
    parser.add_argument("--db", help="database URL (default: $FASTINST_DB, then sqlite:///<repo>/results.db)")
    parser.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR))
    parser.add_argument("--token", default=os.environ.get("FASTINST_RUN_TOKEN"),
                        help="claim token(s), comma-separated in id order (default: $FASTINST_RUN_TOKEN)")
    args = parser.parse_args(argv)
    parent = os.environ.get("FASTINST_WORKER_PID")
    die_with_parent(int(parent) if parent else None)
    ids = getattr(args, id_name) if many else [getattr(args, id_name)]
    tokens = args.token.split(",") if args.token else []
    if len(tokens) != len(ids):
        parser.error(f"{len(ids)} id(s) need as many claim tokens (--token or $FASTINST_RUN_TOKEN)")
    db = Database(resolve_url(args.db))
    try:
        return body(db, list(zip(ids, tokens)), args.runs_dir)
    finally:
        db.dispose()
