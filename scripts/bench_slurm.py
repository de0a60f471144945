"""How long `runner launch slurm` takes: to the first claimed run, and to submit 100 workers as an array.

Needs a SLURM cluster (scripts/slurm_local.sh start) and a database all nodes reach (default: a SQLite
file in a temporary folder, fine on the one-node local cluster). Prints the machine, its load, each
repeat and the median; nothing is asserted.

    .venv/bin/python scripts/bench_slurm.py [--db URL] [--repeats 3] [--array 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import queue  # noqa: E402
from runner.db import Database, Run, init_db  # noqa: E402
from runner.slurm import SlurmSettings, launch_workers  # noqa: E402
from runner.stages import load_stage_grid  # noqa: E402


def _claimed(db: Database) -> int:
    return db.read(lambda s: s.scalar(select(func.count()).select_from(Run).where(Run.status != queue.QUEUED)))


def time_to_first_claim(db: Database, folder: Path, runs_dir: Path, grid_file: Path, index: int) -> float:
    grid = load_stage_grid(grid_file)
    queue.submit(db, grid, force=True)
    start = time.perf_counter()
    launched = launch_workers(db.url_string, SlurmSettings(gpus=0, cpus=1, time="10:00"), workers=1,
                              folder=folder / f"first-{index}", runs_dir=runs_dir, poll=0.2, heartbeat=1.0,
                              stale_after=30.0, grace=5.0)
    try:
        while _claimed(db) == 0:
            time.sleep(0.05)
        return time.perf_counter() - start
    finally:
        subprocess.run(["scancel", *launched.job_ids], capture_output=True)
        queue.cancel(db, grid=grid.name)


def time_to_submit_array(db: Database, folder: Path, runs_dir: Path, workers: int, index: int) -> float:
    # Held (--hold) so that nothing starts: only the submission is timed; then cancelled.
    start = time.perf_counter()
    launched = launch_workers(db.url_string, SlurmSettings(gpus=0, cpus=1, time="10:00", sbatch=["hold"]),
                              workers=workers, folder=folder / f"array-{index}", runs_dir=runs_dir)
    elapsed = time.perf_counter() - start
    assert len(launched.job_ids) == workers
    subprocess.run(["scancel", launched.job_ids[0].split("_")[0]], capture_output=True)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="database URL (default: a SQLite file in a temporary folder)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--array", type=int, default=100, help="workers submitted as one array")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    db = init_db(args.db or f"sqlite:///{tmp / 'results.db'}")
    grid_file = tmp / "g.yaml"
    grid_file.write_text(textwrap.dedent("""\
        name: bench-slurm
        stages: [noop]
        seeds: 1
        resources: {gpus: 0}
        """))
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} before; "
          f"{subprocess.run(['sinfo', '-h', '-o', '%P %D %c'], capture_output=True, text=True).stdout.strip()}")
    first = [time_to_first_claim(db, tmp, tmp / "runs", grid_file, i) for i in range(args.repeats)]
    array = [time_to_submit_array(db, tmp, tmp / "runs", args.array, i) for i in range(args.repeats)]
    for name, values in (("launch -> first claimed run", first), (f"submit {args.array} workers (one array)", array)):
        print(f"{name}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}; "
              f"{args.repeats} repeats: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
