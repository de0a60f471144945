"""Queue semantics on the results database: submit, claim, heartbeat, requeue, retry, cancel.

- ``submit`` enqueues one run per (row, seed). A run is identified by its ``run_key`` (exact
  config hash incl. seed, stages, stage options, data); a key that already succeeded, or is queued
  or running, is not queued again (``force`` adds a new generation of a succeeded run); a failed or
  cancelled one is requeued. A unique constraint on (run_key, generation) makes two concurrent
  submits of one grid queue each run once: the loser's transaction is retried and finds the rows.
- ``claim`` is atomic: ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, and on SQLite the
  claiming transaction starts with ``BEGIN IMMEDIATE`` (one writer at a time). Each claim gets a
  fresh token; a job writes its results only while its run is still ``running`` with that token,
  so a run requeued behind a stalled worker's back can never be finished twice.
- Workers ``heartbeat`` their runs; ``sweep_stale`` requeues runs whose worker stopped (or fails
  them once ``max_attempts`` is used up), keeping every attempt's error text.
- The measurement phase (``measure_jobs``) has the same claim/heartbeat/retry semantics, plus host
  exclusivity: ``claim`` takes no compute run on a host where a measurement runs (or a ``runner
  measure`` waits), and ``claim_measurement``/``start_owned`` take a measurement only while no other
  runner job runs on the host. Each check-and-claim is one transaction under the host's lock
  (SQLite: the ``BEGIN IMMEDIATE`` write lock; PostgreSQL: a transaction-scoped advisory lock keyed
  by the host), so two workers on one host cannot both pass the check.
- Measurements are claimed in groups: ``claim_measurement`` takes, with the next measurement, every
  other queued worker measurement of the same grid, data and settings (``GROUP_KEYS``), to be timed
  interleaved in one process (``runner.measure``). Each job of a group keeps its own claim token,
  heartbeat, attempts and result, so requeueing, failing and cancelling work per job as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fastinst.grid import Grid
from runner.db import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Database,
    GridRecord,
    GridRow,
    MeasureJob,
    QueuedJob,
    Run,
    WorkerRecord,
    in_batches,
    utcnow,
)
from runner.errors import RunnerInputError

MAX_ERROR_CHARS = 20000
SUBMIT_RETRIES = 10  # a submit that lost a race with a concurrent submit of the same grid is retried
RUN, MEASURE = "run", "measure"  # the two kinds of queued job
TABLES: dict[str, type[QueuedJob]] = {RUN: Run, MEASURE: MeasureJob}
# The settings measurement jobs must share to be timed together (besides their grid and data).
GROUP_KEYS = ("device_type", "dtype", "backend", "images", "warmup", "repeats")


class LostClaim(RuntimeError):
    """The job is no longer running under this claim (cancelled, or requeued as stale)."""


@dataclass
class SubmitResult:
    grid: str
    queued: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    active: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (f"grid {self.grid!r}: {len(self.queued)} queued, {len(self.requeued)} requeued, "
                f"{len(self.done)} already succeeded, {len(self.active)} already queued or running")


@dataclass
class Claim:
    """A claimed job: a run (``kind`` "run") or a measurement (``measure_id``) of run ``run_id``; a
    measurement's ``group`` holds the other measurements claimed with it, run by the same process."""

    run_id: int
    token: str
    grid: str
    gpus: int
    attempt: int
    kind: str = RUN
    measure_id: int | None = None
    group: tuple[Claim, ...] = ()

    @property
    def id(self) -> int:
        """The job's id in its own table (``TABLES[kind]``): the run's, or the measurement's."""
        return self.measure_id if self.kind == MEASURE and self.measure_id is not None else self.run_id

    @property
    def key(self) -> tuple[str, int]:
        """(kind, id): identifies the job among a worker's jobs (a run and a measurement may share an id)."""
        return (self.kind, self.id)

    @property
    def members(self) -> tuple[Claim, ...]:
        """This job and the ones claimed with it."""
        return (self, *self.group)

    def describe(self) -> str:
        if self.kind == RUN:
            return f"run {self.run_id}"
        if not self.group:
            return f"measurement {self.measure_id} (run {self.run_id})"
        return (f"measurements {', '.join(str(c.measure_id) for c in self.members)} "
                f"(runs {', '.join(str(c.run_id) for c in self.members)}, interleaved)")


