"""Queue semantics in-process (SQLite file and PostgreSQL), plus `runner submit` from the command line."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from runner_helpers import REPO, count_runs, run_in_threads, runner_cmd, write_grid
from sqlalchemy import select, update

from fastinst.grid import Grid, load_grid
from runner import queue
from runner.db import FAILED, QUEUED, RUNNING, SUCCEEDED, Database, Run, init_db, utcnow


def _finish(database: Database, claim: queue.Claim) -> None:
    def _done(s):  # noqa: ANN001, ANN202
        run = queue.owned_run(s, claim.run_id, claim.token)
        run.status, run.finished_at = SUCCEEDED, utcnow()

    database.write(_done)


def test_submit_dedups_forces_and_requeues_failed(db: Database, tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path / "g.yaml", seeds=2, extra="axes:\n  model.num_aux_queries: [4, 8]\n"))
    first = queue.submit(db, grid)
    assert len(first.queued) == 4 and not first.done
    again = queue.submit(db, grid)
    assert again.queued == [] and sorted(again.active) == sorted(first.queued)
    # Finish two, fail one for good: resubmitting skips the finished, requeues the failed.
    claims = [queue.claim(db, "w", max_gpus=1, device="cpu") for _ in range(3)]
    _finish(db, claims[0])
    _finish(db, claims[1])
    db.write(lambda s: s.execute(update(Run).where(Run.id == claims[2].run_id).values(status=FAILED)))
    third = queue.submit(db, grid)
    assert sorted(third.done) == sorted([claims[0].run_id, claims[1].run_id])
    assert third.requeued == [claims[2].run_id] and third.queued == []
    forced = queue.submit(db, grid, force=True)
    assert len(forced.queued) == 2  # new generations of the two succeeded runs
    gens = db.read(lambda s: sorted(s.scalars(select(Run.generation))))
    assert gens == [0, 0, 0, 0, 1, 1]
    assert count_runs(db) == 6


def test_claim_order_resources_heartbeat_and_stale_sweep(db: Database, tmp_path: Path) -> None:
    def grid(name: str, layers: int, priority: int, gpus: int = 0) -> Grid:
        extra = f"priority: {priority}\naxes:\n  model.decoder.num_layers: [{layers}]\n"
        return load_grid(write_grid(tmp_path / f"{name}.yaml", name=name, gpus=gpus, extra=extra))

    low, high, big = grid("low", 1, 0), grid("high", 2, 5), grid("big", 3, 9, gpus=4)
    for g in (low, high, big):
        queue.submit(db, g)
    first = queue.claim(db, "w1", max_gpus=1, device="cpu")
    assert first is not None and first.grid == "high"  # "big" needs 4 GPUs
    second = queue.claim(db, "w1", max_gpus=1, device="cpu")
    assert second is not None and second.grid == "low"
    assert queue.claim(db, "w1", max_gpus=1, device="cpu") is None
    big_claim = queue.claim(db, "w2", max_gpus=4, device="cuda")
    assert big_claim is not None and big_claim.grid == "big"

    forged = dataclasses.replace(second, token="not-the-token")
    assert queue.heartbeat(db, [first, forged]) == {("run", second.run_id)}
    queue.cancel(db, run_ids=[big_claim.run_id])
    assert queue.heartbeat(db, [big_claim]) == {("run", big_claim.run_id)}
    # A heartbeat older than stale_after gets the run requeued, with the reason kept.
    old = utcnow().replace(year=2000)
    db.write(lambda s: s.execute(update(Run).where(Run.id == first.run_id).values(heartbeat_at=old)))
    assert queue.sweep_stale(db, stale_after=60) == [("run", first.run_id)]
    run = db.read(lambda s: s.get(Run, first.run_id))
    assert run.status == QUEUED and "stopped heartbeating" in run.error and run.attempts == 1
    with pytest.raises(queue.LostClaim):
        db.write(lambda s: queue.owned_run(s, first.run_id, first.token))
    # Out of attempts: the next stale sweep fails it.
    db.write(lambda s: s.execute(update(Run).where(Run.id == first.run_id).values(max_attempts=2)))
    again = queue.claim(db, "w3", max_gpus=1, device="cpu")
    assert again.run_id == first.run_id and again.attempt == 2
    db.write(lambda s: s.execute(update(Run).where(Run.id == first.run_id).values(heartbeat_at=old)))
    queue.sweep_stale(db, stale_after=60)
    run = db.read(lambda s: s.get(Run, first.run_id))
    assert run.status == FAILED and run.error.count("stopped heartbeating") == 2


def test_fail_retry_and_cancel(db: Database, tmp_path: Path) -> None:
    queue.submit(db, load_grid(write_grid(tmp_path / "g.yaml", seeds=3, extra="max_attempts: 2\n")))
    c = queue.claim(db, "w", max_gpus=1, device="cpu")
    assert queue.fail(db, c.run_id, c.token, "boom 1") == QUEUED
    c2 = queue.claim(db, "w", max_gpus=1, device="cpu")
    assert c2.run_id == c.run_id and c2.attempt == 2
    assert queue.fail(db, c2.run_id, c2.token, "boom 2") == FAILED
    assert queue.fail(db, c2.run_id, c2.token, "late") is None  # no longer ours
    run = db.read(lambda s: s.get(Run, c.run_id))
    assert "attempt 1: boom 1" in run.error and "attempt 2: boom 2" in run.error
    # A worker shutting down requeues without spending an attempt.
    c3 = queue.claim(db, "w", max_gpus=1, device="cpu")
    assert queue.fail(db, c3.run_id, c3.token, "shutdown", count_attempt=False) == QUEUED
    assert db.read(lambda s: s.get(Run, c3.run_id)).attempts == 0
    assert (c.run_id, c3.run_id) == (1, 2)
    assert sorted(queue.cancel(db, grid="noop")) == [2, 3]
    assert queue.retry(db, run_ids=[c.run_id]) == [c.run_id]
    run = db.read(lambda s: s.get(Run, c.run_id))
    assert run.status == QUEUED and run.attempts == 0 and "boom 2" in run.error
    assert len(queue.retry(db, grid="noop")) == 2


def test_concurrent_submits_queue_each_run_once(db_url: str, tmp_path: Path) -> None:
    init_db(db_url).dispose()
    path = write_grid(tmp_path / "g.yaml", seeds=40, extra="axes:\n  model.num_aux_queries: [2, 4, 8]\n")
    grid = load_grid(path)
    dbs = [Database(db_url) for _ in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def _submit(d: Database) -> None:
        try:
            barrier.wait()
            queue.submit(d, grid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    run_in_threads(_submit, [(d,) for d in dbs])
    assert not errors, errors
    # And two real `runner submit` processes at once, on another grid.
    other = write_grid(tmp_path / "h.yaml", name="other", seeds=40,
                       extra="axes:\n  model.num_ia_queries: [10, 20, 30]\n")
    procs = [subprocess.Popen(runner_cmd(db_url, "submit", str(other)), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    keys = dbs[0].read(lambda s: [(r.run_key, r.generation) for r in s.scalars(select(Run))])
    assert len(keys) == len(set(keys)) == 240
    queued = [int(re.search(r"(\d+) queued", o).group(1)) for o in outs]
    assert sum(queued) == 120, outs
    for x in dbs:
        x.dispose()


def test_malformed_grid_queues_nothing_and_says_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    ok_db = init_db(url)
    queue.submit(ok_db, load_grid(write_grid(tmp_path / "ok.yaml", name="ok", seeds=2)))
    bad = write_grid(tmp_path / "bad.yaml", name="bad", seeds=2,
                     extra="axes:\n  model.decoder.num_layers: [1, 2]\n  model.pixel_decoder.name: [ppm_fpn, fnp]\n")
    proc = subprocess.run(runner_cmd(url, "submit", str(bad)), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{bad}:7: axes: model.pixel_decoder.name: invalid value 'fnp'" in proc.stderr
    assert "did you mean 'fpn'" in proc.stderr
    assert count_runs(ok_db) == 2  # only the good grid's runs
    assert ok_db.read(lambda s: s.scalars(select(Run.status)).all()) == [QUEUED, QUEUED]
    ok_db.dispose()


def test_claims_are_exclusive_under_contention(db: Database, tmp_path: Path) -> None:
    queue.submit(db, load_grid(write_grid(tmp_path / "g.yaml", seeds=60)))
    url = db.url_string
    got: list[list[int]] = [[] for _ in range(4)]

    def _claimer(i: int) -> None:
        d = Database(url)
        while (c := queue.claim(d, f"w{i}", max_gpus=1, device="cpu")) is not None:
            got[i].append(c.run_id)
            time.sleep(0.001)
        d.dispose()

    run_in_threads(_claimer, [(i,) for i in range(4)])
    claimed = [r for g in got for r in g]
    assert sorted(claimed) == list(range(1, 61))
    assert sum(1 for g in got if g) >= 2
    assert count_runs(db, RUNNING) == 60
