"""The Ray executor on a local Ray instance with logical GPUs, and an Optuna search through the queue."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runner_helpers import open_db, postgres_url, start_worker, url_for, write_grid
from sqlalchemy import select
from sqlalchemy.engine import make_url

from fastinst.grid import GridError
from runner import queue
from runner.db import SUCCEEDED, Database, Run, init_db
from runner.stages import load_stage_grid


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield from open_db(next(url_for("sqlite", tmp_path)))


@pytest.fixture
def ray_temp() -> Iterator[Path]:
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must stay under ~107 characters
    yield Path(temp)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch, ray_temp: Path) -> Iterator[Callable[[str], None]]:
    """Starts a local Ray (2 CPUs, 2 logical GPUs) whose node has ``FASTINST_DB`` set, as a cluster's nodes must."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")

    def _start(url: str) -> None:
        monkeypatch.setenv("FASTINST_DB", url)
        ray.init(num_cpus=2, num_gpus=2, _temp_dir=str(ray_temp), include_dashboard=False, log_to_driver=False)

    yield _start
    ray.shutdown()


def test_ray_executor_runs_a_grid_with_logical_gpus(db: Database, tmp_path: Path,
                                                   local_ray: Callable[[str], None]) -> None:
    from runner.ray_executor import RayExecutor

    local_ray(db.url_string)
    grid = load_stage_grid(write_grid(tmp_path / "g.yaml", name="rayg", seeds=2, gpus=1, noop={"metrics": {"AP": 3.0}},
                                extra="axes:\n  model.decoder.num_layers: [1, 2]\n"))
    assert len(queue.submit(db, grid).queued) == 4
    executor = RayExecutor(db, runs_dir=tmp_path / "runs", poll=0.2, heartbeat=0.5, stale_after=5,
                           exit_when_empty=True)
    assert executor.run() == 0
    runs = db.read(lambda s: list(s.scalars(select(Run))))
    assert all(r.status == SUCCEEDED and r.attempts == 1 and r.worker.startswith("ray:") for r in runs)
    assert db.read(lambda s: [r.metrics.AP for r in s.scalars(select(Run))]) == [3.0] * 4
    # Each task saw one of the two logical GPUs.
    visible = {(tmp_path / "runs" / "rayg" / str(r.id) / "job.log").read_text().split("CUDA_VISIBLE_DEVICES=")[1][:3]
               for r in runs}
    assert visible <= {"'0'", "'1'"} and visible


