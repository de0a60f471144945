"""The measurement phase: host-exclusive measurement jobs (real workers), ``runner measure``, bad input, and
interleaved measurement (the rotation, ``bench_interleaved``, ``runner measure``, the workers' groups)."""

from __future__ import annotations

import csv
import io
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from runner_helpers import (
    reaped,
    run_in_threads,
    runner_cmd,
    start_worker,
    terminate,
    wait_for,
    worker_logs,
    write_grid,
)
from sqlalchemy import select, update
from test_train import TINY as TRAIN_TINY

from fastinst.checkpoint import CheckpointError
from fastinst.config import config_from_dict
from fastinst.data.spec import DataSpec
from fastinst.data.synthetic import make_synthetic
from fastinst.deploy import bench as bench_module
from fastinst.deploy.bench import BenchEntry, bench_interleaved, rotation
from runner import cli, queue
from runner.db import (
    CANCELLED,
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
from runner.stages import load_stage_grid

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
    queue.submit(db, load_stage_grid(write_grid(tmp_path / "g.yaml", seeds=4)))
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
        {"kind": "measure", "id": measuring.id, "run_id": 1, "worker": "w2",
         "since": db.read(lambda s2: f"{s2.get(MeasureJob, measuring.id).started_at:%Y-%m-%d %H:%M:%S}")}]
    # A killed measurement is requeued with the attempt counted, like a run.
    assert queue.fail(db, measuring.id, measuring.token, "killed", kind=queue.MEASURE) == QUEUED
    job = db.read(lambda s: s.get(MeasureJob, measuring.id))
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
    """Four claimers on one host race compute and measurement claims: either one measurement group runs
    there (one claimer's, all four jobs: they share grid and settings) and nothing else, or only runs do
    (each check-and-claim is atomic per host)."""
    queue.submit(db, load_stage_grid(write_grid(tmp_path / "g.yaml", seeds=12)))
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
    assert (len(measuring), len(jobs)) in ((4, 4), (0, 12)) and len({j["worker"] for j in measuring}) <= 1, jobs


def test_a_waiting_runner_measure_drains_its_host(db: Database, tmp_path: Path, data: Path) -> None:
    """While ``runner measure`` waits for a run on its host, no new run starts there; it measures once
    the run is done, and its row records that nothing else ran."""
    queue.submit(db, load_stage_grid(tiny_grid(tmp_path / "m.yaml", "m", data, ["noop"])))
    finish_in_process(db, tmp_path)
    queue.submit(db, load_stage_grid(write_grid(tmp_path / "busy.yaml", name="busy", seeds=2)))
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
    with reaped(worker):
        wait_for(lambda: db.read(lambda s: s.scalars(select(MeasureJob)).first()) is not None, 60,
                 "the bench run to queue its measurement")
        state = db.read(lambda s: ({r.id: r.status for r in s.scalars(select(Run))},
                                   s.scalars(select(MeasureJob.status)).one()))
        status = subprocess.run(runner_cmd(url, "status"), capture_output=True, text=True, timeout=60)
        assert worker.wait(timeout=120) == 0
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
    queue.submit(db, load_stage_grid(grid))
    worker = start_worker(url, tmp_path, "w")
    with reaped(worker):
        wait_for(lambda: db.read(lambda s: s.scalars(select(MeasureJob.status)).first()) == RUNNING, 60,
                 "the measurement to start")
        wait_for(lambda: bool(children_of(worker.pid)), 30, "the measurement process")
        time.sleep(1.0)
        os.kill(children_of(worker.pid)[0], signal.SIGKILL)
        wait_for(lambda: db.read(lambda s: s.scalars(select(MeasureJob)).one().attempts) == 2, 60,
                 "the measurement to be claimed again")
        job = db.read(lambda s: s.scalars(select(MeasureJob)).one())
        assert job.status == RUNNING and "attempt 1: job killed by signal SIGKILL" in job.error
        assert terminate(worker) == 0
    job = db.read(lambda s: s.scalars(select(MeasureJob)).one())
    assert job.status == QUEUED and job.attempts == 1 and "worker w shut down; requeued" in job.error
    assert db.read(lambda s: s.scalars(select(SpeedMeasurement)).all()) == []
    db.dispose()


