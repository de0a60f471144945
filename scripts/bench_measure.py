"""Measurement phase: overhead per run, and how repeatable one variant's FPS is.

    python scripts/bench_measure.py [--config experiments/configs/cpu_demo.yaml] [--data DIR]
        [--runs 3] [--measurements 5] [--repeats 3] [--images 30] [--warmup 5] [--device cpu] [--db URL]

Queues ``--runs`` untrained runs of one variant (seeds of ``--config``; the speed does not depend on
the weights' values) and finishes them, then measures them with ``runner measure`` (in this process,
one after another, alone on this host) and reports per run: the wall time of its measurement job
(claim to stored row), the timed section (``repeats`` passes over ``images`` images) and the rest
(model build, image loading, warm-up, bookkeeping). Then it measures one run ``--measurements``
times and reports the spread of the FPS medians ((max - min) / median, in %). Run it on a quiet
machine: the load average before and after is printed with the figures. Uses synthetic val images
and a temporary SQLite file unless ``--data``/``--db`` are given.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from runner import queue
from runner.db import Database, GridRecord, MeasureJob, Run, SpeedMeasurement, host_name, init_db
from runner.job import run_job
from runner.measure import measure_grid
from runner.stages import parse_stage_grid

REPO = Path(__file__).resolve().parents[1]


def finished_grid(db: Database, name: str, config: Path, data: Path, seeds: list[int], runs_dir: Path) -> None:
    """Succeeded (untrained) runs of ``config``, one per seed, in grid ``name`` (runs are deduplicated
    by config and seed across grids, so each grid needs its own seeds)."""
    grid = parse_stage_grid({"name": name, "base": str(config), "stages": ["noop"], "seeds": seeds,
                       "resources": {"gpus": 0}, "data": str(data)}, root=REPO)
    queue.submit(db, grid)
    while (claim := queue.claim(db, "bench_measure", max_gpus=1, device="cpu", host=host_name())) is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = run_job(db, claim.run_id, claim.token, runs_dir)
        if rc != 0:
            raise SystemExit(f"run {claim.run_id} failed; see {runs_dir}")


def rows_of(db: Database, grid: str, after: int) -> list[tuple[MeasureJob, SpeedMeasurement]]:
    """The measurement jobs of ``grid`` with id > ``after`` and their speed rows."""
    def _query(s: Session) -> list[tuple[MeasureJob, SpeedMeasurement]]:
        stmt = (select(MeasureJob, SpeedMeasurement).join(SpeedMeasurement, MeasureJob.speed_id == SpeedMeasurement.id)
                .join(Run, MeasureJob.run_id == Run.id).join(GridRecord, Run.grid_id == GridRecord.id)
                .where(MeasureJob.id > after, GridRecord.name == grid).order_by(MeasureJob.id))
        return [(job, row) for job, row in s.execute(stmt)]

    return db.read(_query)


def last_job_id(db: Database) -> int:
    return db.read(lambda s: max(s.scalars(select(MeasureJob.id)).all(), default=0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "configs" / "cpu_demo.yaml"))
    parser.add_argument("--data", help="dataset folder (default: synthetic val images at --size)")
    parser.add_argument("--size", type=int, default=320, help="synthetic image size (default 320)")
    parser.add_argument("--runs", type=int, default=3, help="runs measured once each, for the overhead")
    parser.add_argument("--measurements", type=int, default=5, help="measurements of one run, for the spread")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_measure"))
    if args.data:
        data = Path(args.data).resolve()
    else:
        from fastinst.data.synthetic import make_synthetic

        data = tmp / "data"
        make_synthetic(data, num_train=1, num_val=args.images, size=args.size, workers=1)
    db = init_db(args.db or f"sqlite:///{tmp / 'bench.db'}")
    stamp = int(time.time())
    load_before = os.getloadavg()
    print(f"database {db.display_url}; {os.cpu_count()} CPUs; load average {load_before[0]:.2f} (1 min)")
    # One run after another (not interleaved): the overhead is per measurement job.
    opts = dict(device=args.device, repeats=args.repeats, images=args.images, warmup=args.warmup, interleave=False,
                say=lambda _l: None)

    over = f"bench-measure-overhead-{stamp}"
    finished_grid(db, over, Path(args.config), data, list(range(args.runs)), tmp / "runs")
    start = last_job_id(db)
    measure_grid(db, over, runs_dir=tmp / "runs", **opts)
    print(f"\noverhead: {args.runs} run(s), {args.repeats} repeat(s) x {args.images} image(s), warm-up {args.warmup}")
    for job, row in rows_of(db, over, start):
        wall = (job.finished_at - job.started_at).total_seconds()
        timed = sum(row.images / fps for fps in row.extra["fps_repeats"])
        print(f"  run {job.run_id}: {wall:.2f} s claim-to-row = {timed:.2f} s timed + {wall - timed:.2f} s other "
              f"(model build, images, warm-up, bookkeeping; {100 * (wall - timed) / wall:.0f}%); "
              f"{row.fps:.2f} FPS [{row.fps_min:.2f}, {row.fps_max:.2f}], {row.threads} threads")

    rep = f"bench-measure-repeat-{stamp}"
    finished_grid(db, rep, Path(args.config), data, [args.runs], tmp / "runs")
    start = last_job_id(db)
    for _ in range(args.measurements):
        measure_grid(db, rep, runs_dir=tmp / "runs", **opts)
    medians = [row.fps for _job, row in rows_of(db, rep, start)]
    spread = 100 * (max(medians) - min(medians)) / statistics.median(medians)
    cv = 100 * statistics.pstdev(medians) / statistics.fmean(medians)
    print(f"\nrepeatability: one variant measured {len(medians)} times: FPS {', '.join(f'{m:.2f}' for m in medians)}")
    print(f"  spread (max - min) / median = {spread:.1f}%, coefficient of variation {cv:.1f}%")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
