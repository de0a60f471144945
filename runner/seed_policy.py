"""Seeds where a comparison is undecided: a grid's ``seed_policy`` (``fastinst.grid.SeedPolicy``).

Every row starts with the grid's seeds (``min``). Once every run of every row has succeeded (a *step*
waits for the seeds it added), each row is compared with the baseline (``runner.comparison``) on the
policy's metric and level; each row still ``undecided`` and below ``max`` seeds gets one more seed, and
so does the baseline (its runs are in every comparison) while below ``max``. The next seed is the
smallest integer above every seed the grid uses. Added seeds are stored in ``added_seeds`` (step, why,
the run queued) and the runs are queued like the grid's own; ``runner status`` lists them. The policy
stops when every comparison is decided or every undecided row (and the baseline) has ``max`` seeds.

``apply_seed_policy`` is called by a run's job after it stored its results (so the last run of a step
starts the next); concurrent calls add a seed once (the unique (grid, row, seed) constraint).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TypedDict

import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fastinst.config import config_from_dict
from fastinst.grid import SeedPolicy, stored_seed_policy
from runner.db import SUCCEEDED, AddedSeed, Database, GridRecord, Run
from runner.queue import run_key
from runner.results import grid_record


class AddedSeedEntry(TypedDict):
    """One seed the policy added: its step, row, seed, the run it queued (None once deleted) and why."""

    step: int
    row: str
    seed: int
    run_id: int | None
    reason: str


@dataclass(frozen=True)
class PolicyState:
    """Where a grid's seed policy stands: the policy, per row its seed count, what it added, and why it
    waits (empty: nothing to wait for)."""

    policy: SeedPolicy | None
    seeds: dict[str, int]
    added: list[AddedSeedEntry]
    waiting: str = ""


def _policy(record: GridRecord) -> SeedPolicy | None:
    return stored_seed_policy(record.spec or {}, list(record.seeds), record.reference, record.stages.split(","))


def _runs_by_seed(s: Session, record: GridRecord) -> dict[tuple[str, int], Run]:
    """(row, seed) → the newest generation of its run with the grid's stages (any status)."""
    hashes = {row.variant_hash: row.name for row in record.rows}
    found: dict[tuple[str, int], Run] = {}
    stmt = (select(Run).where(Run.variant_hash.in_(list(hashes)), Run.stages == record.stages)
            .order_by(Run.generation, Run.id))
    for run in s.scalars(stmt):
        found[(hashes[run.variant_hash], run.seed)] = run
    return found


def policy_state(db: Database, grid: str) -> PolicyState:
    """The grid's policy, its rows' seed counts, the seeds it added and what a next step waits for."""

    def _read(s: Session) -> PolicyState:
        record = grid_record(s, grid)
        policy = _policy(record)
        runs = _runs_by_seed(s, record)
        seeds = {row.name: len(record.row_seeds(row.name)) for row in record.rows}
        added: list[AddedSeedEntry] = [
            {"step": a.step, "row": a.row_name, "seed": a.seed, "run_id": a.run_id, "reason": a.reason}
            for a in record.added_seeds]
        open_runs = [f"{row.name} seed {seed}" for row in record.rows for seed in record.row_seeds(row.name)
                     if (run := runs.get((row.name, seed))) is None or run.status != SUCCEEDED]
        waiting = f"{len(open_runs)} run(s) not succeeded yet: {', '.join(open_runs[:6])}" if open_runs else ""
        return PolicyState(policy, seeds, added, waiting)

    return db.read(_read)


def _undecided(db: Database, grid: str, policy: SeedPolicy) -> tuple[str, pd.DataFrame]:
    from runner.comparison import compare_grid

    frame = compare_grid(db, grid, metric=policy.metric, level=policy.level)
    return str(frame.attrs["baseline"]), frame[frame["verdict"] == "undecided"]


def _add(s: Session, grid: str, additions: dict[str, str]) -> list[dict[str, object]]:
    """Queue one more seed for each row in ``additions`` (row → reason); one transaction."""
    record = grid_record(s, grid)
    runs = _runs_by_seed(s, record)
    used = {seed for row in record.rows for seed in record.row_seeds(row.name)}
    seed = max(used) + 1
    step = max((a.step for a in record.added_seeds), default=0) + 1
    out = []
    for row in record.rows:
        if row.name not in additions:
            continue
        template = next(run for (name, _seed), run in runs.items() if name == row.name)
        cfg = dataclasses.replace(config_from_dict(template.config), seed=seed)
        stages = template.stages.split(",")
        run = Run(grid_id=record.id, row_name=row.name, overrides=template.overrides, config=cfg.to_dict(),
                  config_hash=cfg.hash(), variant_hash=template.variant_hash, seed=seed, stages=template.stages,
                  stage_options=template.stage_options, data=template.data, gpus=template.gpus,
                  run_key=run_key(cfg.hash(), seed, stages, template.stage_options or {}, template.data),
                  generation=0, priority=template.priority, attempts=0, max_attempts=template.max_attempts)
        s.add(run)
        s.flush()
        s.add(AddedSeed(grid_id=record.id, row_name=row.name, seed=seed, step=step, reason=additions[row.name],
                        run_id=run.id))
        out.append({"step": step, "row": row.name, "seed": seed, "run_id": run.id, "reason": additions[row.name]})
    s.flush()
    return out


def apply_seed_policy(db: Database, grid: str) -> list[dict[str, object]]:
    """Take the policy's next step if it is due (module docstring); returns the seeds added (may be none)."""
    state = policy_state(db, grid)
    if state.policy is None or state.waiting:
        return []
    baseline, undecided = _undecided(db, grid, state.policy)
    additions: dict[str, str] = {}
    for rec in undecided.to_dict("records"):
        if state.seeds[rec["row"]] < state.policy.max:
            width = rec["delta_width"]
            additions[rec["row"]] = (f"{state.policy.metric} vs {baseline} undecided with {rec['runs']} runs"
                                     + ("" if math.isnan(width) else f" (interval width {width:.1f})"))
    if additions and state.seeds[baseline] < state.policy.max:
        additions[baseline] = f"baseline of {len(additions)} undecided comparison(s)"
    if not additions:
        return []
    try:
        return db.write(lambda s: _add(s, grid, additions))
    except IntegrityError:
        return []  # another process took this step first
