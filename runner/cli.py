"""The ``runner`` command: a thin layer over runner.queue, runner.worker, runner.measure, runner.export,
runner.search.

Every command takes ``--db URL`` or ``--db-file FILE`` (a user-only file holding the URL; default:
``$FASTINST_DB``, then ``sqlite:///<repo>/results.db``).
Input errors (``USER_ERRORS``: a bad grid, config, dataset, checkpoint, an unknown grid or device)
print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from fastinst.config import ConfigError
from fastinst.data import DatasetError
from fastinst.grid import COMPARABLE_METRICS, SPEED_DEVICES, SPEED_DTYPES, GridError, SpeedSetting
from fastinst.registry import BACKEND_NAMES
from runner import queue
from runner.child import DEFAULT_RUNS_DIR
from runner.db import REPO_ROOT, Database, init_db, resolve_url
from runner.errors import RunnerInputError
from runner.formats import TABLE_FORMATS
from runner.stages import load_stage_grid


def user_errors() -> tuple[type[ValueError], ...]:
    """The project's input errors (imported when needed: the checkpoint reader loads torch)."""
    from fastinst.checkpoint import CheckpointError
    from runner.export import ExportError

    return (RunnerInputError, GridError, ConfigError, DatasetError, CheckpointError, ExportError)


def _db(args: argparse.Namespace) -> Database:
    return init_db(resolve_url(args.db, args.db_file))


