"""The measurement phase: timing runs' models alone on their host, stored as ``speed`` rows.

Two ways in, one protocol (``fastinst.deploy.bench``: batch 1, warm-up, ``repeats`` passes over the
first ``images`` val images, median FPS with its min/max):

- a run's ``bench`` stage: when the run's compute stages succeed, the job queues a measurement job
  (``measure_jobs``). Once nothing else runs on its host, a worker claims it together with every
  queued measurement of the same grid, data and settings (``runner.queue.claim_measurement``) and
  runs them as one ``python -m runner.measure JOB_ID [JOB_ID ...]`` (claim tokens comma-separated in
  ``FASTINST_RUN_TOKEN``); each job stores its row with ``source="stage"``;
- ``runner measure GRID``: this process (re)measures every succeeded run of a grid on the device
  asked, each as its own measurement job pinned to this host (workers here start no new compute job
  while it waits, so the host drains for it), ``source="measure"``: the runs sharing data and
  settings together (``interleave``, the default), or one after another.

The timing itself (interleaved groups, the stored rows) is ``runner.timing``; this module is the
``runner measure`` command and the worker's measurement child process.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fastinst.checkpoint import CheckpointError
from fastinst.data import DatasetError
from runner import queue
from runner.child import DEFAULT_RUNS_DIR, child_main
from runner.db import SUCCEEDED, Artifact, Database, GridRecord, Run, host_name
from runner.errors import RunnerInputError
from runner.results import grid_record, stored_reference_speed
from runner.stages import STAGES, BenchOptions
from runner.timing import job_context, measure_together, run_measure_jobs

HEARTBEAT_S = 5.0  # how often ``runner measure`` heartbeats its job while waiting and measuring
STALE_S = 120.0  # ``runner measure`` first fails other ``runner measure`` jobs that stopped heartbeating this long ago


# --------------------------------------------------------------------------- runner measure GRID


@dataclass
class Plan:
    """One run to measure: its weights (None: the config alone) and data, or why it is skipped."""

    run_id: int
    label: str
    options: BenchOptions
    weights: str | None = None
    data: dict[str, Any] | None = None
    note: str = ""
    skip: str = ""


def check_device(device: str) -> str:
    """``cpu`` or ``cuda[:N]`` that exists here, as a torch device string; else ``RunnerInputError``."""
    import torch

    if device == "cpu":
        return device
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise RunnerInputError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index or 0) >= count:
        raise RunnerInputError(f"--device {device}: no such device here ({count} CUDA device(s) visible)")
    return f"cuda:{int(index or 0)}"


def _plan(run: Run, checkpoint: str | None, data: dict[str, Any] | None) -> Plan:
    """How to measure ``run``: the newest checkpoint it recorded, else the weights its grid gave its
    bench/eval stage, else (a run that never trained) the config alone."""
    stage_options = run.stage_options or {}
    options = STAGES["bench"].parse_options(stage_options.get("bench", {}))
    plan = Plan(run.id, f"run {run.id} ({run.row_name}, seed {run.seed})", options, data=data or run.data)
    if checkpoint:
        plan.weights = checkpoint
    elif options.weights or stage_options.get("eval", {}).get("weights"):
        plan.weights = options.weights or stage_options["eval"]["weights"]
    elif "train" in run.stages.split(","):
        plan.skip = "it trained, but no checkpoint was recorded (its job stored none)"
    else:
        plan.note = "no weights: timed from the config alone (weight values do not change the speed)"
    if plan.weights and not Path(plan.weights).is_file():
        plan.skip = f"checkpoint {plan.weights} not found"
    if plan.data is None:
        plan.skip = plan.skip or "no val data to time on (the grid has no 'data'; pass --data)"
    return plan


def _plans(s: Session, grid: str, data: dict[str, Any] | None) -> tuple[GridRecord, list[Plan]]:
    record = grid_record(s, grid)
    runs = list(s.scalars(select(Run).where(Run.grid_id == record.id, Run.status == SUCCEEDED).order_by(Run.id)))
    newest = {a.run_id: a.path for a in s.scalars(  # the newest checkpoint each run recorded
        select(Artifact).where(Artifact.run_id.in_([r.id for r in runs]), Artifact.kind == "checkpoint")
        .order_by(Artifact.id))}
    return record, [_plan(run, newest.get(run.id), data) for run in runs]


@contextmanager
def _heartbeating(db: Database, claim: queue.Claim) -> Iterator[None]:
    stop = threading.Event()

    def _beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            queue.heartbeat(db, claim.members)

    thread = threading.Thread(target=_beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _wait_for_host(db: Database, jobs: Sequence[tuple[int, str]], host: str, poll: float,
                   say: Callable[[str], None]) -> queue.Claim:
    last: list[tuple[str, int]] = []
    while True:
        got = queue.start_owned(db, jobs, host)
        if isinstance(got, queue.Claim):
            return got
        busy = [(j["kind"], j["id"]) for j in got]
        if busy != last:
            names = ", ".join(f"{j['kind']} {j['id']} (worker {j['worker']})" for j in got)
            say(f"  waiting: host {host} is running {names}; no new job starts here until this measurement ran")
            last = busy
        time.sleep(poll)


def _measure_group(db: Database, group: Sequence[tuple[Plan, dict[str, Any]]], device: str, host: str, owner: str,
                   runs_dir: str | Path, poll: float, say: Callable[[str], None]) -> list[bool]:
    """Measure ``group``'s plans (with their job settings) together, each as this process's own job,
    once the host is free; returns whether each was measured (else it was skipped, with its reason)."""

    def _add(s: Session) -> list[tuple[int, str]]:
        jobs = [queue.add_measurement(s, s.get_one(Run, plan.run_id), settings, source="measure", owner=owner, host=host)
                for plan, settings in group]
        return [(job.id, job.claim_token or "") for job in jobs]

    jobs = db.write(_add)
    if len(group) > 1:
        say(f"runs {', '.join(str(plan.run_id) for plan, _ in group)}: interleaved, "
            f"{group[0][1]['repeats']} round(s), the order rotating each round")
    try:
        claim = _wait_for_host(db, jobs, host, poll, say)
        with _heartbeating(db, claim):
            results = measure_together([job_context(db, job_id, token, runs_dir, device, plan.data)
                                        for (job_id, token), (plan, _) in zip(jobs, group)])
    except (CheckpointError, DatasetError) as exc:
        results = [{"error": exc} for _ in jobs]
    except BaseException:
        for job_id, token in jobs:
            queue.fail(db, job_id, token, traceback.format_exc(), kind=queue.MEASURE)
        raise
    for (plan, _), (job_id, token), result in zip(group, jobs, results):
        if "error" in result:
            queue.fail(db, job_id, token, str(result["error"]), kind=queue.MEASURE)
            say(f"{plan.label}: skipped: {result['error']}")
            continue
        concurrent = f"; other runner jobs on the host: {result['concurrent']}" if result["concurrent"] else ""
        say(f"{plan.label}: {result['fps']:.2f} FPS (min {result['fps_min']:.2f}, max {result['fps_max']:.2f}), "
            f"speed row {result['speed_id']}{'; ' + plan.note if plan.note else ''}{concurrent}")
    return ["error" not in result for result in results]


def measure_grid(db: Database, grid: str, *, device: str | None = None, dtype: str | None = None,
                 backend: str | None = None, repeats: int = 3, images: int | None = None, warmup: int | None = None,
                 data: str | None = None, interleave: bool = True, runs_dir: str | Path = DEFAULT_RUNS_DIR,
                 poll: float = 2.0, say: Callable[[str], None] = print) -> dict[str, list[int]]:
    """(Re)measure every succeeded run of ``grid`` here (module docstring): with ``interleave``, the runs
    sharing data, images and warm-up together in ``repeats`` rounds; else one after another.

    Unset ``device``/``dtype``/``backend`` default to the grid's reference speed setting, unset
    ``images``/``warmup`` to each run's bench options. Returns ``{"measured": [...], "skipped": [...]}``
    (run ids); a run that cannot be measured (no checkpoint, no data, unreadable file) is skipped with
    its reason, and nothing stored is changed except the new rows and their jobs.
    """
    from fastinst.deploy.backends import BACKENDS
    from fastinst.engine.precision import DTYPES

    if dtype is not None and dtype not in DTYPES:
        raise RunnerInputError(f"--dtype {dtype!r}: choose from {list(DTYPES)}")
    if backend is not None and backend not in BACKENDS:
        raise RunnerInputError(f"--backend {backend!r}: choose from {list(BACKENDS)}")
    if repeats < 1:
        raise RunnerInputError(f"--repeats {repeats}: must be >= 1")
    data_spec = {"root": str(Path(data).resolve())} if data else None
    record, plans = db.read(lambda s: _plans(s, grid, data_spec))
    setting = stored_reference_speed(record)
    torch_device = check_device(device or setting.device)
    dtype, backend = dtype or setting.dtype, backend or setting.backend
    host, owner = host_name(), f"measure:{host_name()}:{os.getpid()}"
    queue.sweep_stale(db, STALE_S, owned_only=True)  # a killed ``runner measure`` would block its host
    say(f"grid {grid!r}: {len(plans)} succeeded run(s) to measure on {torch_device} {dtype} {backend}, "
        f"{repeats} {'round(s), interleaved' if interleave else 'repeat(s)'}, host {host}")
    done: dict[str, list[int]] = {"measured": [], "skipped": []}
    groups: dict[str, list[tuple[Plan, dict[str, Any]]]] = {}
    for plan in plans:
        if plan.skip:
            say(f"{plan.label}: skipped: {plan.skip}")
            done["skipped"].append(plan.run_id)
            continue
        settings = {"device_type": torch_device.split(":")[0], "dtype": dtype, "backend": backend,
                    "images": images or plan.options.images,
                    "warmup": plan.options.warmup if warmup is None else warmup, "repeats": repeats,
                    "weights": plan.weights}
        alike = [plan.data, settings["images"], settings["warmup"]] if interleave else plan.run_id
        groups.setdefault(json.dumps(alike, sort_keys=True), []).append((plan, settings))
    for group in groups.values():
        measured = _measure_group(db, group, torch_device, host, owner, runs_dir, poll, say)
        for (plan, _), ok in zip(group, measured):
            done["measured" if ok else "skipped"].append(plan.run_id)
    say(f"measured {len(done['measured'])}, skipped {len(done['skipped'])}")
    return done


# --------------------------------------------------------------------------- child process


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.measure JOB_ID [JOB_ID ...]``: measurement jobs a worker claimed together, timed
    interleaved; their claim tokens come comma-separated, in job order, in ``$FASTINST_RUN_TOKEN``."""
    return child_main(argv, "python -m runner.measure", "job_ids", "Run measurement jobs, interleaved (started by "
                      "a worker).", run_measure_jobs, many=True)


if __name__ == "__main__":
    sys.exit(main())
