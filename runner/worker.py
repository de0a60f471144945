"""A worker: claims runs and executes each in a child process, one slot per GPU (or CPU slot).

The parent never imports torch; it claims runs, starts ``python -m runner.job`` with
``CUDA_VISIBLE_DEVICES`` set (``torchrun`` for multi-GPU runs), heartbeats for its children,
requeues runs whose worker stopped heartbeating, stops children whose run was cancelled, and on
SIGINT/SIGTERM stops its children and requeues their runs (without counting the attempt). A
worker killed outright takes its children with it (``PR_SET_PDEATHSIG``) and another worker's
stale sweep requeues its runs.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from runner import queue
from runner.db import REPO_ROOT, Database
from runner.job import DEFAULT_RUNS_DIR, run_dir_for

log = logging.getLogger("runner.worker")


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def record_exit(db: Database, claim: queue.Claim, returncode: int, log_path: Path) -> str | None:
    """After a job process ended: if its run is still ours and running, the job died without
    recording a result: count a failed attempt (requeued or failed). Returns the new status."""
    if returncode < 0:
        what = f"job killed by signal {signal.Signals(-returncode).name}"
    else:
        what = f"job exited with code {returncode} without recording a result"
    return queue.fail(db, claim.run_id, claim.token, f"{what}; log {log_path}:\n{log_tail(log_path)}")


def job_env(db: Database, claim: queue.Claim, visible: str, direct_child: bool,
            cpu_threads: int | None = None) -> dict[str, str]:
    """The job's environment; ``cpu_threads`` caps its intra-op threads (CPU slots share the cores)
    unless the user set ``OMP_NUM_THREADS`` already."""
    env = dict(os.environ)
    env.update(FASTINST_DB=db.url_string, FASTINST_RUN_TOKEN=claim.token, CUDA_VISIBLE_DEVICES=visible,
               PYTHONUNBUFFERED="1")
    if cpu_threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(cpu_threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop("FASTINST_WORKER_PID", None)
    if direct_child:
        env["FASTINST_WORKER_PID"] = str(os.getpid())
    return env


def job_command(claim: queue.Claim, runs_dir: Path) -> list[str]:
    job = ["-m", "runner.job", str(claim.run_id), "--runs-dir", str(runs_dir)]
    if claim.gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={claim.gpus}", *job]
    return [sys.executable, *job]


@dataclass
class Job:
    claim: queue.Claim
    proc: subprocess.Popen[bytes]
    gpus: list[int]
    log_path: Path
    log_file: IO[bytes]
    lost: bool = False


class Worker:
    def __init__(self, db: Database, *, gpus: list[int] | None = None, cpu_slots: int = 1,
                 runs_dir: str | Path = DEFAULT_RUNS_DIR, poll: float = 5.0, heartbeat: float = 10.0,
                 stale_after: float = 120.0, exit_when_empty: bool = False, name: str | None = None,
                 grace: float = 10.0) -> None:
        if stale_after <= 2 * heartbeat:
            raise ValueError(f"stale_after ({stale_after}s) must exceed twice the heartbeat ({heartbeat}s)")
        self.db = db
        self.gpu_mode = bool(gpus)
        self.free_gpus = list(gpus or [])
        self.free_cpu = 0 if gpus else cpu_slots
        self.cpu_threads = None if gpus else max(1, (os.cpu_count() or 1) // max(1, cpu_slots))
        self.runs_dir = Path(runs_dir).resolve()
        self.poll, self.heartbeat, self.stale_after = poll, heartbeat, stale_after
        self.exit_when_empty, self.grace = exit_when_empty, grace
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.max_gpus = len(self.free_gpus) if gpus else 1
        self.jobs: dict[int, Job] = {}
        self.stopping = False
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        self._install_signals()
        next_beat = next_sweep = 0.0
        log.info("worker %s on %s: %s", self.name, self.db.display_url,
                 f"GPUs {self.free_gpus}" if self.gpu_mode else f"{self.free_cpu} CPU slot(s)")
        try:
            while not self.stopping:
                self._reap()
                now = time.monotonic()
                if now >= next_sweep:
                    for run_id in queue.sweep_stale(self.db, self.stale_after):
                        log.warning("run %d: its worker stopped heartbeating; requeued", run_id)
                    next_sweep = now + max(0.5, self.stale_after / 4)
                if self.jobs and now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.heartbeat
                claimed = self._fill()
                if (self.exit_when_empty and not self.jobs and not claimed
                        and queue.pending(self.db, self.max_gpus) == 0):
                    log.info("worker %s: queue empty, exiting", self.name)
                    return 0
                if not claimed:
                    self._wait(min(self.poll, self.heartbeat) if self.jobs else self.poll)
            return 0
        finally:
            self._shutdown()

    def _fill(self) -> bool:
        claimed = False
        while not self.stopping:
            capacity = len(self.free_gpus) if self.gpu_mode else min(self.free_cpu, 1)
            if capacity == 0:
                break
            device = "cuda" if self.gpu_mode else "cpu"
            claim = queue.claim(self.db, self.name, max_gpus=capacity if self.gpu_mode else 1, device=device)
            if claim is None:
                break
            self._start(claim)
            claimed = True
        return claimed

    def _start(self, claim: queue.Claim) -> None:
        if self.gpu_mode:
            gpus = self.free_gpus[:max(1, claim.gpus)]
            del self.free_gpus[:len(gpus)]
            visible = ",".join(map(str, gpus)) if claim.gpus > 0 else ""
        else:
            gpus, visible = [], ""
            self.free_cpu -= 1
        run_dir = run_dir_for(self.runs_dir, claim.grid, claim.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / "job.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed when the job is reaped
        log_file.write(f"=== attempt {claim.attempt} on worker {self.name}, "
                       f"CUDA_VISIBLE_DEVICES={visible!r}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            job_command(claim, self.runs_dir), stdout=log_file, stderr=subprocess.STDOUT,
            env=job_env(self.db, claim, visible, direct_child=claim.gpus <= 1, cpu_threads=self.cpu_threads),
            start_new_session=True,
        )
        self.jobs[claim.run_id] = Job(claim, proc, gpus, log_path, log_file)
        log.info("run %d (%s, attempt %d) started: pid %d, devices %r",
                 claim.run_id, claim.grid, claim.attempt, proc.pid, visible or "cpu")

    def _release(self, job: Job) -> None:
        job.log_file.close()
        if self.gpu_mode:
            self.free_gpus.extend(job.gpus)
            self.free_gpus.sort()
        else:
            self.free_cpu += 1
        del self.jobs[job.claim.run_id]

    def _reap(self) -> None:
        for job in list(self.jobs.values()):
            rc = job.proc.poll()
            if rc is None:
                continue
            self._release(job)
            if job.lost:
                log.info("run %d: stopped (no longer ours)", job.claim.run_id)
                continue
            # Exit code 0 means the job stored its success; any other exit may have left the run
            # running under our claim (a crash before the job could record its failure).
            status = record_exit(self.db, job.claim, rc, job.log_path) if rc != 0 else None
            log.info("run %d: exited %d%s", job.claim.run_id, rc, f"; {status}" if status else "")

    def _heartbeat(self) -> None:
        live = [(j.claim.run_id, j.claim.token) for j in self.jobs.values() if not j.lost]
        for run_id in queue.heartbeat(self.db, live):
            job = self.jobs[run_id]
            job.lost = True
            log.warning("run %d: cancelled or taken over; stopping its job", run_id)
            _signal_group(job.proc, signal.SIGTERM)

    def _shutdown(self) -> None:
        if not self.jobs:
            return
        log.info("worker %s: stopping %d job(s) and requeueing their runs", self.name, len(self.jobs))
        for job in self.jobs.values():
            _signal_group(job.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for job in list(self.jobs.values()):
            try:
                job.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(job.proc, signal.SIGKILL)
                job.proc.wait()
            self._release(job)
            if not job.lost:
                queue.fail(self.db, job.claim.run_id, job.claim.token,
                           f"worker {self.name} shut down; requeued", count_attempt=False)

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)

        def _stop(signum: int, _frame: Any) -> None:
            log.info("worker %s: got %s", self.name, signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop when a job ends

    def _wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
