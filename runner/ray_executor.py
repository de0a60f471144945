"""Ray executor: ``runner work --ray auto|local|ADDRESS``.

This process claims runs from the shared database like a worker (it is the worker of record,
named ``ray:<host>:<pid>``) and turns each into a Ray task with ``num_gpus`` from the run's
resources; the task starts ``python -m runner.job`` on whichever node Ray picks, with the
``CUDA_VISIBLE_DEVICES`` Ray assigned, and the job writes its results to the shared database.
The executor runs :class:`runner.executor.Executor`'s loop: it heartbeats for its tasks, cancels
tasks whose run was cancelled, and requeues runs on shutdown. Every node needs this repository's
environment and access to the database (use PostgreSQL for several machines) and, for logs, to
the runs directory.

The database URL reaches a task only through its node's environment, never as a task argument or
in a ``runtime_env`` (Ray logs those), so a password never shows in Ray's task records or logs:
``--ray local`` exports ``FASTINST_DB`` before starting Ray, whose workers inherit it; on a cluster,
start every node's Ray with ``FASTINST_DB`` exported. A task checks that its ``FASTINST_DB`` names
the executor's database (compared with the password masked) and fails with a clear error if not.
Measurements (alone or in interleaved groups) come second, as on a worker: when no compute run is
queued for it, the executor claims a measurement group for an alive node on which no runner job runs
(the queue's host check; a job records its node as the run's host when it starts), and runs it as one
task pinned to that node (``NodeAffinitySchedulingStrategy``, not soft) that asks for every CPU and GPU
the node has, so Ray starts nothing else there until it ends. A node with GPUs measures ``cuda`` jobs
first, then ``cpu`` ones.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import queue
from runner.child import DEFAULT_RUNS_DIR
from runner.db import Database, safe_url
from runner.executor import STOP_SIGNALS, Executor, Handle, job_command, job_env, log_path_for

log = logging.getLogger("runner.ray")


def ray_job(claim: queue.Claim, runs_dir: str, database: str) -> int:
    """The body of a Ray task: run the job as a child process, logging to its run directory.
    The database URL comes from this node's environment (``FASTINST_DB``); ``database`` is the
    executor's URL with the password masked, to check that both name one database."""
    url = os.environ.get("FASTINST_DB", "")
    node = socket.gethostname()
    if not url:
        raise RuntimeError(f"FASTINST_DB is not set on Ray node {node}: start its Ray with FASTINST_DB exported")
    if safe_url(url) != database:
        raise RuntimeError(f"FASTINST_DB on Ray node {node} is {safe_url(url)}, but the executor's database "
                           f"is {database}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if claim.gpus > 0 or claim.kind == queue.MEASURE else ""
    log_path = log_path_for(runs_dir, claim)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"=== attempt {claim.attempt} as Ray task on {socket.gethostname()}, "
                       f"CUDA_VISIBLE_DEVICES={visible!r}\n".encode())
        log_file.flush()
        env = job_env(url, claim, visible, direct_child=claim.gpus <= 1)
        return subprocess.call(job_command(claim, Path(runs_dir)), stdout=log_file, stderr=subprocess.STDOUT,
                               env=env)


@dataclass
class Task(Handle):
    ref: Any = None


@dataclass(frozen=True)
class Node:
    """An alive Ray node: its id, host name and total resources."""

    node_id: str
    host: str
    cpus: float
    gpus: float

    @property
    def device_types(self) -> tuple[str, ...]:
        """The measurements it can take, preferred first."""
        return ("cuda", "cpu") if self.gpus else ("cpu",)


