"""``runner launch slurm``: workers, and measurements, as SLURM jobs submitted through submitit.

A worker job runs a :class:`runner.worker.Worker` with one slot per GPU SLURM allocated it (CPU
slots when it asks for none) and exits once the queue has nothing left for it. N workers go in as one
job array (one ``sbatch``). A measurement job (``--measure GRID``) asks for a whole node of the
reference GPU type (``--exclusive``, ``--constraint``) and runs ``runner measure GRID`` there.

The database URL reaches a job only through a file that its owner alone can read: ``--db-file``, or
one ``launch`` writes into its folder with mode 0600. It is never an argument, a line of the batch
script, part of the job's environment (``launch`` drops ``FASTINST_DB`` and ``PGPASSWORD`` from what
``sbatch`` exports), SLURM's job record or a log line (URLs are logged with the password masked).

Time limits and preemption: submitit asks SLURM for ``USR2`` ``signal_delay_s`` before the time limit.
On it the worker stops its jobs, requeues them without spending an attempt (a training run resumes
from its last checkpoint), and, while the queue still has work for it, requeues its own SLURM job
through submitit's checkpointing (at most ``max_requeues`` times). ``scancel``, ``scontrol requeue``
and preemption send ``SIGTERM``: the worker requeues its jobs the same way and exits (SLURM requeues
the job itself where that was asked). Its child processes ignore ``USR2`` (SLURM signals every process
of the step), so only the worker decides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import queue
from runner.child import DEFAULT_RUNS_DIR
from runner.db import Database, read_url_file
from runner.errors import RunnerInputError
from runner.executor import STOP_SIGNALS
from runner.worker import Worker

log = logging.getLogger("runner.slurm")

SECRET_NAME = "db-url"
SCRUBBED_ENV = ("FASTINST_DB", "PGPASSWORD")
_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


class SlurmError(RunnerInputError):
    """SLURM refused a submission, or is not installed; the message is one line."""


def time_minutes(text: str) -> int | None:
    """Minutes of a SLURM ``--time`` value (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``),
    rounded up; None when it is not one of those (``sbatch`` then says what is wrong)."""
    m = _TIME.match(text.strip())
    if not m:
        return None
    days = int(m["d"] or 0)
    parts = [int(p) for p in (m["a"], m["b"], m["c"]) if p is not None]
    if m["d"] is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # M or M:S
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def write_url_file(folder: Path, url: str) -> Path:
    """The URL in ``folder/db-url``, readable by its owner alone (the folder too)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(stat.S_IRWXU)
    path = folder / SECRET_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def allocated_gpus() -> list[int]:
    """The GPUs SLURM gave this job (``CUDA_VISIBLE_DEVICES`` as SLURM sets it), as the ids the worker
    hands on to its children."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [int(g) for g in visible.split(",") if g.strip().isdigit()]


@dataclass
class SlurmSettings:
    """What each submitted job asks SLURM for."""

    partition: str | None = None
    time: str = "4:00:00"
    gpus: int = 1
    cpus: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    sbatch: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    signal_delay_s: int = 120
    max_requeues: int = 20
    job_name: str = "fastinst-worker"

    def parameters(self) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` keywords. ``time`` goes to ``sbatch`` as written
        (SLURM checks it); submitit keeps it in minutes too, to tell a time-out from a preemption."""
        extra: dict[str, Any] = {"time": self.time}
        for line in self.sbatch:
            key, sep, value = line.strip().removeprefix("--").partition("=")
            if not key:
                raise RunnerInputError(f"--sbatch {line!r}: expected OPTION[=VALUE], e.g. --sbatch mail-type=END")
            extra[key] = value if sep else True
        params: dict[str, Any] = {
            "job_name": self.job_name, "time": time_minutes(self.time) or 60, "nodes": 1, "ntasks_per_node": 1,
            "signal_delay_s": self.signal_delay_s, "additional_parameters": extra, "setup": list(self.setup),
        }
        optional = {"gpus_per_node": self.gpus or None, "cpus_per_task": self.cpus,
                    "mem": None if self.mem_gb is None else f"{int(self.mem_gb * 1024)}MB",
                    "partition": self.partition, "account": self.account, "qos": self.qos,
                    "constraint": self.constraint, "exclusive": self.exclusive or None}
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


