"""The results database: SQLAlchemy 2.0 models and the engine/session setup.

Any SQLAlchemy URL works; the default is ``sqlite:///<repo root>/results.db``. SQLite runs in WAL
mode with a busy timeout, and every writing transaction starts with ``BEGIN IMMEDIATE`` (it takes
the write lock up front, so a reader that later writes never hits an un-retryable lock upgrade).
Writes go through :meth:`Database.write`, which retries a whole transaction on transient lock,
deadlock and serialisation errors. The schema is managed by Alembic (``runner/migrations``):
:func:`init_db` upgrades any database to the current schema.

Tables (the dashboard reads these):

- ``grids``: one per grid name (its spec, axes, seeds, stages, reference row);
- ``grid_rows``: the rows of a grid (name, overrides, variant hash = config hash without seed);
- ``runs``: one (row, seed) execution: exact config and its hash, queue state, timings, worker,
  device, error, git commit, package versions, run directory;
- ``metrics``: one per run (AP…, params, GFLOPs, ``extra`` JSON; its ``fps``/``fps_device``/``fps_dtype``
  columns are from schema 0001, kept so old databases read, and no longer written: speed lives in ``speed``);
- ``speed``: speed measurements, any number per run, one per (run, device, dtype, backend, time measured):
  median FPS over repeats with its min/max, latency percentiles, images, warm-up, threads, library
  versions, host, and what else the runner ran on that host while the timed section ran;
- ``measure_jobs``: the measurement phase's queue (one job per requested speed row): a run's ``bench``
  stage becomes one after its compute stages succeed, ``runner measure`` adds its own; same claim,
  heartbeat and retry semantics as runs, but a measurement runs only while nothing else runs on its host;
- ``workers``: each executor while it runs (host, pid, slots, SLURM job) and when it was last seen;
- ``added_seeds``: seeds a grid's seed policy added to a row (step, why, the run it queued);
- ``train_records``: per-step training records (step, time, lr, total loss, each loss, raw record);
- ``artifacts``: files a run produced (checkpoint, log, per-step JSONL, config).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from runner.errors import RunnerInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = f"sqlite:///{REPO_ROOT / 'results.db'}"
VERSION_TABLE = "runner_alembic_version"

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)

DEFAULT_MAX_ATTEMPTS = 3  # attempts of a run or measurement job before it fails
READ_RETRIES = 10  # a read transaction retried on transient lock errors
WRITE_RETRIES = 20  # a write transaction (and a schema upgrade) retried on transient lock errors
IN_BATCH = 500  # values per ``IN (...)`` list in one query (well below every backend's parameter limit)

T = TypeVar("T")


def utcnow() -> datetime:
    """Naive UTC now (what every timestamp column stores)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def in_batches(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """``values`` in slices of ``IN_BATCH``: a read of many ids runs one ``IN (...)`` query per slice."""
    for i in range(0, len(values), IN_BATCH):
        yield values[i:i + IN_BATCH]


def resolve_url(url: str | None = None, url_file: str | Path | None = None) -> str:
    """``--db`` if given, else ``--db-file``'s URL, else ``$FASTINST_DB``, else
    ``sqlite:///<repo root>/results.db``."""
    if url:
        return url
    if url_file is not None:
        return read_url_file(url_file)
    return os.environ.get("FASTINST_DB") or DEFAULT_URL


def read_url_file(path: str | Path) -> str:
    """The database URL kept in ``path``, a file only its owner may read or write (as ssh and
    PostgreSQL's ``~/.pgpass`` demand), so that a password in it stays private."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as e:
        raise RunnerInputError(f"database URL file {path}: {e.strerror}") from None
    if mode & 0o077:
        raise RunnerInputError(f"database URL file {path} is readable or writable by others (mode "
                               f"{mode & 0o777:o}); chmod 600 it")
    if not text:
        raise RunnerInputError(f"database URL file {path} is empty")
    return text


def safe_url(url: str | URL) -> str:
    """The URL with any password masked, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def host_name() -> str:
    """This machine's identity for host-exclusive measurement: ``$FASTINST_HOST`` or the hostname."""
    return os.environ.get("FASTINST_HOST") or socket.gethostname()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class GridRecord(Base):
    __tablename__ = "grids"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str | None] = mapped_column(String(1000))
    spec: Mapped[dict[str, Any]]
    axes: Mapped[list[Any]]
    seeds: Mapped[list[Any]]
    stages: Mapped[str] = mapped_column(String(100))
    reference: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    rows: Mapped[list[GridRow]] = relationship(back_populates="grid", order_by="GridRow.position")
    added_seeds: Mapped[list[AddedSeed]] = relationship(back_populates="grid", order_by="AddedSeed.id")

    def row_seeds(self, row: str) -> list[int]:
        """The seeds of grid row ``row``: the grid's, then those its seed policy added."""
        return [*self.seeds, *(a.seed for a in self.added_seeds if a.row_name == row)]