def run_key(config_hash: str, seed: int, stages: list[str], stage_options: dict[str, Any],
            data: dict[str, Any] | None) -> str:
    blob = json.dumps([config_hash, seed, stages, stage_options, data], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def append_error(old: str | None, new: str) -> str:
    text = f"{old}\n\n{new}" if old else new
    return text[-MAX_ERROR_CHARS:]


# --------------------------------------------------------------------------- submit


def _upsert_grid(s: Session, grid: Grid, keep_rows: bool) -> GridRecord:
    record = s.scalars(select(GridRecord).where(GridRecord.name == grid.name)).one_or_none()
    if record is None:
        record = GridRecord(name=grid.name)
        s.add(record)
    record.path = str(grid.path) if grid.path else None
    record.spec = grid.spec
    record.axes = grid.axes
    record.seeds = grid.seeds
    record.stages = ",".join(grid.stages)
    record.reference = grid.reference
    s.flush()
    existing = {r.name: r for r in s.scalars(select(GridRow).where(GridRow.grid_id == record.id))}
    for position, row in enumerate(grid.rows):
        grid_row = existing.pop(row.name, None)
        if grid_row is None:
            grid_row = GridRow(grid_id=record.id, name=row.name)
            s.add(grid_row)
        grid_row.position = position
        grid_row.overrides = row.overrides
        grid_row.variant_hash = row.hash
    if not keep_rows:  # the grid file is the truth: drop rows it no longer has (their runs stay)
        for stale in existing.values():
            s.delete(stale)
    return record


def _submit_once(s: Session, grid: Grid, force: bool, priority: int, max_attempts: int,
                 keep_rows: bool) -> SubmitResult:
    record = _upsert_grid(s, grid, keep_rows)
    planned = []
    for row in grid.rows:
        for seed in row.seeds:
            cfg = row.config_for_seed(seed)
            key = run_key(cfg.hash(), seed, row.stages, grid.stage_options, grid.data)
            planned.append((row, seed, cfg, key))
    latest: dict[str, Run] = {}
    keys = [p[3] for p in planned]
    for batch in in_batches(keys):
        for run in s.scalars(select(Run).where(Run.run_key.in_(batch))):
            if run.run_key not in latest or run.generation > latest[run.run_key].generation:
                latest[run.run_key] = run
    result = SubmitResult(grid.name)
    new_runs = []
    for row, seed, cfg, key in planned:
        prev = latest.get(key)
        if prev is not None and prev in new_runs:
            continue  # a row with the same config as an earlier row of this grid: they share their runs
        if prev is not None and prev.status in (QUEUED, RUNNING):
            result.active.append(prev.id)
            continue
        if prev is not None and prev.status == SUCCEEDED and not force:
            result.done.append(prev.id)
            continue
        if prev is not None and prev.status in (FAILED, CANCELLED):
            prev.status, prev.attempts, prev.priority = QUEUED, 0, priority
            prev.max_attempts = max_attempts
            prev.worker = prev.claim_token = None
            result.requeued.append(prev.id)
            continue
        run = Run(
            grid_id=record.id, row_name=row.name, overrides=row.overrides, config=cfg.to_dict(),
            config_hash=cfg.hash(), variant_hash=row.hash, seed=seed, stages=",".join(row.stages),
            stage_options=grid.stage_options, data=grid.data, gpus=row.resources["gpus"], run_key=key,
            generation=prev.generation + 1 if prev is not None else 0, status=QUEUED, priority=priority,
            attempts=0, max_attempts=max_attempts,
        )
        s.add(run)
        new_runs.append(run)
        latest[key] = run
    s.flush()
    result.queued = [r.id for r in new_runs]
    return result


def submit(db: Database, grid: Grid, *, force: bool = False, priority: int | None = None,
           max_attempts: int | None = None, keep_rows: bool = False) -> SubmitResult:
    """Queue one run per (row, seed) of ``grid`` (see the module docstring for what is skipped).

    ``keep_rows`` keeps grid rows from earlier submits that ``grid`` lacks (a search adds a row
    per trial); by default the grid's rows become exactly ``grid.rows``.
    """
    prio = grid.priority if priority is None else priority
    attempts = grid.max_attempts if max_attempts is None else max_attempts
    for attempt in range(SUBMIT_RETRIES):
        try:
            return db.write(lambda s: _submit_once(s, grid, force, prio, attempts, keep_rows))
        except IntegrityError:
            # A concurrent submit inserted the same grid or runs first: retry, now seeing them.
            if attempt == SUBMIT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- host exclusivity


def _lock_host(s: Session, host: str) -> None:
    """Serialise check-and-claim per host. SQLite writers already hold the database's write lock
    (``BEGIN IMMEDIATE``); PostgreSQL takes a transaction-scoped advisory lock keyed by the host."""
    if s.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"fastinst-host:{host}".encode()).digest()[:8], "big", signed=True)
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def host_jobs(s: Session, host: str, exclude: Collection[tuple[str, int]] = ()) -> list[dict[str, Any]]:
    """The runner jobs running on ``host`` (runs and measurements), except those in ``exclude`` (kind, id)."""
    out = []
    for kind, table in TABLES.items():
        for job in s.scalars(select(table).where(table.host == host, table.status == RUNNING).order_by(table.id)):
            if (kind, job.id) in exclude:
                continue
            run_id = job.run_id if isinstance(job, MeasureJob) else job.id
            out.append({"kind": kind, "id": job.id, "run_id": run_id, "worker": job.worker,
                        "since": f"{job.started_at:%Y-%m-%d %H:%M:%S}" if job.started_at else None})
    return out


