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
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
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
    Run,
    utcnow,
)

MAX_ERROR_CHARS = 20000


class LostClaim(RuntimeError):
    """The run is no longer running under this claim (cancelled, or requeued as stale)."""


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
    run_id: int
    token: str
    grid: str
    gpus: int
    attempt: int


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
    for i in range(0, len(keys), 500):
        for run in s.scalars(select(Run).where(Run.run_key.in_(keys[i:i + 500]))):
            if run.run_key not in latest or run.generation > latest[run.run_key].generation:
                latest[run.run_key] = run
    result = SubmitResult(grid.name)
    new_runs = []
    for row, seed, cfg, key in planned:
        prev = latest.get(key)
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
    for attempt in range(10):
        try:
            return db.write(lambda s: _submit_once(s, grid, force, prio, attempts, keep_rows))
        except IntegrityError:
            # A concurrent submit inserted the same grid or runs first: retry, now seeing them.
            if attempt == 9:
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- claim / heartbeat


def claim(db: Database, worker: str, *, max_gpus: int, device: str) -> Claim | None:
    """Atomically take the highest-priority queued run needing at most ``max_gpus`` GPUs."""

    def _claim(s: Session) -> Claim | None:
        stmt = (select(Run).where(Run.status == QUEUED, Run.gpus <= max_gpus)
                .order_by(Run.priority.desc(), Run.id).limit(1).with_for_update(skip_locked=True))
        run = s.scalars(stmt).first()
        if run is None:
            return None
        now = utcnow()
        run.status, run.worker, run.device = RUNNING, worker, device
        run.claim_token = uuid.uuid4().hex
        run.attempts += 1
        run.started_at = run.heartbeat_at = now
        run.finished_at = None
        return Claim(run.id, run.claim_token, run.grid.name, run.gpus, run.attempts)

    return db.write(_claim)


def owned_run(s: Session, run_id: int, token: str) -> Run:
    """The run, locked for update, if it is still running under ``token``; else ``LostClaim``."""
    run = s.scalars(select(Run).where(Run.id == run_id).with_for_update()).one_or_none()
    if run is None or run.status != RUNNING or run.claim_token != token:
        state = "deleted" if run is None else f"{run.status}, claim {'kept' if run.claim_token == token else 'lost'}"
        raise LostClaim(f"run {run_id} is no longer ours ({state})")
    return run


def heartbeat(db: Database, claims: Iterable[tuple[int, str]]) -> set[int]:
    """Refresh the heartbeat of our running runs; return the ids whose job should be stopped:
    cancelled, deleted, or running under someone else's claim. (A run our job already finished
    or failed is not reported: the job is exiting on its own.)"""
    tokens = dict(claims)
    if not tokens:
        return set()

    def _beat(s: Session) -> set[int]:
        now = utcnow()
        lost = set(tokens)
        for run in s.scalars(select(Run).where(Run.id.in_(list(tokens)))):
            if run.status == RUNNING and run.claim_token == tokens[run.id]:
                run.heartbeat_at = now
            if run.status != CANCELLED and (run.status != RUNNING or run.claim_token == tokens[run.id]):
                lost.discard(run.id)
        return lost

    return db.write(_beat)


def _requeue_or_fail(run: Run, message: str, count_attempt: bool = True) -> str:
    if not count_attempt:
        run.attempts = max(0, run.attempts - 1)
    run.error = append_error(run.error, message)
    run.worker = run.claim_token = None
    if run.attempts >= run.max_attempts:
        run.status = FAILED
        run.finished_at = utcnow()
    else:
        run.status = QUEUED
    return run.status


def sweep_stale(db: Database, stale_after: float) -> list[int]:
    """Requeue (or fail, when out of attempts) running runs whose heartbeat is older than ``stale_after`` s."""

    def _sweep(s: Session) -> list[int]:
        cutoff = utcnow() - timedelta(seconds=stale_after)
        stale = list(s.scalars(select(Run).where(Run.status == RUNNING, Run.heartbeat_at < cutoff)
                               .with_for_update(skip_locked=True)))
        for run in stale:
            _requeue_or_fail(run, f"attempt {run.attempts}: worker {run.worker} stopped heartbeating "
                                  f"(last heartbeat {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)")
        return [r.id for r in stale]

    def _any_stale(s: Session) -> bool:
        cutoff = utcnow() - timedelta(seconds=stale_after)
        return s.scalar(select(func.count()).select_from(Run)
                        .where(Run.status == RUNNING, Run.heartbeat_at < cutoff)) > 0

    # Look before taking the write lock: sweeps run often and almost always find nothing.
    return db.write(_sweep) if db.read(_any_stale) else []


def fail(db: Database, run_id: int, token: str, error: str, *, count_attempt: bool = True) -> str | None:
    """Record a failed attempt of a run we own: requeued while attempts remain, else failed.

    Returns the new status, or None when the run was no longer ours.
    """

    def _fail(s: Session) -> str | None:
        try:
            run = owned_run(s, run_id, token)
        except LostClaim:
            return None
        prefix = f"attempt {run.attempts}" if count_attempt else f"attempt {run.attempts} (not counted)"
        return _requeue_or_fail(run, f"{prefix}: {error}", count_attempt)

    return db.write(_fail)


def pending(db: Database, max_gpus: int) -> int:
    """How many runs this worker could still get: queued or running (a running one may be requeued)."""
    return db.read(lambda s: s.scalar(select(func.count()).select_from(Run).where(
        Run.status.in_((QUEUED, RUNNING)), Run.gpus <= max_gpus)))


# --------------------------------------------------------------------------- cancel / retry


def _select_runs(s: Session, run_ids: list[int] | None, grid: str | None, statuses: tuple[str, ...]) -> list[Run]:
    stmt = select(Run).where(Run.status.in_(statuses))
    if run_ids:
        stmt = stmt.where(Run.id.in_(run_ids))
    if grid:
        stmt = stmt.join(GridRecord, Run.grid_id == GridRecord.id).where(GridRecord.name == grid)
    return list(s.scalars(stmt.with_for_update()))


def cancel(db: Database, *, run_ids: list[int] | None = None, grid: str | None = None) -> list[int]:
    """Cancel queued and running runs (a worker stops a cancelled run at its next heartbeat)."""
    if not run_ids and not grid:
        raise ValueError("cancel needs run ids or a grid name")

    def _cancel(s: Session) -> list[int]:
        runs = _select_runs(s, run_ids, grid, (QUEUED, RUNNING))
        for run in runs:
            run.status, run.claim_token, run.finished_at = CANCELLED, None, utcnow()
        return [r.id for r in runs]

    return db.write(_cancel)


def retry(db: Database, *, run_ids: list[int] | None = None, grid: str | None = None,
          priority: int | None = None) -> list[int]:
    """Requeue failed and cancelled runs with a fresh attempt budget (their error text is kept)."""
    if not run_ids and not grid:
        raise ValueError("retry needs run ids or a grid name")

    def _retry(s: Session) -> list[int]:
        runs = _select_runs(s, run_ids, grid, (FAILED, CANCELLED))
        for run in runs:
            run.status, run.attempts, run.worker, run.finished_at = QUEUED, 0, None, None
            if priority is not None:
                run.priority = priority
        return [r.id for r in runs]

    return db.write(_retry)