class GridRow(Base):
    __tablename__ = "grid_rows"
    __table_args__ = (UniqueConstraint("grid_id", "name", name="uq_grid_rows_grid_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grids.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    position: Mapped[int] = mapped_column(Integer)
    overrides: Mapped[dict[str, Any]]
    variant_hash: Mapped[str] = mapped_column(String(16), index=True)

    grid: Mapped[GridRecord] = relationship(back_populates="rows")


class AddedSeed(Base):
    """A seed the grid's seed policy added to one row (``runner.seed_policy``)."""

    __tablename__ = "added_seeds"
    __table_args__ = (UniqueConstraint("grid_id", "row_name", "seed", name="uq_added_seeds_grid_row_seed"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grids.id", ondelete="CASCADE"), index=True)
    row_name: Mapped[str] = mapped_column(String(500))
    seed: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)  # 1 for the policy's first additions, then 2, ...
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    grid: Mapped[GridRecord] = relationship(back_populates="added_seeds")


class WorkerRecord(Base):
    """An executor (worker, Ray executor) while it runs: where, which process, which SLURM job."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    slots: Mapped[str] = mapped_column(String(200))
    slurm_job: Mapped[str | None] = mapped_column(String(64))  # "1234", or "1234_5" for index 5 of array 1234
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)


class QueuedJob(Base):
    """What the two kinds of queued job (``Run``, ``MeasureJob``) share: their id and queue state."""

    __abstract__ = True

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_ATTEMPTS)
    worker: Mapped[str | None] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(200))  # where its job runs (set at claim or job start)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)


class Run(QueuedJob):
    __tablename__ = "runs"
    __table_args__ = (
        # One run per (exact work, generation): concurrent submits of one grid queue it once;
        # ``--force`` adds the next generation.
        UniqueConstraint("run_key", "generation", name="uq_runs_key_generation"),
        Index("ix_runs_claim", "status", "priority", "id"),
        Index("ix_runs_variant", "variant_hash", "seed"),
        Index("ix_runs_host", "host", "status"),
    )

    grid_id: Mapped[int] = mapped_column(ForeignKey("grids.id"), index=True)
    row_name: Mapped[str] = mapped_column(String(500))
    overrides: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(16), index=True)
    variant_hash: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(Integer)
    stages: Mapped[str] = mapped_column(String(100))
    stage_options: Mapped[dict[str, Any]]
    data: Mapped[dict[str, Any] | None]
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    run_key: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer, default=0)

    device: Mapped[str | None] = mapped_column(String(200))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    packages: Mapped[dict[str, Any] | None]
    run_dir: Mapped[str | None] = mapped_column(String(1000))

    grid: Mapped[GridRecord] = relationship()
    metrics: Mapped[Metrics | None] = relationship(back_populates="run", cascade="all, delete-orphan")
    speed: Mapped[list[SpeedMeasurement]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                         order_by="SpeedMeasurement.id")


class Metrics(Base):
    __tablename__ = "metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    AP: Mapped[float | None] = mapped_column(Float)
    AP50: Mapped[float | None] = mapped_column(Float)
    AP75: Mapped[float | None] = mapped_column(Float)
    AP_S: Mapped[float | None] = mapped_column(Float)
    AP_M: Mapped[float | None] = mapped_column(Float)
    AP_L: Mapped[float | None] = mapped_column(Float)
    AR100: Mapped[float | None] = mapped_column(Float)
    params: Mapped[int | None] = mapped_column(BigInteger)
    gflops: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    fps_device: Mapped[str | None] = mapped_column(String(200))
    fps_dtype: Mapped[str | None] = mapped_column(String(32))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    run: Mapped[Run] = relationship(back_populates="metrics")


METRIC_COLUMNS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR100", "params", "gflops", "fps")


class SpeedMeasurement(Base):
    """One timed measurement of a run's model (``fastinst.deploy.bench`` protocol) on one device.

    Re-measuring adds a row; readers pick the newest row per (run, device, dtype, backend)."""

    __tablename__ = "speed"
    __table_args__ = (Index("ix_speed_run_device", "run_id", "device_type", "dtype", "backend"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    device_type: Mapped[str] = mapped_column(String(16))  # "cpu" | "cuda"
    device: Mapped[str] = mapped_column(String(200))  # the GPU's name or the CPU model
    dtype: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(32), default="eager")
    fps: Mapped[float] = mapped_column(Float)  # median over repeats
    fps_min: Mapped[float] = mapped_column(Float)
    fps_max: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[dict[str, Any]]  # mean, median, p90, p99 over all timed calls
    repeats: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    warmup: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(200))
    packages: Mapped[dict[str, Any]]
    # Runner jobs (run ids, stages) that ran on this host while the timed section ran: empty by design.
    concurrent: Mapped[list[Any]]
    source: Mapped[str] = mapped_column(String(32))  # "stage" (a run's measurement job) | "measure" (runner measure)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # per-repeat FPS, test size, load, weights
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="speed")


class MeasureJob(QueuedJob):
    """A queued speed measurement of one run: its settings, queue state, and the row it produced.

    ``owner`` set: a ``runner measure`` process made it for itself on ``host`` (no worker claims it,
    and while it waits workers on that host start no new compute job, so the host drains for it)."""

    __tablename__ = "measure_jobs"
    __table_args__ = (Index("ix_measure_jobs_claim", "status", "priority", "id"),
                      Index("ix_measure_jobs_host", "host", "status"))

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    device_type: Mapped[str] = mapped_column(String(16))  # "cpu" | "cuda"
    dtype: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(32))
    images: Mapped[int] = mapped_column(Integer)
    warmup: Mapped[int] = mapped_column(Integer)
    repeats: Mapped[int] = mapped_column(Integer)
    weights: Mapped[str | None] = mapped_column(String(1000))
    source: Mapped[str] = mapped_column(String(32))  # "stage" | "measure"
    owner: Mapped[str | None] = mapped_column(String(200))
    speed_id: Mapped[int | None] = mapped_column(ForeignKey("speed.id", ondelete="SET NULL"))

    run: Mapped[Run] = relationship()


class TrainRecord(Base):
    __tablename__ = "train_records"
    __table_args__ = (Index("ix_train_records_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    time: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    losses: Mapped[dict[str, Any]]
    data: Mapped[dict[str, Any]]


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --------------------------------------------------------------------------- engine


def _is_transient(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return any(s in message for s in ("database is locked", "database table is locked", "deadlock detected",
                                      "could not serialize access", "database is busy"))


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and explicit transaction control."""
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (so writers can BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if url.database and url.database != ":memory:":
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """An engine plus read/write transaction helpers for one URL (no global state)."""

    def __init__(self, url: str | URL) -> None:
        self.url = make_url(url)
        self.engine = make_engine(self.url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        writer = self.engine.execution_options(sqlite_immediate=True) if self.is_sqlite else self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)

    @property
    def display_url(self) -> str:
        return safe_url(self.url)

    @property
    def url_string(self) -> str:
        """The full URL (password included) for child processes; never print it."""
        return self.url.render_as_string(hide_password=False)

    def read(self, fn: Callable[[Session], T], retries: int = READ_RETRIES) -> T:
        return self._transact(self._read, fn, retries)

    def write(self, fn: Callable[[Session], T], retries: int = WRITE_RETRIES) -> T:
        """Run ``fn`` in one writing transaction, committed on return, retried on transient locks."""
        return self._transact(self._write, fn, retries)

    def _transact(self, maker: sessionmaker[Session], fn: Callable[[Session], T], retries: int) -> T:
        for attempt in range(retries + 1):
            try:
                with maker.begin() as session:
                    return fn(session)
            except OperationalError as exc:
                if attempt == retries or not _is_transient(exc):
                    raise
                time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def init_db(url: str | URL | Database) -> Database:
    """Open ``url`` and upgrade its schema to the newest Alembic revision (safe to call concurrently)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    db = url if isinstance(url, Database) else Database(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    writer = db.engine.execution_options(sqlite_immediate=True) if db.is_sqlite else db.engine
    for attempt in range(WRITE_RETRIES):
        try:
            with writer.begin() as conn:
                if db.is_postgres:
                    # Serialise concurrent first starts (several workers on an empty database).
                    conn.execute(text("SELECT pg_advisory_xact_lock(7345012)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            return db
        except OperationalError as exc:
            if attempt == WRITE_RETRIES - 1 or not _is_transient(exc):
                raise
            time.sleep(0.05 * (1 + random.random()))
    return db