def _measurement_waiting(s: Session, host: str) -> bool:
    """A measurement runs on ``host``, or a ``runner measure`` there waits for the host to drain."""
    stmt = select(func.count()).select_from(MeasureJob).where(MeasureJob.host == host, or_(
        MeasureJob.status == RUNNING, and_(MeasureJob.status == QUEUED, MeasureJob.owner.is_not(None))))
    return s.scalars(stmt).one() > 0


def _start(job: QueuedJob, worker: str, host: str | None) -> None:
    now = utcnow()
    job.status, job.worker, job.host = RUNNING, worker, host
    job.claim_token = uuid.uuid4().hex
    job.attempts += 1
    job.started_at = job.heartbeat_at = now
    job.finished_at = None


def _measure_claim(jobs: Sequence[MeasureJob]) -> Claim:
    """The claim of started measurement jobs: the first one's, with the others as its group."""
    first, *rest = (Claim(job.run_id, job.claim_token or "", job.run.grid.name, int(job.device_type == "cuda"),
                          job.attempts, MEASURE, job.id) for job in jobs)
    return dataclasses.replace(first, group=tuple(rest))


# --------------------------------------------------------------------------- claim / heartbeat


def claim(db: Database, worker: str, *, max_gpus: int, device: str, host: str | None = None) -> Claim | None:
    """Atomically take the highest-priority queued run needing at most ``max_gpus`` GPUs; with a
    ``host``, only while no measurement runs (or waits to run) there."""

    def _claim(s: Session) -> Claim | None:
        if host is not None:
            _lock_host(s, host)
            if _measurement_waiting(s, host):
                return None
        stmt = (select(Run).where(Run.status == QUEUED, Run.gpus <= max_gpus)
                .order_by(Run.priority.desc(), Run.id).limit(1).with_for_update(skip_locked=True))
        run = s.scalars(stmt).first()
        if run is None:
            return None
        _start(run, worker, host)
        run.device = device
        return Claim(run.id, run.claim_token or "", run.grid.name, run.gpus, run.attempts)

    return db.write(_claim)


def claim_measurement(db: Database, worker: str, *, device_type: str, host: str) -> Claim | None:
    """Atomically take the next queued measurement for ``device_type`` and, as its group, every other
    queued worker measurement of the same grid, data and ``GROUP_KEYS`` settings; only while no other
    runner job runs on ``host`` (and no ``runner measure`` waits there)."""

    def _claim(s: Session) -> Claim | None:
        _lock_host(s, host)
        if host_jobs(s, host) or _measurement_waiting(s, host):
            return None
        queued = and_(MeasureJob.status == QUEUED, MeasureJob.owner.is_(None))
        stmt = (select(MeasureJob).where(queued, MeasureJob.device_type == device_type)
                .order_by(MeasureJob.priority.desc(), MeasureJob.id).limit(1).with_for_update(skip_locked=True))
        first = s.scalars(stmt).first()
        if first is None:
            return None
        alike = (select(MeasureJob).join(Run, MeasureJob.run_id == Run.id)
                 .where(queued, MeasureJob.id != first.id, Run.grid_id == first.run.grid_id,
                        *(getattr(MeasureJob, key) == getattr(first, key) for key in GROUP_KEYS))
                 .order_by(MeasureJob.id).with_for_update(skip_locked=True, of=MeasureJob))
        jobs = [first, *(job for job in s.scalars(alike) if job.run.data == first.run.data)]
        for job in jobs:
            _start(job, worker, host)
        return _measure_claim(jobs)

    return db.write(_claim)


