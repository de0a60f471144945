"""The measurement phase: host-exclusive measurement jobs (real workers), ``runner measure``, bad input."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from runner_helpers import run_in_threads, runner_cmd, start_worker, wait_for, worker_logs, write_grid
from sqlalchemy import select, update
from test_train import TINY as TRAIN_TINY

from fastinst.data.synthetic import make_synthetic
from runner import cli, queue
from runner.db import (
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Artifact,
    Database,
    MeasureJob,
    Run,
    SpeedMeasurement,
    host_name,
    init_db,
    utcnow,
)
from runner.errors import RunnerInputError
from runner.job import run_job
from runner.measure import measure_grid
from runner.stages import load_grid

# test_train's tiny model, at a smaller test size, so timing it takes well under a second.
TINY = {**TRAIN_TINY, "input.min_size_test": 64, "input.max_size_test": 96}
BENCH = {"images": 2, "warmup": 1, "repeats": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, num_train=1, num_val=2, size=64, workers=1)
    return root


def tiny_grid(path: Path, name: str, data: Path | None, stages: list[str], seeds: int = 1,
              options: dict | None = None) -> Path:
    spec = {"name": name, "base": TINY, "stages": stages, "seeds": seeds, "resources": {"gpus": 0},
            "stage_options": options or {}}
    if data is not None:
        spec["data"] = str(data)
    path.write_text(yaml.safe_dump(spec))
    return path


def speed_rows(db: Database) -> list[tuple]:
    return db.read(lambda s: [(r.id, r.run_id, r.source, r.fps, r.device_type, r.repeats, r.images)
                              for r in s.scalars(select(SpeedMeasurement).order_by(SpeedMeasurement.id))])


def finish_in_process(db: Database, tmp_path: Path) -> None:
    """Run every queued run's job in this process (noop stages: instant)."""
    while (claim := queue.claim(db, "t", max_gpus=1, device="cpu", host=host_name())) is not None:
        assert run_job(db, claim.run_id, claim.token, tmp_path / "runs") == 0


# --------------------------------------------------------------------------- queue semantics


def test_measurement_claims_are_host_exclusive(db: Database, tmp_path: Path) -> None:
    queue.submit(db, load_grid(write_grid(tmp_path / "g.yaml", seeds=4)))
    settings = {"device_type": "cpu", "dtype": "float32", "backend": "eager", "images": 1, "warmup": 0,
                "repeats": 1, "weights": None}
    db.write(lambda s: queue.add_measurement(s, s.get(Run, 1), settings, source="stage"))
    busy = queue.claim(db, "w1", max_gpus=1, device="cpu", host="h1")
    assert busy is not None and busy.run_id == 1
    # h1 runs a run: no measurement there; h2 is idle: it measures, and then takes no compute run.
    assert queue.claim_measurement(db, "w1", device_type="cpu", host="h1") is None
    assert queue.claim_measurement(db, "w2", device_type="cuda", host="h2") is None  # wrong device type
    measuring = queue.claim_measurement(db, "w2", device_type="cpu", host="h2")
    assert measuring is not None and measuring.kind == queue.MEASURE and measuring.run_id == 1
    assert queue.claim(db, "w2", max_gpus=1, device="cpu", host="h2") is None
    assert queue.claim(db, "w1", max_gpus=1, device="cpu", host="h1") is not None  # other hosts carry on
    assert db.read(lambda s: queue.host_jobs(s, "h2")) == [
        {"kind": "measure", "id": measuring.job_id, "run_id": 1, "worker": "w2",
         "since": db.read(lambda s2: f"{s2.get(MeasureJob, measuring.job_id).started_at:%Y-%m-%d %H:%M:%S}")}]
    # A killed measurement is requeued with the attempt counted, like a run.
    assert queue.fail(db, measuring.job_id, measuring.token, "killed", kind=queue.MEASURE) == QUEUED
    job = db.read(lambda s: s.get(MeasureJob, measuring.job_id))
    assert job.attempts == 1 and "attempt 1: killed" in job.error
    assert queue.claim(db, "w2", max_gpus=1, device="cpu", host="h2") is not None
    assert [c["status"] for c in queue.measurement_counts(db)] == [QUEUED]
    # A ``runner measure`` that died while waiting would drain its host for ever: its stale job is failed
    # (by any sweep; ``owned_only`` sweeps, as runner measure does, leave runs and worker jobs alone).
    waiting = db.write(lambda s: queue.add_measurement(s, s.get(Run, 2), settings, source="measure", owner="m",
                                                       host="h3").id)
    assert queue.claim(db, "w3", max_gpus=1, device="cpu", host="h3") is None
    old = utcnow().replace(year=2000)
    db.write(lambda s: s.execute(update(Run).values(heartbeat_at=old)))
    db.write(lambda s: s.execute(update(MeasureJob).values(heartbeat_at=old)))
    assert queue.sweep_stale(db, 60, owned_only=True) == [("measure", waiting)]
    assert db.read(lambda s: s.get(MeasureJob, waiting).status) == FAILED
    assert queue.claim(db, "w3", max_gpus=1, device="cpu", host="h3") is not None
    assert len(queue.sweep_stale(db, 60)) == 3  # the runs claimed before, now stale


