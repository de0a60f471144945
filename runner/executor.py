"""The one claim loop every executor runs, and how a claimed job becomes a process.

``Executor.run`` sweeps stale jobs, heartbeats its own, claims while it has room, exits when
asked to once nothing is left, and on shutdown stops its jobs and requeues them without spending
an attempt. Subclasses say how a job starts, ends and is stopped: :class:`runner.worker.Worker`
(child processes on this host) and :class:`runner.ray_executor.RayExecutor` (Ray tasks).

A job is ``python -m runner.job RUN_ID`` (a run's compute stages) or ``python -m runner.measure
JOB_ID [JOB_ID ...]`` (a group of measurements, timed interleaved); either gets the database URL and
its claim token(s) through the environment (``FASTINST_DB``; ``FASTINST_RUN_TOKEN``, comma-separated
in job order for a group), never on its command line. Every job of a group is heartbeated, requeued,
failed and stopped as a job on its own would be; the process is stopped once none of them is ours.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner import queue
from runner.child import run_dir_for
from runner.db import REPO_ROOT, Database, host_name
from runner.errors import RunnerInputError

log = logging.getLogger("runner.executor")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what a user or a scheduler stops a worker with
SIGNAL_SETTLE_S = 1.0


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def slurm_job() -> str | None:
    """The SLURM job this process runs in, as ``squeue`` names it (``1234``, or ``1234_5`` for index 5
    of array 1234); None outside SLURM."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID")


def log_path_for(runs_dir: str | Path, claim: queue.Claim) -> Path:
    """A run's job log (``job.log``) or a measurement's (``measure-<id>.log``) in the run's directory
    (a group's: its first job's)."""
    name = "job.log" if claim.kind == queue.RUN else f"measure-{claim.measure_id}.log"
    return run_dir_for(runs_dir, claim.grid, claim.run_id) / name


def record_exit(db: Database, claim: queue.Claim, returncode: int, log_path: Path) -> str | None:
    """After a job process ended: if its job is still ours and running, the process died without
    recording a result: count a failed attempt (requeued or failed). Returns the new status."""
    if returncode < 0:
        what = f"job killed by signal {signal.Signals(-returncode).name}"
    else:
        what = f"job exited with code {returncode} without recording a result"
    return queue.fail(db, claim.id, claim.token, f"{what}; log {log_path}:\n{log_tail(log_path)}",
                      kind=claim.kind)