def add_measurement(s: Session, run: Run, settings: dict[str, Any], *, source: str, owner: str | None = None,
                    host: str | None = None) -> MeasureJob:
    """Queue a measurement of ``run`` with ``settings`` (device_type, dtype, backend, images, warmup,
    repeats, weights); ``owner``/``host``: a ``runner measure`` process's own job on its host."""
    job = MeasureJob(run_id=run.id, source=source, owner=owner, host=host, status=QUEUED, priority=run.priority,
                     attempts=0, max_attempts=run.max_attempts, **settings)
    if owner is not None:
        job.worker, job.claim_token, job.heartbeat_at = owner, uuid.uuid4().hex, utcnow()
    s.add(job)
    s.flush()
    return job


def start_owned(db: Database, jobs: Sequence[tuple[int, str]], host: str) -> Claim | list[dict[str, Any]]:
    """Start the ``runner measure`` jobs ``jobs`` (id, token) together if nothing else runs on ``host``:
    their claim (the first job's, the others as its group), or (while waiting, heartbeating them) the
    runner jobs still running there."""

    def _start_owned(s: Session) -> Claim | list[dict[str, Any]]:
        _lock_host(s, host)
        mine = [owned_measurement(s, job_id, token, statuses=(QUEUED,)) for job_id, token in jobs]
        busy = host_jobs(s, host)  # ours are queued, so never among them
        if busy:
            for job in mine:
                job.heartbeat_at = utcnow()
            return busy
        for job, (_job_id, token) in zip(mine, jobs):
            _start(job, job.owner or "runner measure", host)
            job.claim_token = token
        return _measure_claim(mine)

    return db.write(_start_owned)


def owned(s: Session, kind: str, job_id: int, token: str, statuses: tuple[str, ...] = (RUNNING,)) -> QueuedJob:
    """The job, locked for update, if it is still in ``statuses`` under ``token``; else ``LostClaim``."""
    table = TABLES[kind]
    job = s.scalars(select(table).where(table.id == job_id).with_for_update()).one_or_none()
    if job is None or job.status not in statuses or job.claim_token != token:
        state = "deleted" if job is None else f"{job.status}, claim {'kept' if job.claim_token == token else 'lost'}"
        raise LostClaim(f"{kind} {job_id} is no longer ours ({state})")
    return job


def owned_run(s: Session, run_id: int, token: str) -> Run:
    """The run, locked for update, if it is still running under ``token``; else ``LostClaim``."""
    run = owned(s, RUN, run_id, token)
    assert isinstance(run, Run)
    return run


def owned_measurement(s: Session, job_id: int, token: str, statuses: tuple[str, ...] = (RUNNING,)) -> MeasureJob:
    """The measurement job, locked for update, if it is still in ``statuses`` under ``token``; else ``LostClaim``."""
    job = owned(s, MEASURE, job_id, token, statuses)
    assert isinstance(job, MeasureJob)
    return job


def heartbeat(db: Database, claims: Iterable[Claim]) -> set[tuple[str, int]]:
    """Refresh the heartbeat of our jobs; return the keys of those whose job should be stopped:
    cancelled, deleted, or running under someone else's claim. (A job that already finished or
    failed is not reported: it is exiting on its own.)"""
    by_kind: dict[str, dict[int, str]] = {}
    for c in claims:
        by_kind.setdefault(c.kind, {})[c.id] = c.token
    if not by_kind:
        return set()

    def _beat(s: Session) -> set[tuple[str, int]]:
        now = utcnow()
        lost = {(kind, i) for kind, tokens in by_kind.items() for i in tokens}
        for kind, tokens in by_kind.items():
            table = TABLES[kind]
            for job in s.scalars(select(table).where(table.id.in_(list(tokens)))):
                ours = job.claim_token == tokens[job.id]
                if ours and job.status in (RUNNING, QUEUED):
                    job.heartbeat_at = now
                if job.status != CANCELLED and (job.status not in (RUNNING, QUEUED) or ours):
                    lost.discard((kind, job.id))
        return lost

    return db.write(_beat)