class WorkerJob:
    """The callable a worker job runs (pickled by submitit; it holds the URL file's path, not the URL)."""

    def __init__(self, url_file: str, runs_dir: str, cpu_slots: int, poll: float, heartbeat: float,
                 stale_after: float, grace: float) -> None:
        self.url_file, self.runs_dir, self.cpu_slots = url_file, runs_dir, cpu_slots
        self.poll, self.heartbeat, self.stale_after, self.grace = poll, heartbeat, stale_after, grace

    def __call__(self) -> int:
        _configure_logging()
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint, requeue this job, exit
        db = Database(read_url_file(self.url_file))
        gpus = allocated_gpus()
        worker = Worker(db, gpus=gpus or None, cpu_slots=self.cpu_slots, runs_dir=self.runs_dir, poll=self.poll,
                        heartbeat=self.heartbeat, stale_after=self.stale_after, exit_when_empty=True,
                        grace=self.grace, stop_signals=(*STOP_SIGNALS, signal.SIGUSR2))
        rc = worker.run()
        if worker.stopped_by == signal.SIGUSR2:
            left = queue.pending(db, worker.max_gpus, worker.device_type)
            if not left:
                log.info("worker %s: time limit near; nothing left to do, not requeued", worker.name)
            elif callable(requeue):
                log.info("worker %s: time limit near; %d job(s) left in the queue: requeueing this SLURM job",
                         worker.name, left)
                requeue(signal.SIGUSR2, None)  # checkpoint() → scontrol requeue → exits this process
        return rc

    def checkpoint(self) -> Any:
        """submitit calls this before it requeues the job: run the same worker again."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


class MeasureGrid:
    """The callable of ``--measure GRID``: ``runner measure GRID`` on the node it was given."""

    def __init__(self, url_file: str, grid: str, options: dict[str, Any]) -> None:
        self.url_file, self.grid, self.options = url_file, grid, options

    def __call__(self) -> dict[str, Any]:
        from runner.measure import measure_grid

        _configure_logging()
        done = measure_grid(Database(read_url_file(self.url_file)), self.grid, say=lambda line: log.info("%s", line),
                            **self.options)
        return dict(done)


@dataclass
class Launched:
    """What ``launch`` submitted: the SLURM job ids, where their logs go, and the file with the URL."""

    job_ids: list[str]
    folder: Path
    logs: list[Path]
    url_file: Path

    def follow(self) -> str:
        ids = ",".join(sorted({j.split("_")[0] for j in self.job_ids}))
        return (f"follow: squeue -j {ids}; logs: {self.logs[0].parent}/ (e.g. tail -f {self.logs[0]}); "
                f"progress: runner status")


def require_slurm() -> None:
    """A clear error where SLURM's commands are missing."""
    missing = [c for c in ("sbatch", "srun", "scontrol") if shutil.which(c) is None]
    if missing:
        raise SlurmError(f"SLURM not found: {', '.join(missing)} not on PATH (run `runner launch slurm` on a "
                         "SLURM login node; scripts/slurm_local.sh starts a one-node test cluster)")


@contextlib.contextmanager
def _scrubbed_environment() -> Iterator[None]:
    """``sbatch`` exports the submitter's environment into the job: keep the URL out of it."""
    saved = {k: os.environ.pop(k) for k in SCRUBBED_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _one_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return "; ".join(lines) or type(error).__name__


def _submit(folder: Path, settings: SlurmSettings, url: str, url_file: Path | None,
            job: Callable[[str], Callable[[], Any]], count: int = 1) -> Launched:
    """Submit ``count`` copies of ``job(URL file)`` (an array when more than one). Without ``url_file``
    the URL goes into ``folder/db-url``, which is removed again when SLURM refuses the submission."""
    import submitit
    from submitit.core.utils import FailedJobError

    require_slurm()
    secret = url_file or write_url_file(folder, url)
    jobs = [job(str(secret))] * count
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    executor.update_parameters(**settings.parameters())
    try:  # submitit prints sbatch's stderr as well as raising it: keep the one line of the error
        with _scrubbed_environment(), contextlib.redirect_stderr(io.StringIO()):
            if len(jobs) == 1:
                submitted = [executor.submit(jobs[0])]
            else:
                with executor.batch():
                    submitted = [executor.submit(job) for job in jobs]
    except (FailedJobError, OSError) as e:  # FailedJobError carries sbatch's stderr
        if url_file is None:
            secret.unlink(missing_ok=True)
        raise SlurmError(f"sbatch refused the job: {_one_line(e)}") from None
    return Launched([j.job_id for j in submitted], folder, [Path(j.paths.stdout) for j in submitted], secret)


def launch_folder(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """Where a launch keeps its batch scripts, pickles and logs (on the shared file system)."""
    return Path(runs_dir).resolve() / "slurm" / time.strftime("%Y%m%d-%H%M%S")


def launch_workers(url: str, settings: SlurmSettings, *, workers: int, folder: Path, runs_dir: str | Path,
                   cpu_slots: int = 1, poll: float = 5.0, heartbeat: float = 10.0, stale_after: float = 120.0,
                   grace: float = 30.0, url_file: Path | None = None) -> Launched:
    """Submit ``workers`` worker jobs (one array when more than one) on the database at ``url``."""
    if workers < 1:
        raise RunnerInputError(f"--workers must be at least 1, got {workers}")
    if grace >= settings.signal_delay_s:
        raise RunnerInputError(f"--grace ({grace}s) must be shorter than --signal-delay ({settings.signal_delay_s}s)")
    runs = str(Path(runs_dir).resolve())
    return _submit(folder, settings, url, url_file,
                   lambda secret: WorkerJob(secret, runs, cpu_slots, poll, heartbeat, stale_after, grace), workers)


def launch_measurement(url: str, settings: SlurmSettings, *, grid: str, folder: Path, options: dict[str, Any],
                       url_file: Path | None = None) -> Launched:
    """Submit one exclusive job that runs ``runner measure GRID`` (``settings.constraint``: the GPU type)."""
    whole_node = dataclasses.replace(settings, exclusive=True, job_name="fastinst-measure")
    return _submit(folder, whole_node, url, url_file, lambda secret: MeasureGrid(secret, grid, options))


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
