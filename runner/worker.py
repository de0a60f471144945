"""A worker: claims jobs and executes each in a child process, one slot per GPU (or CPU slot).

The parent never imports torch; it claims runs, starts ``python -m runner.job`` with
``CUDA_VISIBLE_DEVICES`` set (``torchrun`` for multi-GPU runs), heartbeats for its children,
requeues runs whose worker stopped heartbeating, stops children whose run was cancelled, and on
SIGINT/SIGTERM (and whatever else ``stop_signals`` names: ``runner.slurm`` adds SLURM's time-limit
warning, USR2, which its jobs ignore) stops its children and requeues their runs (without counting
the attempt). A worker killed outright takes its children with it (``PR_SET_PDEATHSIG``) and another
worker's stale sweep requeues its runs.

Measurements (``python -m runner.measure``) come second: a worker with a free slot claims a
compute run first, and only when none is left for it, and no runner job runs on its host, a
measurement job for its device type, together with every queued measurement of the same grid and
settings (``queue.claim_measurement``), all timed interleaved by one child process; while that
runs, no worker on the host starts anything.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from runner import queue
from runner.child import DEFAULT_RUNS_DIR
from runner.db import Database, host_name
from runner.executor import STOP_SIGNALS, Executor, Handle, job_command, job_env, log_path_for

log = logging.getLogger("runner.worker")


@dataclass
class Job(Handle):
    proc: subprocess.Popen[bytes] | None = None
    gpus: tuple[int, ...] = ()
    log_file: IO[bytes] | None = None


class Worker(Executor):
    role = "worker"

    def __init__(self, db: Database, *, gpus: list[int] | None = None, cpu_slots: int = 1,
                 runs_dir: str | Path = DEFAULT_RUNS_DIR, poll: float = 5.0, heartbeat: float = 10.0,
                 stale_after: float = 120.0, exit_when_empty: bool = False, name: str | None = None,
                 grace: float = 10.0, stop_signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        super().__init__(db, name=name or f"{socket.gethostname()}:{os.getpid()}", runs_dir=runs_dir, poll=poll,
                         heartbeat=heartbeat, stale_after=stale_after, exit_when_empty=exit_when_empty)
        self.gpu_mode = bool(gpus)
        self.device_type = "cuda" if self.gpu_mode else "cpu"
        self.host = host_name()
        self.free_gpus = list(gpus or [])
        self.free_cpu = 0 if gpus else cpu_slots
        self.cpu_threads = None if gpus else max(1, (os.cpu_count() or 1) // max(1, cpu_slots))
        self.max_gpus = len(self.free_gpus) if gpus else 1
        self.grace = grace
        self.stop_signals = stop_signals
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ claiming and starting

    def _claim_next(self) -> queue.Claim | None:
        free = len(self.free_gpus) if self.gpu_mode else self.free_cpu
        if free == 0 or any(kind == queue.MEASURE for kind, _ in self.jobs):
            return None
        claim = queue.claim(self.db, self.name, max_gpus=free if self.gpu_mode else 1, device=self.device_type,
                            host=self.host)
        if claim is None and not self.jobs:  # no compute work for us: measure, if the host is idle
            claim = queue.claim_measurement(self.db, self.name, device_type=self.device_type, host=self.host)
        return claim

    def _pending(self) -> int:
        return queue.pending(self.db, self.max_gpus, self.device_type)

    def _slots(self) -> str:
        return f"GPUs {','.join(map(str, self.free_gpus))}" if self.gpu_mode else f"{self.free_cpu} CPU slot(s)"

    def _start(self, claim: queue.Claim) -> None:
        if self.gpu_mode:
            gpus = tuple(self.free_gpus[:max(1, claim.gpus)])
            del self.free_gpus[:len(gpus)]
            visible = ",".join(map(str, gpus)) if claim.gpus > 0 else ""
        else:
            gpus, visible = (), ""
            self.free_cpu -= 1
        log_path = log_path_for(self.runs_dir, claim)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed when the job is reaped
        log_file.write(f"=== attempt {claim.attempt} on worker {self.name} (host {self.host}), "
                       f"CUDA_VISIBLE_DEVICES={visible!r}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log_file.flush()
        # A measurement is alone on the host: it keeps the threads it would get on an idle machine.
        threads = self.cpu_threads if claim.kind == queue.RUN else None
        proc = subprocess.Popen(
            job_command(claim, self.runs_dir), stdout=log_file, stderr=subprocess.STDOUT,
            env=job_env(self.db.url_string, claim, visible, direct_child=claim.gpus <= 1, cpu_threads=threads),
            start_new_session=True, preexec_fn=_ignore_warning_signal,
        )
        self.jobs[claim.key] = Job(claim, proc=proc, gpus=gpus, log_file=log_file)
        log.info("%s (%s, attempt %d) started: pid %d, devices %r",
                 claim.describe(), claim.grid, claim.attempt, proc.pid, visible or "cpu")

    # ------------------------------------------------------------------ ending and stopping

    def _finished(self) -> list[tuple[Handle, int | None, str | None]]:
        out: list[tuple[Handle, int | None, str | None]] = []
        for job in self.jobs.values():
            assert isinstance(job, Job) and job.proc is not None
            rc = job.proc.poll()
            if rc is not None:
                out.append((job, rc, None))
        return out

    def _release(self, handle: Handle) -> None:
        assert isinstance(handle, Job)
        if handle.log_file is not None:
            handle.log_file.close()
        if self.gpu_mode:
            self.free_gpus = sorted([*self.free_gpus, *handle.gpus])
        else:
            self.free_cpu += 1

    def _stop(self, handle: Handle) -> None:
        assert isinstance(handle, Job) and handle.proc is not None
        _signal_group(handle.proc, signal.SIGTERM)

    def _await_stopped(self) -> None:
        deadline = time.monotonic() + self.grace
        for job in self.jobs.values():
            assert isinstance(job, Job) and job.proc is not None
            try:
                job.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(job.proc, signal.SIGKILL)
                job.proc.wait()

    # ------------------------------------------------------------------ signals

    def _setup(self) -> None:
        log.info("worker %s on %s, host %s: %s", self.name, self.db.display_url, self.host,
                 f"GPUs {self.free_gpus}" if self.gpu_mode else f"{self.free_cpu} CPU slot(s)")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)

        def _stop(signum: int, _frame: Any) -> None:
            log.info("worker %s: got %s", self.name, signal.Signals(signum).name)
            self.stopping = True
            self.stopped_by = self.stopped_by or signum

        for sig in self.stop_signals:
            signal.signal(sig, _stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop when a job ends

    def _wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass


def _ignore_warning_signal() -> None:
    """In a job's process, before it starts: ignore ``SIGUSR2``, SLURM's time-limit warning, which SLURM
    sends to every process of the step; the worker alone acts on it (and stops its jobs)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
