"""`runner launch slurm` against a real SLURM (scripts/slurm_local.sh: one node on this machine).

Every test here needs the cluster (``sinfo`` answers) and the test PostgreSQL server; each skips with
the reason otherwise. Worker jobs run the project's own Python (the venv) on the node, so they see
the same code and the same database.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runner_helpers import REPO, count_runs, postgres_url, runner_cmd, wait_for, write_grid
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from runner import queue
from runner.db import Database, Metrics, Run, init_db
from runner.slurm import SECRET_NAME, SlurmError, SlurmSettings, launch_workers, require_slurm

SLURM_LOGS = Path("/var/log/slurm-fastinst")


def _cluster_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (scripts/slurm_local.sh start installs and starts a one-node cluster)"
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0 or not re.search(r"idle|mixed|allocated", probe.stdout):
        return f"no SLURM cluster answers (sinfo: {probe.stderr.strip() or probe.stdout.strip()}); " \
               "start one with scripts/slurm_local.sh start"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = _cluster_up()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def secret_url() -> Iterator[str]:
    """A PostgreSQL URL with a password in it (the test server trusts local connections, so any
    password works): what must never show outside the user-only URL file."""
    for url in postgres_url():
        yield make_url(url).set(password=f"pw{secrets.token_hex(8)}").render_as_string(hide_password=False)


@pytest.fixture
def db(secret_url: str) -> Iterator[Database]:
    database = init_db(secret_url)
    yield database
    database.dispose()


def _submit_grid(url: str, tmp_path: Path, name: str, runs: int, sleep: float) -> None:
    grid = write_grid(tmp_path / f"{name}.yaml", name=name, seeds=list(range(runs)), noop={"sleep": sleep})
    subprocess.run(runner_cmd(url, "submit", str(grid)), check=True, cwd=REPO, capture_output=True)


def _squeue(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _drain(db: Database, jobs: list[str], runs: int, timeout: float) -> None:
    """Wait for ``runs`` succeeded runs, letting requeued worker jobs start at once."""
    deadline = time.monotonic() + timeout
    while count_runs(db, queue.SUCCEEDED) < runs:
        assert time.monotonic() < deadline, f"timed out after {timeout}s; runs: {count_runs(db)}"
        for job in jobs:
            if _squeue(job) == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(1.0)


def _running_by_job(db: Database) -> dict[str, int]:
    """SLURM job id → the run its worker is running now."""
    workers = {w.name: w.slurm_job for w in queue.live_workers(db, stale_after=30)}
    rows = db.read(lambda s: s.execute(select(Run.id, Run.worker).where(Run.status == queue.RUNNING)).all())
    return {workers[w]: run_id for run_id, w in rows if workers.get(w)}


def _cancel(*jobs: str) -> None:
    subprocess.run(["scancel", *jobs], capture_output=True)


def _assert_no_password(url: str, folder: Path, jobs: list[str], runs_dir: Path) -> None:
    password = make_url(url).password
    assert password
    places: dict[str, str] = {}
    for job in jobs:
        places[f"scontrol show job {job}"] = subprocess.run(["scontrol", "show", "job", "-dd", job],
                                                            capture_output=True, text=True).stdout
    for path in [*folder.rglob("*"), *runs_dir.rglob("*"), *SLURM_LOGS.glob("*")]:
        if path.is_file() and path.name != SECRET_NAME:
            places[str(path)] = path.read_bytes().decode(errors="replace")
    assert any("submission.sh" in p for p in places), "the batch scripts were searched"
    leaks = [where for where, text in places.items() if password in text]
    assert not leaks, f"the password shows in {leaks}"
    secret = folder / SECRET_NAME
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.slurm
def test_two_workers_drain_a_grid_through_scancel_and_requeue(cluster: None, secret_url: str, db: Database,
                                                              tmp_path: Path) -> None:
    _submit_grid(secret_url, tmp_path, "slurm-drain", runs=6, sleep=6.0)
    folder, runs_dir = tmp_path / "slurm", tmp_path / "runs"
    launched = launch_workers(secret_url, SlurmSettings(gpus=0, cpus=1, time="10:00", signal_delay_s=60), workers=2,
                              folder=folder, runs_dir=runs_dir, poll=0.5, heartbeat=1.0, stale_after=20.0, grace=5.0)
    jobs = launched.job_ids
    try:
        assert len(jobs) == 2 and all(re.fullmatch(r"\d+_[01]", j) for j in jobs), jobs
        wait_for(lambda: len(_running_by_job(db)) == 2, 120, "both worker jobs running a run")
        status = subprocess.run(runner_cmd(secret_url, "status"), capture_output=True, text=True, cwd=REPO).stdout
        for job in jobs:
            assert job in status, status  # each live worker's SLURM job id, with its host
        running = _running_by_job(db)
        cancelled, requeued = jobs
        _cancel(cancelled)
        subprocess.run(["scontrol", "requeue", requeued], check=True, capture_output=True)
        interrupted = [running[cancelled], running[requeued]]
        _drain(db, [requeued], runs=6, timeout=240)
        wait_for(lambda: _squeue(requeued) == "", 60, "the requeued worker exiting once the queue is empty")
    finally:
        _cancel(*jobs)
    runs = db.read(lambda s: s.scalars(select(Run)).all())
    assert all(r.status == queue.SUCCEEDED and r.attempts == 1 for r in runs), [(r.id, r.attempts, r.error) for r in runs]
    stored = db.read(lambda s: s.execute(select(Metrics.run_id, func.count()).group_by(Metrics.run_id)).all())
    assert sorted(n for _, n in stored) == [1] * 6  # each run stored once
    by_id = {r.id: r for r in runs}
    for run_id in interrupted:
        assert "shut down; requeued" in (by_id[run_id].error or "") and "(not counted)" in by_id[run_id].error
    _assert_no_password(secret_url, folder, jobs, runs_dir)


@pytest.mark.slurm
def test_time_limit_requeues_the_run_and_the_worker_job(cluster: None, secret_url: str, db: Database,
                                                        tmp_path: Path) -> None:
    # A 1-minute job, warned 30 s ahead (SLURM checks its timers every ~30 s, so the warning comes 30-60 s
    # in): the grid (4 x 15 s) is still running when it comes.
    _submit_grid(secret_url, tmp_path, "slurm-limit", runs=4, sleep=15.0)
    folder = tmp_path / "slurm"
    launched = launch_workers(secret_url, SlurmSettings(gpus=0, cpus=1, time="1", signal_delay_s=30), workers=1,
                              folder=folder, runs_dir=tmp_path / "runs", poll=0.5, heartbeat=1.0, stale_after=20.0,
                              grace=5.0)
    try:
        _drain(db, launched.job_ids, runs=4, timeout=300)
    finally:
        _cancel(*launched.job_ids)
    log = "\n".join(p.read_text(errors="replace") for p in folder.glob("*_log.*"))
    assert "requeueing this SLURM job" in log, log[-3000:]
    runs = db.read(lambda s: s.scalars(select(Run)).all())
    assert all(r.status == queue.SUCCEEDED and r.attempts == 1 for r in runs), [(r.id, r.error) for r in runs]
    assert any("(not counted)" in (r.error or "") for r in runs)


@pytest.mark.slurm
def test_measure_job_times_a_grid_on_a_whole_node(cluster: None, secret_url: str, db: Database,
                                                  tmp_path: Path) -> None:
    import yaml
    from test_train import TINY

    from fastinst.data.synthetic import make_synthetic
    from runner.db import SpeedMeasurement, host_name
    from runner.job import run_job
    from runner.stages import load_stage_grid

    make_synthetic(tmp_path / "data", num_train=1, num_val=2, size=64, workers=1)
    spec = {"name": "slurm-measure", "base": {**TINY, "input.min_size_test": 64, "input.max_size_test": 96},
            "stages": ["noop"], "seeds": 2, "resources": {"gpus": 0}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    queue.submit(db, load_stage_grid(tmp_path / "m.yaml"))
    while (claim := queue.claim(db, "t", max_gpus=1, device="cpu")) is not None:  # nothing to train: no weights
        assert run_job(db, claim.run_id, claim.token, tmp_path / "runs") == 0
    folder = tmp_path / "slurm"
    out = subprocess.run(runner_cmd(secret_url, "launch", "slurm", "--measure", "slurm-measure", "--gpus", "0",
                                    "--time", "10:00", "--folder", str(folder), "--runs-dir", str(tmp_path / "runs"),
                                    "--device", "cpu", "--repeats", "2", "--images", "2", "--warmup", "1",
                                    "--data", str(tmp_path / "data")), capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    job = re.search(r"submitted measurement job for grid 'slurm-measure' \(exclusive node\): (\d+)", out.stdout)
    assert job, out.stdout
    try:
        wait_for(lambda: _squeue(job[1]) == "", 240, "the measurement job to end")
    finally:
        _cancel(job[1])
    record = subprocess.run(["scontrol", "show", "job", job[1]], capture_output=True, text=True).stdout
    assert "OverSubscribe=NO" in record and "JobState=COMPLETED" in record, record  # a whole node, and done
    rows = db.read(lambda s: [(r.run_id, r.source, r.device_type, r.repeats, r.images, r.host)
                              for r in s.scalars(select(SpeedMeasurement).order_by(SpeedMeasurement.run_id))])
    assert rows == [(1, "measure", "cpu", 2, 2, host_name()), (2, "measure", "cpu", 2, 2, host_name())], rows
    _assert_no_password(secret_url, folder, [job[1]], tmp_path / "runs")


@pytest.mark.slurm
def test_bad_input_is_one_line_and_queues_nothing(cluster: None, secret_url: str, db: Database,
                                                  tmp_path: Path) -> None:
    _submit_grid(secret_url, tmp_path, "slurm-bad", runs=2, sleep=0.0)
    before = count_runs(db, queue.QUEUED)
    cases = {("--partition", "no-such-partition"): "invalid partition", ("--time", "1:2:3:4"): "time"}
    for (option, value), expected in cases.items():
        out = subprocess.run(runner_cmd(secret_url, "launch", "slurm", "--gpus", "0", "--folder",
                                        str(tmp_path / "bad"), option, value),
                             capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0].lower() and "sbatch" in lines[0], out.stderr
        assert not (tmp_path / "bad" / SECRET_NAME).exists()  # no copy of the URL left behind
    out = subprocess.run(runner_cmd(secret_url, "launch", "slurm", "--gpus", "0", "--folder", str(tmp_path / "nope"),
                                    "--measure", "nope"), capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "runner launch: no grid named 'nope' (grids: slurm-bad)" in out.stderr, out
    assert not (tmp_path / "nope").exists()  # refused before anything was written or submitted
    assert count_runs(db, queue.QUEUED) == before == 2


def test_no_slurm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="SLURM not found: sbatch, srun, scontrol not on PATH"):
        require_slurm()
    out = subprocess.run([sys.executable, "-m", "runner.cli", "--db", f"sqlite:///{tmp_path / 'r.db'}", "launch",
                          "slurm"], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PATH": str(tmp_path)})
    assert out.returncode == 2 and "SLURM not found" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_time_values_and_sbatch_options() -> None:
    from runner.slurm import time_minutes

    assert [time_minutes(t) for t in ("30", "1:30", "2:00:00", "1-0", "1-2:30", "0-0:0:1", "1:2:3:4", "x")] == \
        [30, 2, 120, 1440, 1590, 1, None, None]  # M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    params = SlurmSettings(time="2:00:00", gpus=4, cpus=32, mem_gb=1.5, constraint="v100", exclusive=True,
                           sbatch=["mail-type=END", "--hold"], setup=["module load cuda"]).parameters()
    assert params["time"] == 120 and params["additional_parameters"] == {"time": "2:00:00", "mail-type": "END",
                                                                         "hold": True}
    assert (params["gpus_per_node"], params["cpus_per_task"], params["mem"], params["constraint"]) == \
        (4, 32, "1536MB", "v100")
    assert params["exclusive"] is True and params["setup"] == ["module load cuda"]
    assert "gpus_per_node" not in SlurmSettings(gpus=0).parameters()


def test_the_url_file_must_be_private(tmp_path: Path) -> None:
    from runner.db import read_url_file, resolve_url
    from runner.errors import RunnerInputError
    from runner.slurm import write_url_file

    url = "postgresql+psycopg://me:hunter2@db/x"
    path = write_url_file(tmp_path / "launch", url)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_url_file(path) == url == resolve_url(None, path)
    path.chmod(0o644)
    with pytest.raises(RunnerInputError, match="readable or writable by others .mode 644.; chmod 600 it"):
        read_url_file(path)
    out = subprocess.run([sys.executable, "-m", "runner.cli", "--db-file", str(path), "status"], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 2 and "chmod 600" in out.stderr and "hunter2" not in out.stderr + out.stdout