def test_host_exclusivity_holds_under_contention(db: Database, tmp_path: Path) -> None:
    """Four claimers on one host race compute and measurement claims: either one measurement runs there
    and nothing else, or only runs do (each check-and-claim is atomic per host)."""
    queue.submit(db, load_grid(write_grid(tmp_path / "g.yaml", seeds=12)))
    settings = {"device_type": "cpu", "dtype": "float32", "backend": "eager", "images": 1, "warmup": 0,
                "repeats": 1, "weights": None}
    for run_id in range(1, 5):
        db.write(lambda s, i=run_id: queue.add_measurement(s, s.get(Run, i), settings, source="stage"))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def _claimer(i: int) -> None:
        d = Database(db.url_string)
        try:
            barrier.wait()
            while True:
                got = [queue.claim_measurement(d, f"w{i}", device_type="cpu", host="h") if i % 2 else None,
                       queue.claim(d, f"w{i}", max_gpus=1, device="cpu", host="h")]
                if not any(got):
                    break
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            d.dispose()

    run_in_threads(_claimer, [(i,) for i in range(4)])
    assert not errors, errors
    jobs = db.read(lambda s: queue.host_jobs(s, "h"))
    measuring = [j for j in jobs if j["kind"] == "measure"]
    assert (len(measuring), len(jobs)) in ((1, 1), (0, 12)), jobs


def test_a_waiting_runner_measure_drains_its_host(db: Database, tmp_path: Path, data: Path) -> None:
    """While ``runner measure`` waits for a run on its host, no new run starts there; it measures once
    the run is done, and its row records that nothing else ran."""
    queue.submit(db, load_grid(tiny_grid(tmp_path / "m.yaml", "m", data, ["noop"])))
    finish_in_process(db, tmp_path)
    queue.submit(db, load_grid(write_grid(tmp_path / "busy.yaml", name="busy", seeds=2)))
    busy = queue.claim(db, "w", max_gpus=1, device="cpu", host=host_name())
    lines: list[str] = []
    thread = threading.Thread(target=measure_grid, args=(db, "m"),
                              kwargs={"device": "cpu", "repeats": 1, "images": 1, "poll": 0.05, "say": lines.append})
    thread.start()
    wait_for(lambda: any("waiting" in line for line in lines), 30, "runner measure to wait")
    assert f"run {busy.run_id} (worker w)" in next(line for line in lines if "waiting" in line)
    assert queue.claim(db, "w", max_gpus=1, device="cpu", host=host_name()) is None  # draining for it
    assert queue.claim(db, "w", max_gpus=1, device="cpu", host="elsewhere") is not None
    assert not [r for r in speed_rows(db) if r[2] == "measure"]
    db.write(lambda s: s.execute(update(Run).where(Run.id == busy.run_id).values(status=SUCCEEDED)))
    thread.join(timeout=120)
    assert not thread.is_alive()
    row = db.read(lambda s: s.scalars(select(SpeedMeasurement).where(SpeedMeasurement.source == "measure")).one())
    assert row.concurrent == [] and row.repeats == 1 and row.images == 1
    assert db.read(lambda s: s.scalars(select(MeasureJob.status)).all()) == [SUCCEEDED]


# --------------------------------------------------------------------------- real workers