def cmd_submit(args: argparse.Namespace) -> int:
    grid = load_stage_grid(args.grid)  # validated before the database is touched
    if args.dry_run:
        for row in grid.rows:
            print(f"{row.name}  seeds={row.seeds}  hash={row.hash}")
        print(f"grid {grid.name!r}: {len(grid.rows)} rows × {len(grid.seeds)} seeds, stages {grid.stages}")
        return 0
    db = _db(args)
    result = queue.submit(db, grid, force=args.force, priority=args.priority, max_attempts=args.max_attempts)
    print(f"{result.summary()} ({db.display_url})")
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    db = _db(args)
    common = dict(runs_dir=args.runs_dir, poll=args.poll, heartbeat=args.heartbeat,
                  stale_after=args.stale_after, exit_when_empty=args.exit_when_empty)
    if args.ray:
        from runner.ray_executor import RayExecutor

        return RayExecutor(db, address=args.ray, **common).run()
    from runner.worker import Worker

    gpus = [int(g) for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    return Worker(db, gpus=gpus, cpu_slots=args.cpu_slots, name=args.name, **common).run()


def cmd_launch_slurm(args: argparse.Namespace) -> int:
    from runner.slurm import SlurmSettings, launch_folder, launch_measurement, launch_workers, require_slurm

    require_slurm()
    url_file = Path(args.db_file).resolve() if args.db_file else None
    db = _db(args)  # checks the URL and migrates the schema before any job starts
    if db.url.get_backend_name() == "sqlite":
        print(f"note: {db.display_url} is a SQLite file: every node must see it, and many workers on many "
              "nodes are better served by PostgreSQL", file=sys.stderr)
    settings = SlurmSettings(partition=args.partition, time=args.time, gpus=args.gpus, cpus=args.cpus,
                             mem_gb=args.mem_gb, account=args.account, qos=args.qos, constraint=args.constraint,
                             exclusive=args.exclusive, sbatch=args.sbatch, setup=args.setup,
                             signal_delay_s=args.signal_delay, max_requeues=args.max_requeues)
    folder = Path(args.folder).resolve() if args.folder else launch_folder(args.runs_dir)
    if args.measure:
        from runner.results import grid_record

        db.read(lambda s: grid_record(s, args.measure))  # an unknown grid is refused before anything is submitted
        options = {k: v for k, v in dict(device=args.device, dtype=args.dtype, backend=args.backend,
                                         repeats=args.repeats, images=args.images, warmup=args.warmup, data=args.data,
                                         runs_dir=args.runs_dir).items()
                   if v is not None}
        launched = launch_measurement(db.url_string, settings, grid=args.measure, folder=folder, options=options,
                                      url_file=url_file)
        what = f"measurement job for grid {args.measure!r} (exclusive node{', ' + args.constraint if args.constraint else ''})"
    else:
        launched = launch_workers(db.url_string, settings, workers=args.workers, folder=folder, runs_dir=args.runs_dir,
                                  cpu_slots=args.cpu_slots, poll=args.poll, heartbeat=args.heartbeat,
                                  stale_after=args.stale_after, grace=args.grace, url_file=url_file)
        what = f"{len(launched.job_ids)} worker job(s)"
    print(f"submitted {what}: {' '.join(launched.job_ids)}")
    print(f"database {db.display_url}; its URL reaches the jobs only through {launched.url_file} (mode 0600)")
    print(launched.follow())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from runner.export import runs_frame, status_frame

    db = _db(args)
    _print_workers(db, args.stale_after)
    table = status_frame(db, args.grid)
    print(table.to_string(index=False) if len(table) else "no runs")
    measurements = queue.measurement_counts(db, args.grid)
    if measurements:
        import pandas as pd

        print("\nmeasurements pending or running (each waits until nothing else runs on its host):")
        print(pd.DataFrame(measurements).to_string(index=False))
    for grid in ([args.grid] if args.grid else list(table["grid"]) if len(table) else []):
        _print_policy(db, grid)
    if args.runs:
        runs = runs_frame(db, args.grid)
        cols = ["run_id", "grid", "row", "seed", "status", "attempts", "worker", "AP", "gflops", "fps"]
        print(runs[cols].to_string(index=False) if len(runs) else "")
    return 0


def _print_workers(db: Database, stale_after: float) -> None:
    workers = queue.live_workers(db, stale_after)
    if not workers:
        return
    import pandas as pd

    rows = [{"worker": w.name, "role": w.role, "host": w.host, "pid": w.pid, "slurm job": w.slurm_job or "",
             "slots": w.slots, "since": w.started_at.strftime("%Y-%m-%d %H:%M:%S")} for w in workers]
    print(f"live workers ({len(rows)}; seen within {stale_after:g} s):")
    print(pd.DataFrame(rows).to_string(index=False) + "\n")


def _print_policy(db: Database, grid: str) -> None:
    from runner.seed_policy import policy_state

    state = policy_state(db, grid)
    if state.policy is None:
        return
    p = state.policy
    print(f"\nseed policy of {grid!r}: {p.min} to {p.max} seeds per row until {p.metric} vs the baseline is decided "
          f"({100 * p.level:.0f}% interval); seeds now: "
          + ", ".join(f"{row} {n}" for row, n in state.seeds.items()))
    for entry in state.added:
        print(f"  step {entry['step']}: seed {entry['seed']} added to {entry['row']} (run {entry['run_id']}): "
              f"{entry['reason']}")
    print(f"  next step waits: {state.waiting}" if state.waiting else
          f"  every run has succeeded: the last one took the policy's step (rows still undecided with {p.max} "
          f"seeds stay undecided; `runner compare {grid}` shows them)")


def cmd_export(args: argparse.Namespace) -> int:
    from runner.export import export_grid

    text = export_grid(_db(args), args.grid, args.format, device=args.device, dtype=args.dtype, backend=args.backend,
                       baseline=args.baseline, metric=args.metric, note=lambda line: print(line, file=sys.stderr))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from runner.measure import measure_grid

    done = measure_grid(_db(args), args.grid, device=args.device, dtype=args.dtype, backend=args.backend,
                        repeats=args.repeats, images=args.images, warmup=args.warmup, data=args.data,
                        interleave=args.interleave, runs_dir=args.runs_dir, poll=args.poll,
                        say=lambda line: print(line, flush=True))
    return 0 if done["measured"] or not done["skipped"] else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from runner.comparison import compare_grid, format_comparison
    from runner.export import format_table, with_verdicts
    from runner.results import grid_reference, grid_table

    db = _db(args)
    reference = grid_reference(db, args.grid)
    setting = SpeedSetting(args.device or reference.device, args.dtype or reference.dtype,
                           args.backend or reference.backend)
    frame = compare_grid(db, args.grid, baseline=args.baseline, metric=args.metric, resamples=args.resamples,
                         level=args.level, seed=args.seed, setting=setting)
    if args.format == "text":
        sys.stdout.write(format_comparison(frame))
    else:
        sys.stdout.write(format_table(with_verdicts(grid_table(db, args.grid, setting), frame), args.format))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    ids = queue.cancel(_db(args), run_ids=args.run_ids, grid=args.grid)
    print(f"cancelled {len(ids)} run(s)")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    ids = queue.retry(_db(args), run_ids=args.run_ids, grid=args.grid, priority=args.priority)
    print(f"requeued {len(ids)} run(s)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from runner.search import load_search, run_search

    spec = load_search(args.spec)
    db = _db(args)
    study = run_search(db, spec, trials=args.trials, parallel=args.parallel, poll=args.poll)
    for trial in study.best_trials:
        print(f"trial {trial.number}: {dict(zip(spec.objectives, trial.values))} {trial.params}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    url = resolve_url(args.db)
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "dashboard" / "app.py"),
           "--server.address", args.host, "--server.port", str(args.port),
           # .streamlit/config.toml's settings, which Streamlit reads only when started from the repo root:
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--"]
    # A URL with a password goes through the environment only (command lines are world-readable).
    if make_url(url).password is None:
        cmd += ["--db", url]
    return subprocess.call(cmd, env={**os.environ, "FASTINST_DB": url})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="FastInst ablation runner and results database")
    parser.add_argument("--db", help="database URL (default: $FASTINST_DB, then sqlite:///<repo>/results.db)")
    parser.add_argument("--db-file", metavar="FILE",
                        help="a file only you can read (mode 600) holding the database URL, instead of --db")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--db", default=argparse.SUPPRESS, help="database URL")
        p.add_argument("--db-file", default=argparse.SUPPRESS, metavar="FILE", help="user-only file with the URL")
        p.set_defaults(func=func)
        return p

    p = add("submit", cmd_submit, "validate a grid YAML and queue one run per (row, seed)")
    p.add_argument("grid", help="grid YAML file")
    p.add_argument("--force", action="store_true", help="rerun runs that already succeeded")
    p.add_argument("--priority", type=int, help="higher runs first (default: the grid's, else 0)")
    p.add_argument("--max-attempts", type=int, help="attempts before a run fails (default: the grid's, else 3)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the rows; queue nothing")

    p = add("work", cmd_work, "run queued runs: one job per GPU (or CPU slot), or on a Ray cluster")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpus", help="comma-separated GPU ids, one slot each (e.g. 0,1,2,3)")
    where.add_argument("--cpu-slots", type=int, default=1, help="CPU job slots (default 1)")
    where.add_argument("--ray", metavar="ADDRESS", help="Ray executor: 'auto', 'local' or a cluster address")
    p.add_argument("--exit-when-empty", action="store_true", help="exit once no run is queued or running")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between queue polls when idle")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    p.add_argument("--stale-after", type=float, default=120.0,
                   help="requeue runs whose worker has not heartbeated for this many seconds")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="where run directories go")
    p.add_argument("--name", help="worker name (default host:pid)")

    p = add("launch", None, "submit workers (or a measurement) to a cluster scheduler")
    schedulers = p.add_subparsers(dest="scheduler", required=True)
    p = schedulers.add_parser("slurm", help="workers (or --measure GRID) as SLURM jobs, through submitit",
                              description="Submit worker jobs (one array) that run `runner work` with one slot per "
                              "allocated GPU, or with --measure GRID one exclusive job that runs `runner measure`.")
    p.add_argument("--db", default=argparse.SUPPRESS, help="database URL")
    p.add_argument("--db-file", default=argparse.SUPPRESS, metavar="FILE", help="user-only file with the URL")
    p.set_defaults(func=cmd_launch_slurm)
    p.add_argument("--workers", type=int, default=1, help="worker jobs, submitted as one array (default 1)")
    p.add_argument("--measure", metavar="GRID", help="instead of workers: one exclusive job measuring this grid")
    p.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    p.add_argument("--time", default="4:00:00", help="time limit per job, in SLURM's format (default 4:00:00)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per job, one worker slot each (0: CPU slots; default 1)")
    p.add_argument("--cpus", type=int, help="CPUs per job (--cpus-per-task)")
    p.add_argument("--mem-gb", type=float, help="memory per job, GB")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--qos", help="SLURM quality of service")
    p.add_argument("--constraint", help="node features, e.g. the GPU type (v100)")
    p.add_argument("--exclusive", action="store_true", help="whole nodes (always, with --measure)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION[=VALUE]",
                   help="any other sbatch option, repeatable (e.g. --sbatch mail-type=END)")
    p.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                   help="a shell line run before the worker, repeatable (modules, a virtual environment)")
    p.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit that SLURM warns the worker (USR2; default 120)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds a warned worker gives its jobs to stop before killing them (default 30)")
    p.add_argument("--max-requeues", type=int, default=20, help="times a worker job requeues itself (default 20)")
    p.add_argument("--folder", help="batch scripts and logs (default: <runs-dir>/slurm/<time>; a shared file system)")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR), help="where run directories go (shared)")
    p.add_argument("--cpu-slots", type=int, default=1, help="with --gpus 0: CPU job slots per worker (default 1)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between a worker's queue polls when idle")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    p.add_argument("--stale-after", type=float, default=120.0, help="requeue runs of workers silent this long")
    p.add_argument("--device", help="with --measure: cpu, cuda or cuda:N (default: the grid's speed setting)")
    p.add_argument("--dtype", choices=SPEED_DTYPES, help="with --measure: FPS in this dtype (default: the grid's)")
    p.add_argument("--backend", choices=BACKEND_NAMES, help="with --measure: inference backend (default: the grid's)")
    p.add_argument("--repeats", type=int, help="with --measure: timed passes (interleaved rounds) per run")
    p.add_argument("--images", type=int, help="with --measure: val images per pass")
    p.add_argument("--warmup", type=int, help="with --measure: untimed images first")
    p.add_argument("--data", help="with --measure: a dataset folder to time on instead of the runs' own data")

    p = add("status", cmd_status, "run counts by state per grid (and the runs with --runs)")
    p.add_argument("grid", nargs="?")
    p.add_argument("--runs", action="store_true", help="list the runs too")
    p.add_argument("--stale-after", type=float, default=120.0, help="list workers seen within this many seconds")

    p = add("export", cmd_export, "a paper-style table of a grid: mean ± std over seeds")
    p.add_argument("grid")
    p.add_argument("--format", choices=TABLE_FORMATS, default="md")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument("--device", choices=SPEED_DEVICES, help="FPS measured on this device type "
                                                          "(default: the grid's speed setting)")
    p.add_argument("--dtype", choices=SPEED_DTYPES, help="FPS measured in this dtype (default: the grid's)")
    p.add_argument("--backend", choices=BACKEND_NAMES, help="FPS measured with this backend (default: the grid's)")
    p.add_argument("--baseline", help="compare every row with this row (default: the grid's baseline)")
    p.add_argument("--metric", choices=COMPARABLE_METRICS, default="AP", help="the compared metric (default AP)")

    p = add("compare", cmd_compare, "every row against the baseline: AP [95%% CI], ΔAP [95%% CI], P(better), "
                                    "verdict, FPS ratio [95%% CI]")
    p.add_argument("grid")
    p.add_argument("--baseline", help="the row the others are compared with (default: the grid's baseline)")
    p.add_argument("--metric", choices=COMPARABLE_METRICS, default="AP", help="the compared metric (default AP)")
    p.add_argument("--resamples", type=int, default=1000, help="paired image resamples (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image resamples (default 0)")
    p.add_argument("--format", choices=("text", *TABLE_FORMATS), default="text")
    p.add_argument("--device", choices=SPEED_DEVICES, help="FPS of this device type (default: the grid's)")
    p.add_argument("--dtype", choices=SPEED_DTYPES, help="FPS in this dtype (default: the grid's)")
    p.add_argument("--backend", choices=BACKEND_NAMES, help="FPS with this backend (default: the grid's)")

    p = add("measure", cmd_measure, "(re)measure the FPS of every succeeded run of a grid here, alone on this "
                                    "host, interleaved (or one after another); adds one speed row per run")
    p.add_argument("grid")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the grid's speed setting)")
    p.add_argument("--dtype", choices=SPEED_DTYPES, help="the dtype timed (default: the grid's speed setting)")
    p.add_argument("--backend", choices=BACKEND_NAMES, help="inference backend (default: the grid's speed setting)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each run (interleaved: rounds); FPS is "
                                                           "their median (default 3)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                   help="time the runs together in rounds, one pass each per round in an order rotating each "
                        "round, so the machine's drift cancels in their ratios (default); --no-interleave: one "
                        "run after another")
    p.add_argument("--images", type=int, help="val images per pass (default: each run's bench option, else 100)")
    p.add_argument("--warmup", type=int, help="untimed images first (default: each run's bench option, else 5)")
    p.add_argument("--data", help="dataset folder to time on instead of the runs' own data")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS_DIR))
    p.add_argument("--poll", type=float, default=2.0, help="seconds between checks while waiting for the host")

    for name, func, verb in (("cancel", cmd_cancel, "cancel queued/running"),
                             ("retry", cmd_retry, "requeue failed/cancelled")):
        p = add(name, func, f"{verb} runs, by id or by grid")
        p.add_argument("run_ids", nargs="*", type=int)
        p.add_argument("--grid")
        if name == "retry":
            p.add_argument("--priority", type=int)

    p = add("search", cmd_search, "Optuna multi-objective search whose trials are queued runs")
    p.add_argument("spec", help="search YAML (a grid with a 'search' section)")
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--parallel", type=int, default=1, help="trials in flight at once")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks for finished trials")

    p = add("dashboard", cmd_dashboard, "start the Streamlit dashboard on this database")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        if not isinstance(exc, user_errors()):
            raise  # a bug, not bad input: keep the traceback
        print(f"runner {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