def _requeue_or_fail(job: QueuedJob, message: str, count_attempt: bool = True) -> str:
    if not count_attempt:
        job.attempts = max(0, job.attempts - 1)
    job.error = append_error(job.error, message)
    job.worker = job.claim_token = None
    # A ``runner measure`` job belongs to its process: without it, it is over.
    if job.attempts >= job.max_attempts or (isinstance(job, MeasureJob) and job.owner is not None):
        job.status = FAILED
        job.finished_at = utcnow()
    else:
        job.status = QUEUED
    return job.status


def _stale(table: type[QueuedJob], cutoff: datetime, owned_only: bool) -> ColumnElement[bool]:
    running_stale = and_(table.status == RUNNING, table.heartbeat_at < cutoff)
    if table is not MeasureJob:
        return running_stale
    # A waiting ``runner measure`` heartbeats its queued job too.
    owner = MeasureJob.owner.is_not(None)
    stale = or_(running_stale, and_(MeasureJob.status == QUEUED, owner, MeasureJob.heartbeat_at < cutoff))
    return and_(stale, owner) if owned_only else stale


def _swept_tables(owned_only: bool) -> dict[str, type[QueuedJob]]:
    return {MEASURE: MeasureJob} if owned_only else TABLES


def sweep_stale(db: Database, stale_after: float, owned_only: bool = False) -> list[tuple[str, int]]:
    """Requeue (or fail, when out of attempts) jobs whose heartbeat is older than ``stale_after`` s;
    ``owned_only``: only ``runner measure`` jobs (whose heartbeat period is fixed, unlike workers')."""

    def _sweep(s: Session) -> list[tuple[str, int]]:
        cutoff = utcnow() - timedelta(seconds=stale_after)
        swept = []
        for kind, table in _swept_tables(owned_only).items():
            stale = _stale(table, cutoff, owned_only)
            for job in s.scalars(select(table).where(stale).with_for_update(skip_locked=True)):
                _requeue_or_fail(job, f"attempt {job.attempts}: worker {job.worker} stopped heartbeating "
                                      f"(last heartbeat {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)")
                swept.append((kind, job.id))
        return swept

    def _any_stale(s: Session) -> bool:
        cutoff = utcnow() - timedelta(seconds=stale_after)
        return any(s.scalars(select(func.count()).select_from(table).where(_stale(table, cutoff, owned_only))).one() > 0
                   for table in _swept_tables(owned_only).values())

    # Look before taking the write lock: sweeps run often and almost always find nothing.
    return db.write(_sweep) if db.read(_any_stale) else []


def fail(db: Database, job_id: int, token: str, error: str, *, count_attempt: bool = True,
         kind: str = RUN) -> str | None:
    """Record a failed attempt of a job we own: requeued while attempts remain, else failed.

    Returns the new status, or None when the job was no longer ours.
    """

    def _fail(s: Session) -> str | None:
        try:
            job = owned(s, kind, job_id, token, statuses=(RUNNING, QUEUED))
        except LostClaim:
            return None
        prefix = f"attempt {job.attempts}" if count_attempt else f"attempt {job.attempts} (not counted)"
        return _requeue_or_fail(job, f"{prefix}: {error}", count_attempt)

    return db.write(_fail)


def pending(db: Database, max_gpus: int, device_type: str | None = None) -> int:
    """How many jobs this worker could still get: queued or running runs (a running one may be
    requeued), and with ``device_type`` the measurements it could take."""

    def _count(s: Session) -> int:
        runs = s.scalars(select(func.count()).select_from(Run).where(
            Run.status.in_((QUEUED, RUNNING)), Run.gpus <= max_gpus)).one()
        if device_type is None:
            return runs
        return runs + s.scalars(select(func.count()).select_from(MeasureJob).where(
            MeasureJob.status.in_((QUEUED, RUNNING)), MeasureJob.owner.is_(None),
            MeasureJob.device_type == device_type)).one()

    return db.read(_count)