def job_env(db_url: str, claim: queue.Claim, visible: str, direct_child: bool,
            cpu_threads: int | None = None) -> dict[str, str]:
    """The job's environment; ``cpu_threads`` caps its intra-op threads (CPU slots share the cores)
    unless the user set ``OMP_NUM_THREADS`` already."""
    env = dict(os.environ)
    env.update(FASTINST_DB=db_url, FASTINST_RUN_TOKEN=",".join(c.token for c in claim.members),
               CUDA_VISIBLE_DEVICES=visible, PYTHONUNBUFFERED="1")
    if cpu_threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(cpu_threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop("FASTINST_WORKER_PID", None)
    if direct_child:
        env["FASTINST_WORKER_PID"] = str(os.getpid())
    return env


def job_command(claim: queue.Claim, runs_dir: Path) -> list[str]:
    if claim.kind == queue.MEASURE:
        return [sys.executable, "-m", "runner.measure", *(str(c.id) for c in claim.members),
                "--runs-dir", str(runs_dir)]
    job = ["-m", "runner.job", str(claim.run_id), "--runs-dir", str(runs_dir)]
    if claim.gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={claim.gpus}", *job]
    return [sys.executable, *job]


@dataclass
class Handle:
    """One job (or measurement group) in flight: its claim, and the keys of its jobs the queue took away
    from us (cancelled, or requeued behind our back)."""

    claim: queue.Claim
    lost: set[tuple[str, int]] = field(default_factory=set)

    @property
    def ours(self) -> list[queue.Claim]:
        """The claims of its jobs still ours."""
        return [c for c in self.claim.members if c.key not in self.lost]


class Executor:
    """The claim/heartbeat/sweep/exit loop (see the module docstring); subclasses fill in the hooks."""

    role = "executor"

    def __init__(self, db: Database, *, name: str, runs_dir: str | Path, poll: float, heartbeat: float,
                 stale_after: float, exit_when_empty: bool) -> None:
        if stale_after <= 2 * heartbeat:
            raise RunnerInputError(f"--stale-after ({stale_after}s) must exceed twice --heartbeat ({heartbeat}s)")
        self.db, self.name = db, name
        self.runs_dir = Path(runs_dir).resolve()
        self.poll, self.heartbeat, self.stale_after = poll, heartbeat, stale_after
        self.exit_when_empty = exit_when_empty
        self.jobs: dict[tuple[str, int], Handle] = {}
        self.stopping = False
        self.stopped_by: int | None = None  # the signal that stopped the loop, if one did

    # ------------------------------------------------------------------ hooks

    def _setup(self) -> None:
        """Before the loop (signals, connections)."""

    def _teardown(self) -> None:
        """After the loop and the shutdown."""

    def _claim_next(self) -> queue.Claim | None:
        raise NotImplementedError

    def _start(self, claim: queue.Claim) -> None:
        """Start the claimed job and add its handle to ``self.jobs``."""
        raise NotImplementedError

    def _finished(self) -> list[tuple[Handle, int | None, str | None]]:
        """Jobs that ended since the last call: (handle, exit code, or None and why the job itself failed)."""
        raise NotImplementedError

    def _release(self, handle: Handle) -> None:
        """Give the job's slot back."""

    def _stop(self, handle: Handle) -> None:
        """Ask the job to stop (its run was cancelled or taken over, or we shut down)."""
        raise NotImplementedError

    def _await_stopped(self) -> None:
        """At shutdown, after ``_stop`` of every job: wait for them (forcing them after a grace period)."""

    def _pending(self) -> int:
        raise NotImplementedError

    def _slots(self) -> str:
        """What it runs jobs on, for ``runner status`` (e.g. ``GPUs 0,1``)."""
        raise NotImplementedError

    def _wait(self, timeout: float) -> None:
        time.sleep(timeout)

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        self._setup()
        queue.register_worker(self.db, self.name, role=self.role, host=host_name(), pid=os.getpid(),
                              slots=self._slots(), slurm_job=slurm_job())
        next_beat = next_sweep = next_seen = 0.0
        try:
            while not self.stopping:
                self._reap()
                now = time.monotonic()
                if now >= next_seen:
                    queue.worker_seen(self.db, self.name)
                    next_seen = now + self.heartbeat
                if now >= next_sweep:
                    for kind, job_id in queue.sweep_stale(self.db, self.stale_after):
                        log.warning("%s %d: its worker stopped heartbeating; requeued (or failed)", kind, job_id)
                    next_sweep = now + max(0.5, self.stale_after / 4)
                if self.jobs and now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.heartbeat
                claimed = self._fill()
                if self.exit_when_empty and not self.jobs and not claimed and self._pending() == 0:
                    log.info("%s %s: queue empty, exiting", self.role, self.name)
                    return 0
                if not claimed:
                    self._wait(min(self.poll, self.heartbeat) if self.jobs else self.poll)
            return 0
        finally:
            self._shutdown()
            queue.worker_seen(self.db, self.name, stopped=True)
            self._teardown()

    def _fill(self) -> bool:
        claimed = False
        while not self.stopping and (claim := self._claim_next()) is not None:
            self._start(claim)
            claimed = True
        return claimed

    def _reap(self) -> None:
        finished = self._finished()
        if any(rc is not None and -rc in STOP_SIGNALS for _handle, rc, _error in finished):
            # A scheduler (SLURM's scancel, requeue, time limit) signals the worker and its jobs together:
            # give our own signal a moment to arrive, so that the jobs go back without spending an attempt.
            time.sleep(SIGNAL_SETTLE_S)
        if self.stopping:  # the shutdown requeues them
            return
        for handle, rc, error in finished:
            self._release(handle)
            del self.jobs[handle.claim.key]
            what = handle.claim.describe()
            if not handle.ours:
                log.info("%s: stopped (no longer ours)", what)
            elif error is not None:
                for claim in handle.ours:
                    queue.fail(self.db, claim.id, claim.token, error, kind=claim.kind)
                log.warning("%s: %s", what, error)
            else:
                # Exit code 0 means the job stored its result; any other exit may have left it
                # running under our claim (a crash before the job could record its failure).
                log_path = log_path_for(self.runs_dir, handle.claim)
                statuses = [record_exit(self.db, claim, rc, log_path) for claim in handle.ours] if rc else []
                status = ", ".join(s for s in statuses if s)
                log.info("%s: exited %s%s", what, rc, f"; {status}" if status else "")

    def _heartbeat(self) -> None:
        ours = {claim.key: (claim, handle) for handle in self.jobs.values() for claim in handle.ours}
        touched: dict[tuple[str, int], Handle] = {}
        for key in queue.heartbeat(self.db, [claim for claim, _handle in ours.values()]):
            handle = ours[key][1]
            handle.lost.add(key)
            touched[handle.claim.key] = handle
        for handle in touched.values():
            if handle.ours:  # the rest of its group carries on (the lost jobs' rows will not be stored)
                lost = ", ".join(f"{kind} {job_id}" for kind, job_id in sorted(handle.lost))
                log.warning("%s: %s cancelled or taken over; the others carry on", handle.claim.describe(), lost)
            else:
                log.warning("%s: cancelled or taken over; stopping it", handle.claim.describe())
                self._stop(handle)

    def _shutdown(self) -> None:
        if not self.jobs:
            return
        log.info("%s %s: stopping %d job(s) and requeueing them", self.role, self.name, len(self.jobs))
        for handle in self.jobs.values():
            self._stop(handle)
        self._await_stopped()
        for handle in self.jobs.values():
            self._release(handle)
            for claim in handle.ours:
                queue.fail(self.db, claim.id, claim.token, f"{self.role} {self.name} shut down; requeued",
                           count_attempt=False, kind=claim.kind)
        self.jobs.clear()