def test_ray_executor_measures_on_a_whole_node(db: Database, tmp_path: Path,
                                              local_ray: Callable[[str], None]) -> None:
    """A grid with a bench stage: the runs train (nothing to train) as tasks, then their measurements run as one
    interleaved group in a task pinned to the node that holds every CPU and GPU of it."""
    import yaml

    from fastinst.data.synthetic import make_synthetic
    from runner.db import MeasureJob, SpeedMeasurement
    from runner.ray_executor import RayExecutor

    make_synthetic(tmp_path / "data", num_train=1, num_val=2, size=64, workers=1)
    from test_train import TINY

    tiny = {**TINY, "input.min_size_test": 64, "input.max_size_test": 96}
    spec = {"name": "raym", "base": tiny, "stages": ["bench"], "seeds": 2, "resources": {"gpus": 0},
            "data": str(tmp_path / "data"), "stage_options": {"bench": {"images": 2, "warmup": 1, "repeats": 2}}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    local_ray(db.url_string)
    assert len(queue.submit(db, load_stage_grid(tmp_path / "m.yaml")).queued) == 2
    calls: list[dict[str, Any]] = []
    executor = RayExecutor(db, runs_dir=tmp_path / "runs", poll=0.2, heartbeat=0.5, stale_after=30,
                           exit_when_empty=True)
    start = executor._start

    def _start(claim: queue.Claim) -> None:
        start(claim)
        calls.append({"kind": claim.kind, "members": len(claim.members), "node": executor._measuring.get(claim.key)})

    executor._start = _start  # type: ignore[method-assign]  # records what each task was given
    assert executor.run() == 0
    jobs = db.read(lambda s: list(s.scalars(select(MeasureJob))))
    assert [(j.status, j.attempts) for j in jobs] == [(SUCCEEDED, 1)] * 2
    assert db.read(lambda s: len(list(s.scalars(select(SpeedMeasurement))))) == 2
    measured = [c for c in calls if c["kind"] == queue.MEASURE]
    assert len(measured) == 1 and measured[0]["members"] == 2  # one interleaved group, one task
    node = measured[0]["node"]
    assert node is not None and (node.cpus, node.gpus) == (2.0, 2.0) and node.device_types == ("cuda", "cpu")
    assert executor._measuring == {}


class RecordingExecutor:
    """Wraps a RayExecutor's remote function to keep every task's arguments."""

    def __init__(self, remote: Any, calls: list[tuple[Any, ...]]) -> None:
        self._remote, self._calls = remote, calls

    def options(self, **kw: Any) -> Any:
        inner = self._remote.options(**kw)
        calls = self._calls

        class _Bound:
            def remote(self, *args: Any) -> Any:
                calls.append(args)
                return inner.remote(*args)

        return _Bound()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_url()


def test_ray_tasks_never_see_the_database_password(tmp_path: Path, pg_url: str, local_ray: Callable[[str], None],
                                                   ray_temp: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The URL reaches tasks through their environment: no password in task arguments, job logs,
    the executor's log or Ray's session files (PostgreSQL with trust auth accepts any password)."""
    from runner.ray_executor import RayExecutor

    secret = "Pw-" + uuid.uuid4().hex
    url = make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    db = init_db(url)
    local_ray(url)
    grid = load_stage_grid(write_grid(tmp_path / "g.yaml", name="secret", seeds=2, gpus=1, noop={"metrics": {"AP": 1.0}}))
    queue.submit(db, grid)
    calls: list[tuple[Any, ...]] = []
    executor = RayExecutor(db, runs_dir=tmp_path / "runs", poll=0.2, heartbeat=0.5, stale_after=5,
                           exit_when_empty=True)
    setup = executor._setup

    def _recording_setup() -> None:
        setup()
        executor.remote = RecordingExecutor(executor.remote, calls)

    executor._setup = _recording_setup  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG):
        assert executor.run() == 0
    assert db.read(lambda s: [r.status for r in s.scalars(select(Run))]) == [SUCCEEDED, SUCCEEDED]
    assert len(calls) == 2 and all(secret not in repr(args) and secret.encode() not in pickle.dumps(args)
                                   for args in calls)
    assert secret not in caplog.text
    leaks = [p for root in (ray_temp, tmp_path / "runs") for p in root.rglob("*")
             if p.is_file() and not p.is_socket() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    db.dispose()


def test_ray_task_refuses_another_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose FASTINST_DB names another database (or none) fails its task with a clear error."""
    from runner.ray_executor import ray_job

    claim = queue.Claim(1, "token", "g", 0, 1)
    monkeypatch.setenv("FASTINST_DB", f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(RuntimeError, match=r"FASTINST_DB on Ray node .* is sqlite:///.*other.db, but the executor"):
        ray_job(claim, str(tmp_path), f"sqlite:///{tmp_path / 'mine.db'}")
    monkeypatch.delenv("FASTINST_DB")
    with pytest.raises(RuntimeError, match="FASTINST_DB is not set on Ray node"):
        ray_job(claim, str(tmp_path), f"sqlite:///{tmp_path / 'mine.db'}")


def test_search_queues_trials_as_runs_and_tells_optuna(db: Database, tmp_path: Path) -> None:
    from runner.search import load_search, run_search

    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(
        "name: qsearch\nstages: [noop]\nresources: {gpus: 0}\nseeds: [0, 1]\n"
        "stage_options: {noop: {metrics: {AP: 30.0, fps: 12.5}}}\n"
        "search:\n  objectives: [AP, FPS]\n  sampler: random\n  space:\n"
        "    model.num_ia_queries: {low: 10, high: 300, step: 10}\n"
        "    model.decoder.num_layers: [1, 2, 3]\n"
        "    solver.base_lr: {low: 1.0e-5, high: 1.0e-3, log: true}\n")
    spec = load_search(spec_path)
    worker = start_worker(db.url_string, tmp_path, "w")
    try:
        study = run_search(db, spec, trials=3, parallel=2, poll=0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.values == [30.0, 12.5] for t in trials)
    rows = db.read(lambda s: list(s.scalars(select(Run).where(Run.status == SUCCEEDED))))
    assert {r.row_name for r in rows} == {t.user_attrs["row"] for t in trials}
    assert all(len(t.user_attrs["run_ids"]) == 2 for t in trials)
    run = rows[0]
    assert run.config["model"]["num_ia_queries"] == run.overrides["model.num_ia_queries"]
    # The study lives in the same database.
    import optuna

    assert optuna.load_study(study_name="qsearch", storage=db.url_string).trials[0].values == [30.0, 12.5]


def test_search_spec_errors_name_line_and_key(tmp_path: Path) -> None:
    from runner.search import load_search

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nstages: [noop]\nsearch:\n  space:\n    model.decoder.num_layer: [1, 2]\n")
    with pytest.raises(GridError, match=r"s.yaml:5: search: unknown config key 'model.decoder.num_layer'"):
        load_search(path)
    path.write_text("name: s\nstages: [noop]\nsearch:\n  objectives: [AP, speed]\n  space: {model.num_ia_queries: [1]}\n")
    with pytest.raises(GridError, match=r"s.yaml:4: search: objectives must be"):
        load_search(path)
    assert os.path.exists(path)
