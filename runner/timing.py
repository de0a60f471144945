"""Timing measurement jobs: one or a group, alone on their host, each stored as a ``speed`` row.

The measurement phase's core, shared by both ways in (``runner.measure``): a worker's claimed group
(``run_measure_jobs``, the ``python -m runner.measure`` child's body) and ``runner measure GRID``'s own
jobs. One protocol (``fastinst.deploy.bench``: batch 1, warm-up, ``repeats`` passes over the first
``images`` val images, median FPS with its min/max).

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

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from fastinst.checkpoint import CheckpointError
from fastinst.config import config_from_dict
from runner import queue
from runner.child import DEFAULT_RUNS_DIR, failed_attempt, run_dir_for, speed_row
from runner.db import SUCCEEDED, Database, MeasureJob, Run, utcnow
from runner.results import stored_reference_speed
from runner.stages import BenchOptions, JobContext


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
    setting = stored_reference_speed(run.grid)
    return {"device_type": setting.device, "dtype": setting.dtype, "backend": setting.backend,
            "images": opts.images, "warmup": opts.warmup, "repeats": opts.repeats, "weights": weights}


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
                job = queue.owned_measurement(s, target.job_id, target.token)
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
        device = "cuda:0" if db.read(lambda s: s.get_one(MeasureJob, jobs[0][0])).device_type == "cuda" else "cpu"
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
