"""Ray executor: ``runner work --ray auto|local|ADDRESS``.

This process claims runs from the shared database like a worker (it is the worker of record,
named ``ray:<host>:<pid>``) and turns each into a Ray task with ``num_gpus`` from the run's
resources; the task starts ``python -m runner.job`` on whichever node Ray picks, with the
``CUDA_VISIBLE_DEVICES`` Ray assigned, and the job writes its results to the shared database.
The executor heartbeats for its tasks, cancels tasks whose run was cancelled, and requeues runs on
shutdown. Every node needs this repository's environment and access to the database URL (use
PostgreSQL for several machines) and, for logs, to the runs directory.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from runner import queue
from runner.db import Database
from runner.job import DEFAULT_RUNS_DIR, run_dir_for
from runner.worker import job_command, job_env, record_exit

log = logging.getLogger("runner.ray")


def ray_job(db_url: str, claim: queue.Claim, runs_dir: str) -> int:
    """The body of a Ray task: run the job as a child process, logging to its run directory."""
    db = Database(db_url)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if claim.gpus > 0 else ""
    log_path = run_dir_for(runs_dir, claim.grid, claim.run_id) / "job.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"=== attempt {claim.attempt} as Ray task on {socket.gethostname()}, "
                       f"CUDA_VISIBLE_DEVICES={visible!r}\n".encode())
        log_file.flush()
        env = job_env(db, claim, visible, direct_child=claim.gpus <= 1)
        rc = subprocess.call(job_command(claim, Path(runs_dir)), stdout=log_file, stderr=subprocess.STDOUT, env=env)
    db.dispose()
    return rc


class RayExecutor:
    def __init__(self, db: Database, *, address: str = "auto", runs_dir: str | Path = DEFAULT_RUNS_DIR,
                 poll: float = 5.0, heartbeat: float = 10.0, stale_after: float = 120.0,
                 exit_when_empty: bool = False, max_in_flight: int | None = None) -> None:
        self.db, self.address = db, address
        self.runs_dir = str(Path(runs_dir).resolve())
        self.poll, self.heartbeat, self.stale_after = poll, heartbeat, stale_after
        self.exit_when_empty = exit_when_empty
        self.max_in_flight = max_in_flight
        self.name = f"ray:{socket.gethostname()}:{os.getpid()}"
        self.in_flight: dict[Any, queue.Claim] = {}
        self.stopping = False

    def _connect(self) -> tuple[Any, int, int]:
        import ray

        if not ray.is_initialized():
            ray.init(address=None if self.address == "local" else self.address)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        slots = self.max_in_flight or max(1, gpus or int(resources.get("CPU", 1)))
        return ray, gpus, slots

    def run(self) -> int:
        ray, cluster_gpus, slots = self._connect()
        remote = ray.remote(ray_job)
        # Without GPUs in the cluster, runs asking for at most one GPU run on CPU (as CPU slots do).
        max_gpus = cluster_gpus if cluster_gpus else 1

        def _stop(signum: int, _frame: Any) -> None:
            self.stopping = True

        old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
        log.info("ray executor %s: %d GPU(s), up to %d task(s) at once", self.name, cluster_gpus, slots)
        next_beat = next_sweep = 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= next_sweep:
                    queue.sweep_stale(self.db, self.stale_after)
                    next_sweep = now + max(0.5, self.stale_after / 4)
                if self.in_flight and now >= next_beat:
                    claims = {c.run_id: ref for ref, c in self.in_flight.items()}
                    for run_id in queue.heartbeat(self.db, [(c.run_id, c.token) for c in self.in_flight.values()]):
                        log.warning("run %d: cancelled or taken over; cancelling its task", run_id)
                        ray.cancel(claims[run_id], force=True)
                    next_beat = now + self.heartbeat
                claimed = False
                while len(self.in_flight) < slots and not self.stopping:
                    claim = queue.claim(self.db, self.name, max_gpus=max_gpus, device="ray")
                    if claim is None:
                        break
                    num_gpus = claim.gpus if cluster_gpus else 0
                    ref = remote.options(num_gpus=num_gpus, num_cpus=1).remote(
                        self.db.url_string, claim, self.runs_dir)
                    self.in_flight[ref] = claim
                    claimed = True
                    log.info("run %d (%s): submitted as a Ray task (num_gpus=%d)", claim.run_id, claim.grid, num_gpus)
                if not self.in_flight and not claimed and self.exit_when_empty and queue.pending(self.db, max_gpus) == 0:
                    return 0
                if self.in_flight:
                    done, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=min(self.poll, self.heartbeat))
                    for ref in done:
                        self._finished(ray, ref)
                elif not claimed:
                    time.sleep(self.poll)
            return 0
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._shutdown(ray)

    def _finished(self, ray: Any, ref: Any) -> None:
        claim = self.in_flight.pop(ref)
        log_path = run_dir_for(self.runs_dir, claim.grid, claim.run_id) / "job.log"
        try:
            rc = ray.get(ref)
        except Exception as exc:  # the task itself failed (node lost, cancelled, ...)
            queue.fail(self.db, claim.run_id, claim.token, f"Ray task failed: {exc!r}")
            return
        status = record_exit(self.db, claim, rc, log_path) if rc != 0 else None
        log.info("run %d: task exited %d%s", claim.run_id, rc, f"; {status}" if status else "")

    def _shutdown(self, ray: Any) -> None:
        for ref, claim in self.in_flight.items():
            ray.cancel(ref, force=True)
            queue.fail(self.db, claim.run_id, claim.token, f"executor {self.name} shut down; requeued",
                       count_attempt=False)
        self.in_flight.clear()
