"""One run, executed in its own process: ``python -m runner.job RUN_ID [--db URL] [--runs-dir DIR]``.

A worker starts it with ``CUDA_VISIBLE_DEVICES`` set, the claim token in ``FASTINST_RUN_TOKEN``
and the database URL in ``FASTINST_DB`` (so a password never shows in the process list). The job
runs the run's stages (the ``fastinst.engine`` functions of docs/contracts.md, imported only when
a stage needs them), streams per-step training records to the database, and finally stores the
metrics, artifacts and ``succeeded`` in one transaction guarded by the claim token. Under
``torchrun`` every rank runs the stages and rank 0 alone writes to the database.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from fastinst.config import config_from_dict
from fastinst.engine.records import EvalRecord, RecordError, parse_record
from runner import queue
from runner.child import DEFAULT_RUNS_DIR, child_main, failed_attempt, run_dir_for, speed_row
from runner.db import (
    REPO_ROOT,
    SUCCEEDED,
    Artifact,
    Database,
    Metrics,
    Run,
    SpeedMeasurement,
    TrainRecord,
    host_name,
    utcnow,
)
from runner.stages import STAGES, JobContext

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pycocotools", "sqlalchemy", "fastinst-lab")


# --------------------------------------------------------------------------- results


def metrics_row(run_id: int, results: dict[str, dict[str, Any]], timings: dict[str, float]) -> Metrics:
    """Map stage results onto the metrics columns each stage produces (``Stage.metrics``); everything
    else goes to ``extra[stage]`` (a stage's ``speed`` entry goes to the speed table: ``speed_rows``)."""
    row = Metrics(run_id=run_id)
    extra: dict[str, Any] = {"timings": timings}
    for stage, result in results.items():
        columns = STAGES[stage].metrics
        for key in columns:
            if result.get(key) is not None:
                setattr(row, key, int(result[key]) if key == "params" else float(result[key]))
        rest = {k: v for k, v in result.items() if k not in columns and k != "speed"}
        if rest:
            extra[stage] = rest
    row.extra = json.loads(json.dumps(extra, default=str))
    return row


def speed_rows(run_id: int, results: dict[str, dict[str, Any]]) -> list[SpeedMeasurement]:
    """One ``speed`` row per stage result with a ``speed`` entry (stages whose ``Stage.speed`` is set)."""
    return [speed_row(run_id, result["speed"], "stage") for stage, result in results.items()
            if STAGES[stage].speed and "speed" in result]


def train_record(run_id: int, attempt: int, index: int, record: dict[str, Any]) -> TrainRecord:
    """Map the ``index``-th record of ``fastinst.engine.records``' schema onto a ``train_records`` row.

    A step record fills step, time, lr, loss (``total_loss``) and losses; an eval record only the step.
    """
    try:
        parsed = parse_record(record)
    except RecordError as exc:
        raise RecordError(f"run {run_id} record {index}: {exc}") from exc
    data = json.loads(json.dumps(parsed.to_dict(), default=str))
    if isinstance(parsed, EvalRecord):
        return TrainRecord(run_id=run_id, attempt=attempt, step=parsed.iteration, time=None, lr=None, loss=None,
                           losses={}, data=data)
    return TrainRecord(run_id=run_id, attempt=attempt, step=parsed.iteration, time=parsed.time, lr=parsed.lr,
                       loss=parsed.total_loss, losses=dict(parsed.losses), data=data)


class RecordSink:
    """Buffers per-step records and writes them in small batches (rank 0 only)."""

    def __init__(self, db: Database, run_id: int, token: str, attempt: int, period: float = 1.0) -> None:
        self.db, self.run_id, self.token, self.attempt, self.period = db, run_id, token, attempt, period
        self.buffer: list[dict[str, Any]] = []
        self.count = 0
        self.last_flush = time.monotonic()

    def __call__(self, record: dict[str, Any]) -> None:
        self.buffer.append(dict(record))
        if time.monotonic() - self.last_flush >= self.period:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []

        def _write(s: Any) -> None:
            queue.owned_run(s, self.run_id, self.token)
            for record in batch:
                s.add(train_record(self.run_id, self.attempt, self.count, record))
                self.count += 1

        self.db.write(_write)
        self.last_flush = time.monotonic()


# --------------------------------------------------------------------------- environment


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def visible_devices() -> str:
    """``cpu``, or the visible CUDA devices (with the GPU's name when torch is already loaded): the
    ``runs.device`` text. (The device a speed row was timed on is ``fastinst.deploy.bench.device_name``.)"""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not visible:
        return "cpu"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda:{visible} ({torch.cuda.get_device_name(0)})"
    return f"cuda:{visible}"


# --------------------------------------------------------------------------- main


def run_job(db: Database, run_id: int, token: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> int:
    """Run every stage of run ``run_id`` under claim ``token``; returns the process exit code."""
    rank = int(os.environ.get("RANK", "0"))
    started = time.time()
    info = db.read(lambda s: _load(s, run_id))
    run_dir = run_dir_for(runs_dir, info["grid"], run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict(info["config"])
    sink = RecordSink(db, run_id, token, info["attempt"])
    ctx = JobContext(run_id, info["attempt"], cfg, info["data"], info["stage_options"], run_dir,
                     sink if rank == 0 else (lambda _record: None))
    # Exclusive stages (bench) time the model: they become a measurement job, queued on success
    # and run when nothing else runs on its host (runner.measure), not here next to other jobs.
    compute = [s for s in info["stages"] if not STAGES[s].exclusive]
    deferred = [s for s in info["stages"] if STAGES[s].exclusive]
    print(f"run {run_id} attempt {info['attempt']}: stages {compute} in {run_dir}"
          + (f"; then measurement {deferred}" if deferred else ""), flush=True)
    try:
        if rank == 0:
            (run_dir / "config.yaml").write_text(cfg.to_yaml())
            db.write(lambda s: _record_environment(s, run_id, token, str(run_dir)))
        timings = {"startup_s": started - info["claimed_at"]}
        for stage in compute:
            t0 = time.perf_counter()
            run_stage = STAGES[stage].run
            assert run_stage is not None  # only exclusive stages have none, and they are deferred
            ctx.results[stage] = run_stage(ctx)
            timings[f"{stage}_s"] = time.perf_counter() - t0
            print(f"stage {stage}: {json.dumps(ctx.results[stage], default=str)}", flush=True)
        if rank == 0:
            sink.flush()
            db.write(lambda s: _store(s, run_id, token, ctx, timings, run_dir, deferred))
    except Exception as exc:
        return failed_attempt(db, exc, run_id, token, queue.RUN, record=rank == 0)
    print(f"run {run_id}: succeeded", flush=True)
    if rank == 0:
        next_seeds(db, info["grid"])
    return 0


def next_seeds(db: Database, grid: str) -> None:
    """The grid's seed policy takes its next step if this run was the last of the current one
    (``runner.seed_policy``); a failure there is logged, and the run stays succeeded."""
    from runner.seed_policy import apply_seed_policy

    try:
        added = apply_seed_policy(db, grid)
    except Exception:  # noqa: BLE001 - the run's own results are stored; the policy can be retried
        print(f"seed policy of grid {grid!r} not applied:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return
    for entry in added:
        print(f"seed policy: added seed {entry['seed']} to row {entry['row']} (run {entry['run_id']}): "
              f"{entry['reason']}", flush=True)


def _load(s: Any, run_id: int) -> dict[str, Any]:
    run = s.get(Run, run_id)
    if run is None:
        raise SystemExit(f"runner.job: no run {run_id}")
    return {
        "grid": run.grid.name, "config": run.config, "stages": run.stages.split(","),
        "stage_options": run.stage_options or {}, "data": run.data, "attempt": run.attempts,
        "claimed_at": (run.started_at or utcnow()).replace(tzinfo=timezone.utc).timestamp(),
    }


def _record_environment(s: Any, run_id: int, token: str, run_dir: str) -> None:
    run = queue.owned_run(s, run_id, token)
    run.git_commit = git_commit()
    run.packages = package_versions()
    run.run_dir = run_dir
    run.device = visible_devices()
    run.host = run.host or host_name()  # a Ray task learns its node only here


def _store(s: Any, run_id: int, token: str, ctx: JobContext, timings: dict[str, float], run_dir: Path,
           deferred: list[str]) -> None:
    """The run's results and ``succeeded``, plus a queued measurement job per ``deferred`` stage."""
    run = queue.owned_run(s, run_id, token)
    old = s.get(Metrics, run_id)
    if old is not None:
        s.delete(old)
        s.flush()
    s.add(metrics_row(run_id, ctx.results, timings))
    for row in speed_rows(run_id, ctx.results):
        s.add(row)
    for kind, path in [*ctx.artifacts, ("log", str(run_dir / "job.log")), ("config", str(run_dir / "config.yaml"))]:
        s.add(Artifact(run_id=run_id, kind=kind, path=path))
    if deferred:
        from runner.timing import stage_settings  # loads torch: only where a measurement follows

        for stage in deferred:
            queue.add_measurement(s, run, stage_settings(run, ctx.options_for(stage), ctx.weights(stage)),
                                  source="stage")
    run.device = visible_devices()
    run.status, run.finished_at, run.claim_token = SUCCEEDED, utcnow(), None


def main(argv: list[str] | None = None) -> int:
    return child_main(argv, "python -m runner.job", "run_id", __doc__.splitlines()[0],
                      lambda db, claims, runs_dir: run_job(db, *claims[0], runs_dir))


if __name__ == "__main__":
    sys.exit(main())
