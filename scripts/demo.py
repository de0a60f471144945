"""The embedded demo: synthetic data → a small ablation grid through the runner → table and plot.

``make demo`` runs it in the project's virtual environment. Steps, each idempotent, so a second run
reuses the data and the finished runs instead of duplicating them:

1. write the synthetic shapes dataset (``data/demo_shapes``) unless it is there;
2. submit ``experiments/demo.yaml`` to the results database (``results.db`` by default);
3. start ``runner work`` with CPU slots until the queue is empty, showing progress: every run trains
   and evaluates, two at a time (the grid's seed policy adds seeds to rows still undecided against the
   baseline); then the runs' speeds are measured together, interleaved, by one measurement group that
   the runner starts only while nothing else of its runs on this host;
4. print the paper-style table with verdicts against the baseline D3 (``runner export``: AP with its
   95% interval over seeds and val images, ΔAP, P(better), FPS ratio), ``runner compare`` for D3 and
   for D1, and write the trade-off plot (95% intervals as error bars, undecided rows hollow) as PNG.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from fastinst.data.synthetic import make_synthetic
from runner import queue
from runner.db import REPO_ROOT, Database, MeasureJob, Run, TrainRecord, init_db, resolve_url
from runner.export import export_grid, status_frame
from runner.stages import load_stage_grid

GRID = REPO_ROOT / "experiments" / "demo.yaml"
DATA = REPO_ROOT / "data" / "demo_shapes"
PLOT = REPO_ROOT / "results" / "demo_tradeoff.png"


def ensure_data(num_train: int, num_val: int, size: int) -> None:
    if (DATA / "annotations" / "instances_val.json").is_file():
        print(f"[1/4] synthetic dataset: reusing {DATA.relative_to(REPO_ROOT)}")
        return
    print(f"[1/4] synthetic dataset: writing {num_train} train + {num_val} val images to {DATA.relative_to(REPO_ROOT)}")
    with tqdm(total=num_train + num_val, unit="img") as bar:
        make_synthetic(DATA, num_train, num_val, size=size, seed=0, progress=bar.update)


def progress(db: Database, grid: str, max_iter: int) -> tuple[int, int, str]:
    """(finished jobs, all jobs: runs and their measurements, a summary of states and training steps)."""
    states = status_frame(db, grid)
    row = states.iloc[0] if len(states) else None
    total = int(row["total"]) if row is not None else 0
    finished = sum(int(row[s]) for s in ("succeeded", "failed", "cancelled") if row is not None and s in row)

    def _query(s: Session) -> tuple[list[int], dict[str, int]]:
        running = list(s.scalars(select(Run.id).where(Run.status == "running")))
        measures = dict(s.execute(select(MeasureJob.status, func.count()).join(Run, MeasureJob.run_id == Run.id)
                                  .group_by(MeasureJob.status)).all())
        return running, measures

    running, measures = db.read(_query)
    steps = db.read(lambda s: s.scalar(select(func.max(TrainRecord.step)).where(TrainRecord.run_id.in_(running))))
    total *= 2  # each run that trains to the end then gets one measurement job
    finished += sum(n for status, n in measures.items() if status in ("succeeded", "failed", "cancelled"))
    summary = ", ".join(f"{s} {int(row[s])}" for s in ("queued", "running", "succeeded", "failed")
                        if row is not None and s in row and int(row[s]))
    if measures:
        summary += "; measurements " + ", ".join(f"{k} {v}" for k, v in sorted(measures.items()))
    return finished, total, summary + (f"; training step {steps}/{max_iter}" if steps else "")


def run_workers(db: Database, url: str, slots: int, max_iter: int) -> int:
    log = REPO_ROOT / "runs" / "demo_worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[3/4] runner work --cpu-slots {slots} (worker log: {log.relative_to(REPO_ROOT)})")
    env = {**os.environ, "FASTINST_DB": url}
    with open(log, "a") as out:
        worker = subprocess.Popen([sys.executable, "-m", "runner.cli", "work", "--cpu-slots", str(slots),
                                   "--exit-when-empty", "--poll", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
        finished, total, _ = progress(db, "demo", max_iter)
        with tqdm(total=total, initial=finished, unit="job") as bar:
            while worker.poll() is None:
                time.sleep(2)
                finished, total, summary = progress(db, "demo", max_iter)
                bar.n = finished
                bar.set_postfix_str(summary)
                bar.refresh()
            finished, total, summary = progress(db, "demo", max_iter)
            bar.n = finished
            bar.set_postfix_str(summary)
    return worker.returncode


def write_plot(db: Database) -> None:
    from dashboard.data import grid_intervals, grids
    from dashboard.figures import tradeoff_figure
    from dashboard.tradeoff import PAPER_COLUMNS, TradeoffSpec, bars_note, tradeoff_points, with_intervals
    from runner.results import seed_results

    spec = TradeoffSpec(y="AP", x="FPS", curve_by="model.query_init", label_by="row")
    results = seed_results(db, "demo")  # FPS on the grid's reference setting (cpu/float32/eager)
    points = tradeoff_points(results, spec, {"demo": ["model.decoder.num_layers"]},
                             {"demo": ["model.decoder.num_layers", "model.query_init"]})
    frames, problems = grid_intervals(db, {g.name: g.reference for g in grids(db) if g.name == "demo"}, spec.y)
    points = with_intervals(points, spec, frames)
    no_paper = pd.DataFrame(columns=PAPER_COLUMNS)  # the paper's COCO numbers do not apply to this data
    fig = tradeoff_figure(points, no_paper, spec, "FPS (this CPU, batch 1)", "query init")
    fig.suptitle(bars_note(points, spec), fontsize=8)
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=120)
    print(f"trade-off plot: {PLOT.relative_to(REPO_ROOT)}" + (f" ({problems['demo']})" if problems.get("demo") else ""))


def print_verdicts(db: Database) -> None:
    """Each row against the grid's baseline (D3), and D1-learnable against D1 (the query-init question)."""
    from runner.comparison import ComparisonError, compare_grid, format_comparison

    for baseline in (None, "D1"):
        try:
            frame = compare_grid(db, "demo", baseline=baseline)
        except ComparisonError as exc:
            print(f"no comparison with {baseline or 'the baseline'}: {exc}")
            continue
        print(f"\nrunner compare demo{' --baseline ' + baseline if baseline else ''}:\n")
        print(format_comparison(frame if baseline is None else frame[frame["row"].isin(["D1", "D1-learnable"])]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: $FASTINST_DB, then results.db)")
    parser.add_argument("--slots", type=int, default=2, help="CPU worker slots (jobs at once)")
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--val-images", type=int, default=60)
    args = parser.parse_args(argv)

    url = resolve_url(args.db)
    ensure_data(args.train_images, args.val_images, size=160)
    grid = load_stage_grid(GRID)
    db = init_db(url)
    result = queue.submit(db, grid)
    print(f"[2/4] submitted {GRID.relative_to(REPO_ROOT)} to {db.display_url}: {len(result.queued)} new run(s) "
          f"for {len(grid.rows)} variants (finished runs are not run again)")
    max_iter = grid.rows[0].config.solver.max_iter
    if run_workers(db, url, args.slots, max_iter) != 0:
        print("the worker exited with an error; see runs/demo_worker.log", file=sys.stderr)
    print("[4/4] results (AP in percent: mean [95% interval over seeds and val images]; FPS on this CPU, "
          "median [min–max] over rounds and seeds; verdicts against the baseline D3):\n")
    print(export_grid(db, "demo", "md", note=print))
    print_verdicts(db)
    write_plot(db)
    failed = status_frame(db, "demo")
    if len(failed) and int(failed.iloc[0].get("failed", 0)):
        print("some runs failed: `.venv/bin/runner status demo --runs` shows their errors", file=sys.stderr)
        return 1
    print("\nOpen the dashboard:  .venv/bin/runner dashboard   (then http://127.0.0.1:8501)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