def register_worker(db: Database, name: str, *, role: str, host: str, pid: int, slots: str,
                    slurm_job: str | None) -> None:
    """Record an executor as started (a name used before, e.g. a reused pid, starts afresh)."""
    now = utcnow()
    db.write(lambda s: s.merge(WorkerRecord(name=name, role=role, host=host, pid=pid, slots=slots,
                                            slurm_job=slurm_job, started_at=now, seen_at=now, stopped_at=None)))


def worker_seen(db: Database, name: str, *, stopped: bool = False) -> None:
    """The executor is alive (its loop turned), or, with ``stopped``, has exited."""

    def _touch(s: Session) -> None:
        worker = s.get(WorkerRecord, name)
        if worker is not None:
            worker.seen_at = utcnow()
            if stopped:
                worker.stopped_at = worker.seen_at

    db.write(_touch)


def live_workers(db: Database, stale_after: float) -> list[WorkerRecord]:
    """Executors not stopped and seen within ``stale_after`` seconds, by host and name."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    stmt = (select(WorkerRecord).where(WorkerRecord.stopped_at.is_(None), WorkerRecord.seen_at >= cutoff)
            .order_by(WorkerRecord.host, WorkerRecord.name))
    return db.read(lambda s: list(s.scalars(stmt)))


def measurement_counts(db: Database, grid: str | None = None) -> list[dict[str, Any]]:
    """Pending and running measurements per (grid, status, device type, dtype, backend, host)."""

    def _query(s: Session) -> list[dict[str, Any]]:
        cols = (GridRecord.name, MeasureJob.status, MeasureJob.device_type, MeasureJob.dtype, MeasureJob.backend,
                MeasureJob.host)
        stmt = (select(*cols, func.count()).join(Run, MeasureJob.run_id == Run.id)
                .join(GridRecord, Run.grid_id == GridRecord.id)
                .where(MeasureJob.status.in_((QUEUED, RUNNING))).group_by(*cols).order_by(GridRecord.name))
        if grid:
            stmt = stmt.where(GridRecord.name == grid)
        keys = ("grid", "status", "device", "dtype", "backend", "host", "n")
        return [dict(zip(keys, row)) for row in s.execute(stmt)]

    return db.read(_query)


# --------------------------------------------------------------------------- cancel / retry


def _select_runs(s: Session, run_ids: list[int] | None, grid: str | None, statuses: tuple[str, ...]) -> list[Run]:
    stmt = select(Run).where(Run.status.in_(statuses))
    if run_ids:
        stmt = stmt.where(Run.id.in_(run_ids))
    if grid:
        stmt = stmt.join(GridRecord, Run.grid_id == GridRecord.id).where(GridRecord.name == grid)
    return list(s.scalars(stmt.with_for_update()))


def cancel(db: Database, *, run_ids: list[int] | None = None, grid: str | None = None) -> list[int]:
    """Cancel queued and running runs and their pending measurements (a worker stops a cancelled
    job at its next heartbeat). Returns the cancelled runs' ids."""
    if not run_ids and not grid:
        raise RunnerInputError("cancel needs run ids or a grid name")

    def _cancel(s: Session) -> list[int]:
        runs = _select_runs(s, run_ids, grid, (QUEUED, RUNNING))
        of_grid = select(Run.id).join(GridRecord, Run.grid_id == GridRecord.id).where(GridRecord.name == grid)
        stmt = select(MeasureJob).where(MeasureJob.status.in_((QUEUED, RUNNING)))
        if run_ids:
            stmt = stmt.where(MeasureJob.run_id.in_(run_ids))
        if grid:
            stmt = stmt.where(MeasureJob.run_id.in_(of_grid))
        for job in [*runs, *s.scalars(stmt.with_for_update())]:
            job.status, job.claim_token, job.finished_at = CANCELLED, None, utcnow()
        return [r.id for r in runs]

    return db.write(_cancel)


def retry(db: Database, *, run_ids: list[int] | None = None, grid: str | None = None,
          priority: int | None = None) -> list[int]:
    """Requeue failed and cancelled runs with a fresh attempt budget (their error text is kept)."""
    if not run_ids and not grid:
        raise RunnerInputError("retry needs run ids or a grid name")

    def _retry(s: Session) -> list[int]:
        runs = _select_runs(s, run_ids, grid, (FAILED, CANCELLED))
        for run in runs:
            run.status, run.attempts, run.worker, run.finished_at = QUEUED, 0, None, None
            if priority is not None:
                run.priority = priority
        return [r.id for r in runs]

    return db.write(_retry)