# --------------------------------------------------------------------------- runner measure


@pytest.fixture
def finished_grid(db: Database, tmp_path: Path) -> Iterator[Database]:
    """Grid "t": two succeeded runs that never trained, each with a speed row from its noop stage."""
    queue.submit(db, load_stage_grid(tiny_grid(tmp_path / "t.yaml", "t", None, ["noop"], seeds=2,
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
    assert "runner measure: no grid named 'nope' (grids: t)" in capsys.readouterr().err
    assert cli.main([*base, "t", "--device", "cuda:7"]) == 2
    assert "--device cuda:7: no such device here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices, from fastinst.grid.SPEED_DTYPES
        cli.main([*base, "t", "--dtype", "float8"])
    assert exit_info.value.code == 2
    assert "argument --dtype: invalid choice: 'float8' (choose from float32, float16, bfloat16)" in \
        capsys.readouterr().err.replace("'float32', 'float16', 'bfloat16'", "float32, float16, bfloat16")
    with pytest.raises(SystemExit) as exit_info:  # choices from fastinst.registry.BACKEND_NAMES
        cli.main([*base, "t", "--backend", "tensorrt"])
    assert exit_info.value.code == 2 and "argument --backend: invalid choice: 'tensorrt'" in capsys.readouterr().err
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
    queue.submit(db, load_stage_grid(grid), max_attempts=1)
    claim = queue.claim(db, "t", max_gpus=1, device="cpu", host=host_name())
    assert claim is not None and run_job(db, claim.run_id, claim.token, tmp_path / "runs") == 1
    run = db.read(lambda s: s.get(Run, claim.run_id))
    assert run.status == "failed"
    assert run.error.strip() == f"attempt 1: CheckpointError: {bad}: not a readable PyTorch checkpoint (16 bytes of another format)"


# --------------------------------------------------------------------------- interleaved measurement


def rows_by_run(db: Database, source: str) -> dict[int, SpeedMeasurement]:
    return db.read(lambda s: {r.run_id: r for r in s.scalars(
        select(SpeedMeasurement).where(SpeedMeasurement.source == source).order_by(SpeedMeasurement.id))})


def measure_jobs(db: Database) -> list[MeasureJob]:
    return db.read(lambda s: list(s.scalars(select(MeasureJob).order_by(MeasureJob.id))))


def assert_one_group(rows: list[SpeedMeasurement], rounds: int) -> None:
    """The rows were timed together: one group id, the same runs, rotated positions, ``rounds`` rounds each."""
    runs = [row.run_id for row in rows]
    n = len(runs)
    for i, row in enumerate(rows):
        info = row.extra["interleave"]
        assert info["group"] == rows[0].extra["interleave"]["group"] and info["runs"] == runs
        assert info["position"] == [rotation(n, r).index(i) for r in range(rounds)]
        assert row.repeats == rounds and len(row.extra["fps_repeats"]) == rounds and row.concurrent == []
        assert row.fps == pytest.approx(statistics.median(row.extra["fps_repeats"]))
        assert (row.fps_min, row.fps_max) == (min(row.extra["fps_repeats"]), max(row.extra["fps_repeats"]))


def test_rotation_starts_each_round_one_model_later() -> None:
    assert [rotation(3, r) for r in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    assert rotation(1, 5) == [0]
    # Over ``n`` rounds every model holds every position exactly once.
    for n in (2, 3, 5):
        assert all(sorted(rotation(n, r).index(m) for r in range(n)) == list(range(n)) for m in range(n))


def test_bench_interleaved_builds_warms_up_then_rotates(data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """All models warm up before the first round; each round times every model once in the rotated order;
    images load once per test size; an entry whose weights fail is left out with its error."""
    calls: list[tuple[int, int]] = []
    loads: list[tuple[int, int]] = []
    time_model, load_images = bench_module.time_model, bench_module.load_images

    def _time(model: Any, images: list, *args: Any) -> list[float]:
        calls.append((id(model), len(images)))
        return time_model(model, images, *args)

    def _load(cfg: Any, *args: Any) -> list:
        loads.append((cfg.input.min_size_test, cfg.input.max_size_test))
        return load_images(cfg, *args)

    monkeypatch.setattr(bench_module, "time_model", _time)
    monkeypatch.setattr(bench_module, "load_images", _load)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    cfg = config_from_dict(TINY)
    small = config_from_dict({**TINY, "input.min_size_test": 48, "input.max_size_test": 64})
    entries = [BenchEntry(cfg), BenchEntry(small), BenchEntry(cfg, tmp_path / "bad.pth"), BenchEntry(cfg)]
    results = bench_interleaved(entries, DataSpec.from_folder(data), images=2, device="cpu", warmup=1, repeats=4,
                                skip=(CheckpointError,))
    assert loads == [(64, 96), (48, 64)]
    assert isinstance(results[2]["error"], CheckpointError) and set(results[2]) == {"error"}
    warmups, timed = calls[:3], calls[3:]
    assert [n for _model, n in warmups] == [1, 1, 1] and [n for _model, n in timed] == [2] * 12
    models = [model for model, _n in warmups]  # entries 0, 1 and 3, in entry order
    assert [model for model, _n in timed] == [models[k] for r in range(4) for k in rotation(3, r)]
    for i, result in zip((0, 1, 3), (results[0], results[1], results[3])):
        assert result["positions"] == [rotation(3, r).index((0, 1, 3).index(i)) for r in range(4)]
        assert result["repeats"] == 4 and len(result["fps_repeats"]) == 4 and result["num_images"] == 2
    assert results[1]["test_size"] == [48, 64] and results[0]["test_size"] == [64, 96]


def test_runner_measure_interleaves_the_runs(db: Database, tmp_path: Path, data: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    queue.submit(db, load_stage_grid(tiny_grid(tmp_path / "t.yaml", "t", None, ["noop"], seeds=3)))
    finish_in_process(db, tmp_path)
    args = ["--db", db.url_string, "measure", "t", "--device", "cpu", "--repeats", "3", "--images", "2",
            "--data", str(data), "--poll", "0.1", "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "3 round(s), interleaved" in out and "runs 1, 2, 3: interleaved" in out and "measured 3, skipped 0" in out
    rows = rows_by_run(db, "measure")
    assert sorted(rows) == [1, 2, 3]
    assert_one_group([rows[run] for run in rows[1].extra["interleave"]["runs"]], 3)
    # One measurement job per run, owned by this process, started together once the host was free.
    measured = measure_jobs(db)
    assert [(j.status, j.source, j.speed_id) for j in measured] == [(SUCCEEDED, "measure", rows[j.run_id].id)
                                                                    for j in measured]
    assert max(j.started_at for j in measured) <= min(j.finished_at for j in measured)
    # --no-interleave: one run after another, as before (no "interleave" entry).
    assert cli.main([*args, "--no-interleave", "--repeats", "2"]) == 0
    assert "2 repeat(s), host" in capsys.readouterr().out
    again = [j for j in measure_jobs(db) if j.id not in {m.id for m in measured}]
    assert all(a.finished_at <= b.started_at for a, b in zip(again, again[1:]))
    assert all("interleave" not in r.extra and r.repeats == 2 for r in rows_by_run(db, "measure").values())


def submit_grid(url: str, grid: Path) -> None:
    out = subprocess.run(runner_cmd(url, "submit", str(grid)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_worker_drain_measures_a_grid_as_one_group(tmp_path: Path, data: Path) -> None:
    """``make demo``'s drain: every run of the grid trains first, then one worker measures all their queued
    measurement jobs in one child process, interleaved, each job storing its own row."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    db = init_db(url)
    submit_grid(url, tiny_grid(tmp_path / "b.yaml", "b", data, ["bench"], seeds=3,
                              options={"bench": {"images": 2, "warmup": 1, "repeats": 3}}))
    worker = start_worker(url, tmp_path, "w", "--cpu-slots", "2", "--exit-when-empty")
    with reaped(worker):
        assert worker.wait(timeout=180) == 0
    logs = worker_logs(tmp_path)
    measured = measure_jobs(db)  # the group's order (two runs trained at once: either may have queued first)
    rows = rows_by_run(db, "stage")
    order = [j.run_id for j in measured]
    assert sorted(order) == [1, 2, 3], logs[-3000:]
    assert all((j.status, j.attempts, j.speed_id) == (SUCCEEDED, 1, rows[j.run_id].id) for j in measured)
    assert_one_group([rows[run] for run in order], 3)
    assert f"measurements 1, 2, 3 (runs {', '.join(map(str, order))}, interleaved)" in logs
    log = (tmp_path / "runs" / "b" / str(order[0]) / "measure-1.log").read_text()  # the group's one process
    assert all(f"measurement {j.id} of run {j.run_id} attempt 1" in log for j in measured)
    assert "Traceback" not in log
    db.dispose()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the measurement's process in /proc")
def test_killed_group_requeues_every_job(tmp_path: Path, data: Path) -> None:
    """One child process measures the group; killed, every job of it is requeued with the attempt counted,
    and they are claimed again together; a worker shutting down requeues them all without counting."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    db = init_db(url)
    submit_grid(url, tiny_grid(tmp_path / "b.yaml", "b", data, ["bench"], seeds=2,
                              options={"bench": {"images": 2, "repeats": 5000}}))
    worker = start_worker(url, tmp_path, "w")
    with reaped(worker):
        wait_for(lambda: [j.status for j in measure_jobs(db)] == [RUNNING, RUNNING], 90, "the group to start")
        wait_for(lambda: bool(children_of(worker.pid)), 30, "the measurement process")
        (child,) = children_of(worker.pid)
        assert Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[3:5] == [b"1", b"2"]
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: [j.attempts for j in measure_jobs(db)] == [2, 2], 60, "the group to be claimed again")
        assert all(j.status == RUNNING and "attempt 1: job killed by signal SIGKILL" in j.error
                   for j in measure_jobs(db))
        assert terminate(worker) == 0
    assert all(j.status == QUEUED and j.attempts == 1 and "worker w shut down; requeued" in j.error
               for j in measure_jobs(db))
    assert rows_by_run(db, "stage") == {}
    db.dispose()


def test_cancelling_jobs_of_a_group(tmp_path: Path, data: Path) -> None:
    """Cancelling one job of a running group: the others carry on and store their rows (the cancelled one
    stores none). Cancelling the whole grid: the process is stopped and nothing is left running."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    db = init_db(url)
    submit_grid(url, tiny_grid(tmp_path / "b.yaml", "b", data, ["bench"], seeds=2,
                              options={"bench": {"images": 2, "warmup": 1, "repeats": 20}}))
    submit_grid(url, tiny_grid(tmp_path / "c.yaml", "c", data, ["bench"], seeds=2,
                              options={"bench": {"images": 2, "repeats": 5000}}))
    worker = start_worker(url, tmp_path, "w", "--exit-when-empty")
    with reaped(worker):
        wait_for(lambda: [j.status for j in measure_jobs(db)][:2] == [RUNNING, RUNNING], 90, "b's group to start")
        queue.cancel(db, run_ids=[1])
        wait_for(lambda: [j.status for j in measure_jobs(db)][2:] == [RUNNING, RUNNING], 120, "c's group to start")
        queue.cancel(db, grid="c")
        assert worker.wait(timeout=60) == 0
    logs = worker_logs(tmp_path)
    assert [(j.run_id, j.status) for j in measure_jobs(db)] == \
        [(1, CANCELLED), (2, SUCCEEDED), (3, CANCELLED), (4, CANCELLED)], logs[-3000:]
    rows = rows_by_run(db, "stage")
    assert list(rows) == [2] and rows[2].extra["interleave"]["runs"] == [1, 2]  # run 1 was timed, not stored
    assert "measurements 1, 2 (runs 1, 2, interleaved): measure 1 cancelled or taken over; the others carry on" in logs
    assert "measurements 3, 4 (runs 3, 4, interleaved): cancelled or taken over; stopping it" in logs
    db.dispose()