def test_worker_measures_only_when_alone_on_its_host(db: Database, tmp_path: Path, data: Path) -> None:
    """Two CPU slots: one busy with an 8 s job while another run reaches its bench stage. The run succeeds
    at once (AP-side results visible), its measurement waits until the busy job is over, and the stored
    speed row says nothing else ran."""
    url = db.url_string
    for grid in (write_grid(tmp_path / "busy.yaml", name="busy", noop={"sleep": 8.0}),
                 tiny_grid(tmp_path / "b.yaml", "b", data, ["bench"], options={"bench": BENCH})):
        out = subprocess.run(runner_cmd(url, "submit", str(grid)), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    worker = start_worker(url, tmp_path, "w", "--cpu-slots", "2", "--exit-when-empty")
    try:
        wait_for(lambda: db.read(lambda s: s.scalars(select(MeasureJob)).first()) is not None, 60,
                 "the bench run to queue its measurement")
        state = db.read(lambda s: ({r.id: r.status for r in s.scalars(select(Run))},
                                   s.scalars(select(MeasureJob.status)).one()))
        status = subprocess.run(runner_cmd(url, "status"), capture_output=True, text=True, timeout=60)
        assert worker.wait(timeout=120) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    busy, bench = db.read(lambda s: list(s.scalars(select(Run).order_by(Run.id))))
    job = db.read(lambda s: s.scalars(select(MeasureJob)).one())
    row = db.read(lambda s: s.scalars(select(SpeedMeasurement)).one())
    logs = worker_logs(tmp_path)
    assert busy.status == bench.status == SUCCEEDED, logs[-2000:]
    # The bench run finished (its compute part is empty) while the busy job still ran; the measurement
    # waited for the busy job to end, and ran alone.
    assert bench.finished_at < busy.finished_at <= job.started_at, (bench.finished_at, busy.finished_at, job)
    assert state == ({busy.id: RUNNING, bench.id: SUCCEEDED}, QUEUED)
    assert "measurements pending or running" in status.stdout
    assert job.status == SUCCEEDED and job.attempts == 1 and job.speed_id == row.id and job.host == busy.host
    assert row.run_id == bench.id and row.source == "stage" and row.concurrent == []
    assert (row.device_type, row.dtype, row.backend, row.repeats, row.images, row.warmup) == \
        ("cpu", "float32", "eager", 2, 2, 1)
    assert row.fps_min <= row.fps <= row.fps_max and len(row.extra["fps_repeats"]) == 2
    assert row.extra["exclusive_host"] == busy.host and row.packages["torch"] and len(row.extra["load_1min"]) == 2
    log = (tmp_path / "runs" / "b" / str(bench.id) / f"measure-{job.id}.log").read_text()
    assert "=== attempt 1" in log and "Traceback" not in log


def children_of(pid: int) -> list[int]:
    """The ids of ``pid``'s child processes (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the measurement's process in /proc")
def test_killed_measurement_is_requeued_and_counted(tmp_path: Path, data: Path) -> None:
    """A measurement process killed mid-way: its job is requeued with the attempt counted and the log tail
    kept, and the worker takes it again; a worker shutting down requeues it without counting."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    db = init_db(url)
    grid = tiny_grid(tmp_path / "b.yaml", "b", data, ["bench"], options={"bench": {"images": 2, "repeats": 5000}})
    queue.submit(db, load_grid(grid))
    worker = start_worker(url, tmp_path, "w")
    try:
        wait_for(lambda: db.read(lambda s: s.scalars(select(MeasureJob.status)).first()) == RUNNING, 60,
                 "the measurement to start")
        wait_for(lambda: bool(children_of(worker.pid)), 30, "the measurement process")
        time.sleep(1.0)
        os.kill(children_of(worker.pid)[0], signal.SIGKILL)
        wait_for(lambda: db.read(lambda s: s.scalars(select(MeasureJob)).one().attempts) == 2, 60,
                 "the measurement to be claimed again")
        job = db.read(lambda s: s.scalars(select(MeasureJob)).one())
        assert job.status == RUNNING and "attempt 1: job killed by signal SIGKILL" in job.error
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    job = db.read(lambda s: s.scalars(select(MeasureJob)).one())
    assert job.status == QUEUED and job.attempts == 1 and "worker w shut down; requeued" in job.error
    assert db.read(lambda s: s.scalars(select(SpeedMeasurement)).all()) == []
    db.dispose()


# --------------------------------------------------------------------------- runner measure


@pytest.fixture
def finished_grid(db: Database, tmp_path: Path) -> Iterator[Database]:
    """Grid "t": two succeeded runs that never trained, each with a speed row from its noop stage."""
    queue.submit(db, load_grid(tiny_grid(tmp_path / "t.yaml", "t", None, ["noop"], seeds=2,
                                         options={"noop": {"metrics": {"AP": 0.5, "fps": 7.0}}})))
    finish_in_process(db, tmp_path)
    yield db


def test_runner_measure_adds_one_row_per_run_and_keeps_the_rest(finished_grid: Database, tmp_path: Path,
                                                               data: Path, capsys: pytest.CaptureFixture) -> None:
    db = finished_grid
    before = speed_rows(db)
    assert [r[2] for r in before] == ["stage", "stage"]
    args = ["--db", db.url_string, "measure", "t", "--device", "cpu", "--repeats", "2", "--images", "2",
            "--data", str(data), "--poll", "0.1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "measured 2, skipped 0" in out and "timed from the config alone" in out
    after = speed_rows(db)
    assert after[:2] == before  # the earlier rows are untouched
    new = after[2:]
    assert sorted(r[1] for r in new) == [1, 2]
    assert all(r[2:3] == ("measure",) and r[4:] == ("cpu", 2, 2) for r in new)
    # Re-measuring adds rows, never overwrites.
    assert cli.main(args) == 0
    assert speed_rows(db)[:4] == after and len(speed_rows(db)) == 6
    # The table's FPS is the mean over seeds of each run's newest row on the asked setting.
    capsys.readouterr()
    assert cli.main(["--db", db.url_string, "export", "t", "--format", "csv", "--device", "cpu"]) == 0
    newest = [r[3] for r in speed_rows(db)[4:]]
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 1 and float(table[0]["fps"]) == pytest.approx(sum(newest) / 2, rel=1e-4)


def test_runner_measure_bad_input(finished_grid: Database, tmp_path: Path, data: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    db = finished_grid
    base = ["--db", db.url_string, "measure"]
    assert cli.main([*base, "nope"]) == 2
    assert "runner measure: no grid named 'nope' in this database (grids: t)" in capsys.readouterr().err
    assert cli.main([*base, "t", "--device", "cuda:7"]) == 2
    assert "--device cuda:7: no such device here" in capsys.readouterr().err
    assert cli.main([*base, "t", "--dtype", "float8"]) == 2
    assert "--dtype 'float8': choose from" in capsys.readouterr().err
    assert cli.main([*base, "t", "--backend", "tensorrt"]) == 2
    assert "--backend 'tensorrt': choose from ['eager'" in capsys.readouterr().err
    # Run 1 "trained" but its checkpoint is gone; run 2 trained and recorded none: both skipped, with why.
    db.write(lambda s: s.add(Artifact(run_id=1, kind="checkpoint", path=str(tmp_path / "gone.pth"))))
    db.write(lambda s: s.execute(update(Run).where(Run.id == 2).values(stages="train,eval")))
    before = speed_rows(db)
    assert cli.main([*base, "t", "--device", "cpu", "--data", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"skipped: checkpoint {tmp_path / 'gone.pth'} not found" in out
    assert "run 2" in out and "no checkpoint was recorded" in out and "measured 0, skipped 2" in out
    assert speed_rows(db) == before
    # A corrupt checkpoint: a per-run skip with the reader's one-line error; its job is failed, not lost.
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    db.write(lambda s: s.add(Artifact(run_id=1, kind="checkpoint", path=str(tmp_path / "bad.pth"))))
    assert cli.main([*base, "t", "--device", "cpu", "--data", str(data)]) == 1
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().out
    assert db.read(lambda s: s.scalars(select(MeasureJob.status)).all()) == [FAILED]
    assert speed_rows(db) == before


def test_cli_keeps_tracebacks_of_bugs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    """Only the project's input errors become one-line messages; any other ValueError is a bug."""

    def _raise(exc: Exception) -> None:
        raise exc

    args = ["--db", f"sqlite:///{tmp_path / 'x.db'}", "status"]
    monkeypatch.setattr(cli, "cmd_status", lambda _args: _raise(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(args)
    monkeypatch.setattr(cli, "cmd_status", lambda _args: _raise(RunnerInputError("bad input")))
    assert cli.main(args) == 2
    assert capsys.readouterr().err == "runner status: bad input\n"


@pytest.mark.gpu
def test_runner_measure_on_cuda(finished_grid: Database, data: Path, capsys: pytest.CaptureFixture) -> None:
    """The same grid measured on the GPU: one cuda row per run, the CPU rows kept."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    db = finished_grid
    before = speed_rows(db)
    args = ["--db", db.url_string, "measure", "t", "--device", "cuda:0", "--repeats", "3", "--images", "2",
            "--data", str(data)]
    assert cli.main(args) == 0
    assert "measured 2, skipped 0" in capsys.readouterr().out
    rows = speed_rows(db)
    assert rows[:2] == before and [r[4] for r in rows[2:]] == ["cuda", "cuda"]
    device = db.read(lambda s: s.scalars(select(SpeedMeasurement.device).where(SpeedMeasurement.source == "measure"))
                     .all())
    assert all(d == torch.cuda.get_device_name(0) for d in device)


def test_a_stage_given_a_broken_checkpoint_stores_one_line(db: Database, tmp_path: Path, data: Path) -> None:
    """A job whose weights file is not a checkpoint fails its attempt with the reader's one-line message
    (no traceback, no advice to load unsafely); a real bug would keep its traceback."""
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    grid = tiny_grid(tmp_path / "g.yaml", "broken", data, ["eval"], options={"eval": {"weights": str(bad)}})
    queue.submit(db, load_grid(grid), max_attempts=1)
    claim = queue.claim(db, "t", max_gpus=1, device="cpu", host=host_name())
    assert claim is not None and run_job(db, claim.run_id, claim.token, tmp_path / "runs") == 1
    run = db.read(lambda s: s.get(Run, claim.run_id))
    assert run.status == "failed"
    assert run.error.strip() == f"attempt 1: CheckpointError: {bad}: not a readable PyTorch checkpoint (16 bytes of another format)"
