"""Runner overhead: claims per second, and the idle gap between jobs on one worker.

    python scripts/bench_runner.py [--runs 1000] [--worker-runs 1000] [--db URL]

Phase 1 queues ``--runs`` no-op runs and claims them all in a tight loop (the queue's own cost).
Phase 2 queues ``--worker-runs`` no-op runs and drains them with one real worker process
(``runner work --cpu-slots 1``); from the database it reports the idle gap between one job
finishing and the next being claimed, the job start-up time (claim → job process ready), and
end-to-end jobs per second. Uses a temporary SQLite file unless ``--db`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from runner import queue
from runner.db import Metrics, Run, init_db
from runner.stages import parse_stage_grid

REPO = Path(__file__).resolve().parents[1]


def noop_grid(name: str, runs: int, layers: int):  # noqa: ANN201 - a fastinst.grid.Grid
    """``runs`` no-op runs; ``layers`` makes each phase's configs distinct (runs are deduplicated)."""
    return parse_stage_grid({"name": name, "stages": ["noop"], "seeds": runs, "resources": {"gpus": 0},
                       "base": {"model.decoder.num_layers": layers}})


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--worker-runs", type=int, default=1000)
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_runner"))
    url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    db = init_db(url)
    print(f"database: {db.display_url}")

    t0 = time.perf_counter()
    claims_grid = f"bench-claims-{int(time.time())}"
    queue.submit(db, noop_grid(claims_grid, args.runs, layers=1))
    t_submit = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    while queue.claim(db, "bench", max_gpus=1, device="cpu") is not None:
        n += 1
    t_claim = time.perf_counter() - t0
    queue.cancel(db, grid=claims_grid)  # nothing will run them
    print(f"submit: {args.runs} runs in {t_submit:.2f} s ({args.runs / t_submit:.0f} runs/s)")
    print(f"claims: {n} in {t_claim:.2f} s = {n / t_claim:.0f} claims/s ({1000 * t_claim / n:.2f} ms per claim)")

    if args.worker_runs:
        grid = noop_grid(f"bench-worker-{int(time.time())}", args.worker_runs, layers=2)
        ids = set(queue.submit(db, grid).queued)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runner.cli", "--db", url, "work", "--cpu-slots", "1",
                        "--exit-when-empty", "--poll", "0.5", "--runs-dir", str(tmp / "runs")],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rows = db.read(lambda s: [(r.started_at, r.finished_at, m.extra["timings"]["startup_s"])
                                  for r, m in s.execute(select(Run, Metrics).join(Metrics)
                                                        .where(Run.id.in_(ids)).order_by(Run.started_at))])
        gaps = [(b[0] - a[1]).total_seconds() for a, b in zip(rows, rows[1:])]
        startup = [r[2] for r in rows]
        span = [(r[1] - r[0]).total_seconds() for r in rows]
        print(f"worker: {len(rows)} no-op jobs in {wall:.1f} s = {len(rows) / wall:.2f} jobs/s")
        print(f"idle gap (job finished → next claimed): median {1000 * statistics.median(gaps):.0f} ms, "
              f"p95 {1000 * pct(gaps, 0.95):.0f} ms")
        print(f"job start-up (claimed → job process ready): median {1000 * statistics.median(startup):.0f} ms, "
              f"p95 {1000 * pct(startup, 0.95):.0f} ms; claim → finished: median "
              f"{1000 * statistics.median(span):.0f} ms")
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
