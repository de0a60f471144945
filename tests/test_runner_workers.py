"""Real worker processes on a real SQLite file and a real PostgreSQL server: fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from runner_helpers import (
    count_runs,
    open_db,
    reaped,
    runner_cmd,
    start_worker,
    terminate,
    url_for,
    wait_for,
    worker_logs,
    write_grid,
)
from sqlalchemy import func, select

from runner.db import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Database, Metrics, Run, TrainRecord
from runner.export import runs_frame, status_frame


def submit(url: str, grid: Path) -> None:
    out = subprocess.run(runner_cmd(url, "submit", str(grid)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def attempt_headers(tmp_path: Path, grid: str, run_id: int) -> int:
    return (tmp_path / "runs" / grid / str(run_id) / "job.log").read_text().count("=== attempt")


def _four_workers(db: Database, tmp_path: Path, runs: int) -> None:
    url = db.url_string
    submit(url, write_grid(tmp_path / "g.yaml", name="many", seeds=runs,
                           noop={"records": 5, "metrics": {"AP": 1.0, "fps": 2.0}}))
    # A reader polls the database the whole time, as the dashboard will.
    reader_errors: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def _reader() -> None:
        nonlocal reads
        reader = Database(url)
        while not stop.is_set():
            try:
                status_frame(reader)
                runs_frame(reader, "many")
                reader.read(lambda s: s.scalar(select(func.count()).select_from(TrainRecord)))
                reads += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                reader_errors.append(exc)
            time.sleep(0.02)
        reader.dispose()

    thread = threading.Thread(target=_reader)
    thread.start()
    workers = [start_worker(url, tmp_path, f"w{i}", "--exit-when-empty") for i in range(4)]
    try:
        for w in workers:
            assert w.wait(timeout=60 + runs * 2) == 0
    finally:
        stop.set()
        thread.join()
        for w in workers:
            if w.poll() is None:
                w.kill()
    logs = worker_logs(tmp_path)
    assert not reader_errors, reader_errors[:3]
    assert reads > 10
    assert "database is locked" not in logs and "Traceback" not in logs, logs[-3000:]
    rows = db.read(lambda s: [(r.id, r.status, r.attempts, r.worker) for r in s.scalars(select(Run))])
    assert len(rows) == runs
    assert all(status == SUCCEEDED and attempts == 1 for _id, status, attempts, _w in rows), rows
    assert len({w for *_rest, w in rows}) >= 2  # the work was shared
    # Each run was executed exactly once: one job start in its log, one metrics row, 5 records.
    assert all(attempt_headers(tmp_path, "many", run_id) == 1 for run_id, *_ in rows)
    assert db.read(lambda s: s.scalar(select(func.count()).select_from(Metrics))) == runs
    assert db.read(lambda s: s.scalar(select(func.count()).select_from(TrainRecord))) == 5 * runs


def test_four_workers_run_each_run_once_while_a_reader_polls(db: Database, tmp_path: Path) -> None:
    _four_workers(db, tmp_path, runs=24)


@pytest.mark.slow
def test_four_workers_500_runs(db: Database, tmp_path: Path) -> None:
    _four_workers(db, tmp_path, runs=500)


def test_sigkilled_worker_run_is_requeued_and_finished_elsewhere(db: Database, tmp_path: Path) -> None:
    url = db.url_string
    submit(url, write_grid(tmp_path / "g.yaml", name="kill", seeds=3, noop={"sleep": 1.0, "metrics": {"AP": 7.0}}))
    victim = start_worker(url, tmp_path, "victim")
    wait_for(lambda: count_runs(db, SUCCEEDED) >= 2 and count_runs(db, RUNNING) == 1, 60, "two results and a run")
    before = db.read(lambda s: {r.id: (r.worker, r.finished_at, r.metrics.AP)
                                for r in s.scalars(select(Run).where(Run.status == SUCCEEDED))})
    killed = db.read(lambda s: s.scalars(select(Run.id).where(Run.status == RUNNING)).one())
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    rescuer = start_worker(url, tmp_path, "rescuer", "--exit-when-empty")
    assert rescuer.wait(timeout=90) == 0
    runs = db.read(lambda s: {r.id: r for r in s.scalars(select(Run))})
    assert all(r.status == SUCCEEDED for r in runs.values())
    run = runs[killed]
    assert run.worker == "rescuer" and run.attempts == 2 and "worker victim stopped heartbeating" in run.error
    # Everything stored before the kill is untouched.
    after = db.read(lambda s: {r.id: (r.worker, r.finished_at, r.metrics.AP)
                               for r in s.scalars(select(Run).where(Run.id.in_(list(before))))})
    assert after == before and all(w == "victim" for w, _f, _ap in before.values())
    # The killed job died with its worker (it never reported success from the first attempt).
    log = (tmp_path / "runs" / "kill" / str(killed) / "job.log").read_text()
    assert log.count("=== attempt") == 2 and log.count("succeeded") == 1


def test_sigterm_requeues_the_running_run_without_spending_an_attempt(db: Database, tmp_path: Path) -> None:
    url = db.url_string
    submit(url, write_grid(tmp_path / "g.yaml", name="term", seeds=1, noop={"sleep": 60}))
    worker = start_worker(url, tmp_path, "w")
    wait_for(lambda: count_runs(db, RUNNING) == 1, 60, "the run to start")
    time.sleep(0.5)
    assert terminate(worker, timeout=30) == 0
    run = db.read(lambda s: s.scalars(select(Run)).one())
    assert run.status == QUEUED and run.attempts == 0 and "worker w shut down; requeued" in run.error


def test_failures_retry_up_to_max_attempts_keeping_errors(tmp_path: Path) -> None:
    url = next(url_for("sqlite", tmp_path))
    db = next(open_db(url))
    submit(url, write_grid(tmp_path / "a.yaml", name="flaky", seeds=1, noop={"fail_attempts": 1},
                           extra="max_attempts: 2\n"))
    submit(url, write_grid(tmp_path / "b.yaml", name="broken", seeds=[5], noop={"fail_attempts": 9},
                           extra="max_attempts: 2\n"))
    assert start_worker(url, tmp_path, "w", "--exit-when-empty").wait(timeout=90) == 0
    flaky, broken = db.read(lambda s: list(s.scalars(select(Run).order_by(Run.id))))
    assert flaky.status == SUCCEEDED and flaky.attempts == 2 and "noop: failing attempt 1" in flaky.error
    assert broken.status == FAILED and broken.attempts == 2
    assert "failing attempt 1" in broken.error and "failing attempt 2" in broken.error
    db.dispose()


def test_cancelling_a_running_run_stops_its_job(tmp_path: Path) -> None:
    url = next(url_for("sqlite", tmp_path))
    db = next(open_db(url))
    submit(url, write_grid(tmp_path / "g.yaml", name="slow", seeds=1, noop={"sleep": 60}))
    worker = start_worker(url, tmp_path, "w", "--exit-when-empty")
    wait_for(lambda: count_runs(db, RUNNING) == 1, 60, "the run to start")
    out = subprocess.run(runner_cmd(url, "cancel", "--grid", "slow"), capture_output=True, text=True, timeout=60)
    assert "cancelled 1 run(s)" in out.stdout
    assert worker.wait(timeout=30) == 0  # the job was stopped, so the worker found the queue empty
    assert db.read(lambda s: s.scalars(select(Run.status)).one()) == CANCELLED
    assert "cancelled or taken over" in worker_logs(tmp_path)
    assert os.path.exists(tmp_path / "runs" / "slow" / "1" / "job.log")
    db.dispose()


def test_a_requeued_training_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """A worker stopped mid-training (SIGTERM: what SLURM sends at requeue, preemption and its time limit)
    requeues the run without spending an attempt; the next attempt continues from the run's checkpoint."""
    import yaml
    from test_train import TINY

    from fastinst.data.synthetic import make_synthetic

    url = f"sqlite:///{tmp_path / 'results.db'}"
    make_synthetic(tmp_path / "data", num_train=2, num_val=1, size=64, workers=1)
    spec = {"name": "resume", "base": {**TINY, "solver.max_iter": 40, "solver.checkpoint_period": 2},
            "stages": ["train"], "seeds": 1, "resources": {"gpus": 0}, "data": str(tmp_path / "data")}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    submit(url, tmp_path / "g.yaml")
    db = Database(url)
    checkpoint = tmp_path / "runs" / "resume" / "1" / "train" / "last_checkpoint"
    worker = start_worker(url, tmp_path, "first", stale_after=30.0)
    with reaped(worker):
        wait_for(checkpoint.exists, 120, "a training checkpoint")
        assert terminate(worker) == 0
    run = db.read(lambda s: s.scalars(select(Run)).one())
    assert (run.status, run.attempts) == (QUEUED, 0) and "(not counted)" in run.error
    stopped_at = checkpoint.read_text().strip()
    second = start_worker(url, tmp_path, "second", "--exit-when-empty", stale_after=30.0)
    assert second.wait(timeout=240) == 0, worker_logs(tmp_path)[-3000:]
    run = db.read(lambda s: s.scalars(select(Run)).one())
    assert (run.status, run.attempts) == (SUCCEEDED, 1), run.error
    steps = db.read(lambda s: list(s.scalars(select(TrainRecord.step).order_by(TrainRecord.id))))
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    last_attempt = steps[restarts[-1]:] if restarts else steps
    assert last_attempt[0] > 1 and last_attempt[-1] == 40, (stopped_at, steps)  # continued, not started over
    db.dispose()