class RayExecutor(Executor):
    def __init__(self, db: Database, *, address: str = "auto", runs_dir: str | Path = DEFAULT_RUNS_DIR,
                 poll: float = 5.0, heartbeat: float = 10.0, stale_after: float = 120.0,
                 exit_when_empty: bool = False, max_in_flight: int | None = None) -> None:
        super().__init__(db, name=f"ray:{socket.gethostname()}:{os.getpid()}", runs_dir=runs_dir, poll=poll,
                         heartbeat=heartbeat, stale_after=stale_after, exit_when_empty=exit_when_empty)
        self.address = address
        self.max_in_flight = max_in_flight
        self._old_handlers: dict[int, Any] = {}
        self._measuring: dict[tuple[str, int], Node] = {}  # measurement claims → the node they hold

    def _setup(self) -> None:
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if self.address == "local":  # the local Ray's worker processes inherit it
                os.environ["FASTINST_DB"] = self.db.url_string
            ray.init(address=None if self.address == "local" else self.address)
        resources = ray.cluster_resources()
        self.cluster_gpus = int(resources.get("GPU", 0))
        self.slots = self.max_in_flight or max(1, self.cluster_gpus or int(resources.get("CPU", 1)))
        # Without GPUs in the cluster, runs asking for at most one GPU run on CPU (as CPU slots do).
        self.max_gpus = self.cluster_gpus or 1
        self.remote = ray.remote(ray_job)

        def _stop(_signum: int, _frame: Any) -> None:
            self.stopping = True

        self._old_handlers = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}
        log.info("ray executor %s: %d GPU(s), up to %d task(s) at once", self.name, self.cluster_gpus, self.slots)

    def _teardown(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)

    def _claim_next(self) -> queue.Claim | None:
        if len(self.jobs) >= self.slots:
            return None
        return queue.claim(self.db, self.name, max_gpus=self.max_gpus, device="ray") or self._claim_measurement()

    def _nodes(self) -> list[Node]:
        return [Node(n["NodeID"], n["NodeManagerHostname"], float(n["Resources"].get("CPU", 0)),
                     float(n["Resources"].get("GPU", 0))) for n in self.ray.nodes() if n.get("Alive")]

    def _claim_measurement(self) -> queue.Claim | None:
        """A measurement group for a node nothing of the runner's runs on (see the module docstring)."""
        held = {node.node_id for node in self._measuring.values()}
        for node in self._nodes():
            if node.node_id in held:
                continue
            for device_type in node.device_types:
                claim = queue.claim_measurement(self.db, self.name, device_type=device_type, host=node.host)
                if claim is not None:
                    self._measuring[claim.key] = node
                    return claim
        return None

    def _pending(self) -> int:
        return queue.pending(self.db, self.max_gpus)

    def _slots(self) -> str:
        return f"Ray cluster: {self.cluster_gpus} GPU(s), up to {self.slots} task(s)"

    def _start(self, claim: queue.Claim) -> None:
        node = self._measuring.get(claim.key)
        if node is not None:  # the whole node, and that node only
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options: dict[str, Any] = dict(num_cpus=node.cpus, num_gpus=node.gpus,
                                           scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))
        else:
            options = dict(num_gpus=claim.gpus if self.cluster_gpus else 0, num_cpus=1)
        ref = self.remote.options(**options).remote(claim, str(self.runs_dir), self.db.display_url)
        self.jobs[claim.key] = Task(claim, ref=ref)
        log.info("%s (%s): submitted as a Ray task (%s)", claim.describe(), claim.grid,
                 f"the whole node {node.host}" if node else f"num_gpus={options['num_gpus']}")

    def _release(self, handle: Handle) -> None:
        self._measuring.pop(handle.claim.key, None)

    def _finished(self) -> list[tuple[Handle, int | None, str | None]]:
        tasks = {h.ref: h for h in self.jobs.values() if isinstance(h, Task)}
        if not tasks:
            return []
        done, _ = self.ray.wait(list(tasks), num_returns=len(tasks), timeout=0)
        out: list[tuple[Handle, int | None, str | None]] = []
        for ref in done:
            try:
                out.append((tasks[ref], self.ray.get(ref), None))
            except Exception as exc:  # the task itself failed (node lost, cancelled, ...)
                out.append((tasks[ref], None, f"Ray task failed: {exc!r}"))
        return out

    def _stop(self, handle: Handle) -> None:
        assert isinstance(handle, Task)
        self.ray.cancel(handle.ref, force=True)

    def _wait(self, timeout: float) -> None:
        refs = [h.ref for h in self.jobs.values() if isinstance(h, Task)]
        if refs:
            self.ray.wait(refs, num_returns=1, timeout=timeout)
        else:
            super()._wait(timeout)
