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

**Interleaved** (several jobs timed together: ``measure_together``): the models are all built and
warmed up first, then timed in ``repeats`` rounds, one pass each per round, the order rotating by one
each round (``fastinst.deploy.bench.bench_interleaved``), so the machine's drift and position effects
fall on every run alike. Each job still stores its own row: FPS is the median over its rounds,
``extra["fps_repeats"]`` its per-round FPS in round order, and ``extra["interleave"] = {"group": hex
id shared by the group's rows, "runs": [run ids, in entry order], "position": [its place in each
round]}``, so rows of one group pair round by round and a per-round FPS ratio of two runs cancels the
drift. A job whose weights cannot be used is left out of the rounds (failed, or skipped, with the
reason); the others are timed without it. A job alone is timed as before, without ``interleave``.

Just before and just after the timed section, the runner jobs running on the host (other than the
group's own) are read back and stored in each row's ``concurrent`` list: empty by construction,
recorded so a reader can check.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fastinst.checkpoint import CheckpointError
from fastinst.config import config_from_dict
from fastinst.data import DatasetError
from runner import queue
from runner.child import DEFAULT_RUNS_DIR, child_main, failed_attempt, run_dir_for, speed_row
from runner.db import (
    SUCCEEDED,
    Artifact,
    Database,
    GridRecord,
    MeasureJob,
    Run,
    host_name,
    utcnow,
)
from runner.errors import RunnerInputError
from runner.results import reference_speed
from runner.stages import STAGES, BenchOptions, JobContext

HEARTBEAT_S = 5.0  # how often ``runner measure`` heartbeats its job while waiting and measuring
STALE_S = 120.0  # ``runner measure`` first fails other ``runner measure`` jobs that stopped heartbeating this long ago


@dataclass(frozen=True)
class MeasureTarget:
    """What a measurement job times and where its row goes: its claim, device and settings."""

    db: Database
    job_id: int
    token: str
    host: str
    source: str
    device: str  # "cpu" | "cuda:N"
    dtype: str
    backend: str
    images: int
    warmup: int
    repeats: int
    weights: str | None


def stage_settings(run: Run, opts: BenchOptions, weights: str | None) -> dict[str, Any]:
    """A run's ``bench`` stage as a measurement job's settings: the grid's reference speed setting
    (device type, dtype, backend) and the stage's options."""
    setting = reference_speed(run.grid)
    return {"device_type": setting.device, "dtype": setting.dtype, "backend": setting.backend,
            "images": opts.images, "warmup": opts.warmup, "repeats": opts.repeats, "weights": weights}


# --------------------------------------------------------------------------- timing jobs together


def _load_1min() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _host_jobs(targets: Sequence[MeasureTarget]) -> list[dict[str, Any]]:
    host, mine = targets[0].host, {(queue.MEASURE, t.job_id) for t in targets}
    return targets[0].db.read(lambda s: queue.host_jobs(s, host, exclude=mine))


def _target(ctx: JobContext) -> MeasureTarget:
    if ctx.measure is None:
        raise RuntimeError("the bench stage is exclusive: it runs as a measurement job (runner.measure), "
                           "not inside a run's job")
    return ctx.measure


def measure_together(ctxs: Sequence[JobContext]) -> list[dict[str, Any]]:
    """Time the models of measurement jobs ``ctxs`` (one host, setting and data spec) interleaved
    (module docstring) and store each job's ``speed`` row, all in one transaction. Per job, in order:
    ``{speed_id, fps, fps_min, fps_max, concurrent}``, or ``{"error": exc}`` when its weights could
    not be used (``CheckpointError``) or its claim was lost (``queue.LostClaim``): the caller records it."""
    from fastinst.deploy.bench import BenchEntry, bench_interleaved

    targets = [_target(ctx) for ctx in ctxs]
    first = targets[0]
    if len({(t.host, t.device, t.dtype, t.backend, t.images, t.warmup, t.repeats) for t in targets}) > 1:
        raise ValueError("measurement jobs timed together need one host and one setting")
    before, load_before = _host_jobs(targets), _load_1min()
    results = bench_interleaved([BenchEntry(ctx.cfg, t.weights) for ctx, t in zip(ctxs, targets)],
                                ctxs[0].data_spec(), images=first.images, device=first.device, dtype=first.dtype,
                                warmup=first.warmup, repeats=first.repeats, backend=first.backend,
                                skip=(CheckpointError,))
    after, load_after = _host_jobs(targets), _load_1min()
    concurrent = list({(j["kind"], j["id"]): j for j in [*before, *after]}.values())
    timed = [ctx.run_id for ctx, result in zip(ctxs, results) if "error" not in result]
    group = uuid.uuid4().hex

    def _store(s: Session) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ctx, target, result in zip(ctxs, targets, results):
            if "error" in result:
                out.append(result)
                continue
            try:
                job = queue.owned(s, queue.MEASURE, target.job_id, target.token)
            except queue.LostClaim as exc:
                out.append({"error": exc})
                continue
            row = speed_row(ctx.run_id, {**result, "concurrent": concurrent}, target.source)
            # The OS load average shows what the runner cannot see (other programs on the machine).
            row.extra = {**row.extra, "measure_job": target.job_id, "exclusive_host": target.host,
                         "load_1min": [load_before, load_after]}
            if len(timed) > 1:  # what pairs this row's rounds with the other rows of its group
                row.extra["interleave"] = {"group": group, "runs": timed, "position": result["positions"]}
            s.add(row)
            s.flush()
            job.speed_id, job.status, job.finished_at, job.claim_token = row.id, SUCCEEDED, utcnow(), None
            out.append({"speed_id": row.id, "fps": result["fps"], "fps_min": result["fps_min"],
                        "fps_max": result["fps_max"], "concurrent": concurrent})
        return out

    return first.db.write(_store)


def _context(s: Session, job_id: int) -> dict[str, Any]:
    job = s.get(MeasureJob, job_id)
    if job is None:
        raise SystemExit(f"runner.measure: no measurement job {job_id}")
    run = job.run
    return {"run_id": run.id, "grid": run.grid.name, "config": run.config, "data": run.data,
            "options": run.stage_options or {}, "attempt": job.attempts, "host": job.host, "source": job.source,
            "device_type": job.device_type, "dtype": job.dtype, "backend": job.backend, "images": job.images,
            "warmup": job.warmup, "repeats": job.repeats, "weights": job.weights}


def job_context(db: Database, job_id: int, token: str, runs_dir: str | Path, device: str,
                data: dict[str, Any] | None = None) -> JobContext:
    """The ``JobContext`` of measurement job ``job_id`` (``data`` replaces the run's data spec)."""
    info = db.read(lambda s: _context(s, job_id))
    target = MeasureTarget(db, job_id, token, info["host"], info["source"], device, info["dtype"], info["backend"],
                           info["images"], info["warmup"], info["repeats"], info["weights"])
    return JobContext(info["run_id"], info["attempt"], config_from_dict(info["config"]), data or info["data"],
                      info["options"], run_dir_for(runs_dir, info["grid"], info["run_id"]), lambda _record: None,
                      measure=target)


def run_measure_jobs(db: Database, jobs: Sequence[tuple[int, str]], runs_dir: str | Path = DEFAULT_RUNS_DIR) -> int:
    """A worker's measurement jobs ``(job id, claim token)``, timed together (``measure_together``);
    returns the exit code: 0 when each stored its row, else 1 (failed attempts recorded) or 3 (a claim lost)."""
    try:
        device = "cuda:0" if db.read(lambda s: s.get(MeasureJob, jobs[0][0])).device_type == "cuda" else "cpu"
        ctxs = [job_context(db, job_id, token, runs_dir, device) for job_id, token in jobs]
        for (job_id, _token), ctx in zip(jobs, ctxs):
            print(f"measurement {job_id} of run {ctx.run_id} attempt {ctx.attempt} on {device}", flush=True)
        results = measure_together(ctxs)
    except Exception as exc:
        return max([failed_attempt(db, exc, job_id, token, queue.MEASURE) for job_id, token in jobs])
    codes = [0]
    for (job_id, token), result in zip(jobs, results):
        if "error" in result:
            codes.append(failed_attempt(db, result["error"], job_id, token, queue.MEASURE))
        else:
            print(f"measurement {job_id}: {result}", flush=True)
    return max(codes)


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
    record = s.scalars(select(GridRecord).where(GridRecord.name == grid)).one_or_none()
    if record is None:
        known = list(s.scalars(select(GridRecord.name).order_by(GridRecord.name)))
        raise RunnerInputError(f"no grid named {grid!r} in this database (grids: {', '.join(known) or 'none'})")
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
        jobs = [queue.add_measurement(s, s.get(Run, plan.run_id), settings, source="measure", owner=owner, host=host)
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
    setting = reference_speed(record)
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
