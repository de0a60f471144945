"""Results databases with known contents for the dashboard tests (and its README screenshots).

Grids are queued with ``runner.queue.submit``; outcomes (metrics, speed rows, per-step records,
artifacts, failures) are then written through ``runner.db``'s models, as a job would write them. AP
values are stored as pycocotools gives them, in [0, 1]; the dashboard shows percent. Speed rows are
written for two settings where noted (a V100 in float32, the reference, and a CPU), so the views'
device selection has something to choose.

``fill_known`` makes small exact numbers the tests check; ``fill_demo`` makes a paper-like
database (Table 6a and 6b grids, a backbone grid, running, queued and failed runs, training
curves, a prediction image) for the browser test and screenshots.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from sqlalchemy import select

from fastinst.grid import Grid
from runner import queue
from runner.db import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    Artifact,
    Database,
    GridRecord,
    Metrics,
    Run,
    SpeedMeasurement,
    TrainRecord,
    utcnow,
)
from runner.stages import parse_stage_grid

V100 = "Tesla V100-SXM2-16GB"
CPU = "Intel(R) Xeon(R) CPU @ 2.20GHz"
SPREAD = 0.5  # every demo speed row: fps_min = fps - SPREAD, fps_max = fps + SPREAD

# Known numbers: (layers, seed) -> (AP in [0, 1], V100 FPS, GFLOPs). Means: D1 35.1 @ 51.0, D2 36.2 @ 30.0,
# D3 37.9 @ 35.5 FPS, so the FPS Pareto front is D1 and D3 (D2 is slower and worse than D3). Each run also
# has a CPU row at a tenth of that, and D1 seed 0 an older V100 row at 10 FPS (the newest row counts).
KNOWN_LAYERS = {
    (1, 0): (0.350, 50.0, 59.6), (1, 1): (0.352, 52.0, 59.6),
    (2, 0): (0.360, 30.0, 67.5), (2, 1): (0.364, 30.0, 67.5),
    (3, 0): (0.378, 35.0, 75.5), (3, 1): (0.380, 36.0, 75.5),
}
# Backbones measured on the CPU, one seed: resnet18 30.0 AP @ 2.0 FPS, resnet101 32.0 AP @ 1.5 FPS.
KNOWN_BACKBONES = {"resnet18": (0.300, 2.0, 50.0), "resnet101": (0.320, 1.5, 80.0)}


def grid(name: str, axes: dict[str, list[Any]], seeds: list[int], root: Path, *, real_stages: bool = False,
         reference: str | None = None, speed: dict[str, str] | None = None) -> Grid:
    spec: dict[str, Any] = {"name": name, "axes": axes, "seeds": seeds, "resources": {"gpus": 0}}
    if speed:
        spec["speed"] = speed
    if real_stages:
        spec.update(stages=["train", "eval", "analyze", "bench"], data=str(root))
    else:
        spec["stages"] = ["noop"]
    if reference:
        spec["reference"] = reference
    return parse_stage_grid(spec, source=name, root=root)


def runs_of(db: Database, grid_name: str) -> list[tuple[int, dict[str, Any], int]]:
    """(run id, overrides, seed) of a grid's runs, in id order."""
    stmt = select(Run).join(GridRecord, Run.grid_id == GridRecord.id).where(GridRecord.name == grid_name).order_by(Run.id)
    return db.read(lambda s: [(r.id, dict(r.overrides), r.seed) for r in s.scalars(stmt)])


def speed(run_id: int, fps: float, device_type: str = "cuda", dtype: str = "float32",
          minutes_ago: float = 30.0) -> SpeedMeasurement:
    """A speed row as ``runner measure`` writes one: median ``fps`` over 3 repeats, spread ± ``SPREAD``."""
    return SpeedMeasurement(
        run_id=run_id, device_type=device_type, device=V100 if device_type == "cuda" else CPU, dtype=dtype,
        backend="eager", fps=fps, fps_min=fps - SPREAD, fps_max=fps + SPREAD,
        latency_ms={"mean": 1000 / fps, "median": 1000 / fps, "p90": 1100 / fps, "p99": 1200 / fps}, repeats=3,
        images=100, warmup=5, threads=8 if device_type == "cpu" else 1, host="host-a",
        packages={"torch": "2.14.1"}, concurrent=[], source="measure", extra={"fps_repeats": [fps - SPREAD, fps, fps + SPREAD]},
        created_at=utcnow() - timedelta(minutes=minutes_ago))


def succeed(db: Database, run_id: int, *, ap: float | None, gflops: float | None,
            speeds: tuple[SpeedMeasurement, ...] = (), device: str = "cpu", worker: str = "host-a:1",
            ap_sml: tuple[float, ...] = (), artifacts: tuple[tuple[str, str], ...] = (), minutes: float = 10.0,
            ap_ci: tuple[float, float] | None = None) -> None:
    """Finish a run as a job would; ``ap_ci``: its AP's 95% image-bootstrap interval (as the eval stage
    stores it, ``extra["eval"]["AP_ci"]``)."""
    def _write(s: Any) -> None:
        run = s.get(Run, run_id)
        finished = utcnow() - timedelta(minutes=60 - run_id % 50)
        run.status, run.worker, run.device, run.attempts = SUCCEEDED, worker, device, 1
        run.started_at, run.finished_at = finished - timedelta(minutes=minutes), finished
        run.git_commit, run.packages = "0123abcd", {"python": "3.11", "torch": "2.14.1"}
        small, medium, large = ap_sml or (None, None, None)
        s.add(Metrics(run_id=run_id, AP=ap, AP50=None if ap is None else min(1.0, ap * 1.55), AP_S=small,
                      AP_M=medium, AP_L=large, params=30_000_000, gflops=gflops,
                      extra={"timings": {"train_s": minutes * 60}, **({"eval": {"AP_ci": list(ap_ci)}} if ap_ci else {})}))
        s.add_all(speeds)
        for kind, path in artifacts:
            s.add(Artifact(run_id=run_id, kind=kind, path=path))

    db.write(_write)


def add_records(db: Database, run_id: int, steps: int, attempt: int = 1, every: int = 20) -> None:
    def _write(s: Any) -> None:
        for step in range(0, steps, every):
            decay = math.exp(-step / 400)
            losses = {"loss_ce": 2.0 * decay + 0.3, "loss_mask": 1.2 * decay + 0.2, "loss_dice": 1.5 * decay + 0.4}
            s.add(TrainRecord(run_id=run_id, attempt=attempt, step=step, time=0.5, lr=1e-4 if step < 1500 else 1e-5,
                              loss=sum(losses.values()), losses=losses, data={"step": step, **losses}))

    db.write(_write)


def set_state(db: Database, run_id: int, status: str, *, error: str | None = None, worker: str | None = None,
              device: str | None = None, attempts: int = 1, max_iter: int | None = None) -> None:
    def _write(s: Any) -> None:
        run = s.get(Run, run_id)
        now = utcnow()
        run.status, run.error, run.worker, run.device, run.attempts = status, error, worker, device, attempts
        run.started_at, run.heartbeat_at = now - timedelta(minutes=7), now - timedelta(seconds=4)
        run.finished_at = now if status == FAILED else None
        if max_iter is not None:
            run.config = {**run.config, "solver": {**run.config["solver"], "max_iter": max_iter}}

    db.write(_write)


def fill_known(db: Database, root: Path) -> None:
    """Grids ``layers`` (3 rows × 2 seeds, baseline D3, reference speed cuda/float32, FPS on a V100 and the
    CPU; 10 training records and an AP interval [33.0, 37.0] for D1 seed 0; no per-image matchings, so no
    comparison can be made) and ``backbones`` (2 rows, FPS on the CPU, its reference), plus grid
    ``broken`` with one failed, one running and one queued run."""
    queue.submit(db, grid("layers", {"model.decoder.num_layers": [1, 2, 3]}, [0, 1], root, speed={"device": "cuda"},
                          reference="model.decoder.num_layers=3"))
    for run_id, overrides, seed in runs_of(db, "layers"):
        ap, fps, gflops = KNOWN_LAYERS[(overrides["model.decoder.num_layers"], seed)]
        first = (overrides["model.decoder.num_layers"], seed) == (1, 0)
        older = (speed(run_id, 10.0, minutes_ago=120),) if first else ()
        succeed(db, run_id, ap=ap, gflops=gflops, device="cuda:0", ap_ci=(0.33, 0.37) if first else None,
                speeds=(*older, speed(run_id, fps), speed(run_id, fps / 10, "cpu", minutes_ago=40)))
        if first:
            add_records(db, run_id, 200)
    queue.submit(db, grid("backbones", {"model.backbone.name": ["resnet18", "resnet101"]}, [0], root))
    for run_id, overrides, _seed in runs_of(db, "backbones"):
        ap, fps, gflops = KNOWN_BACKBONES[overrides["model.backbone.name"]]
        succeed(db, run_id, ap=ap, gflops=gflops, speeds=(speed(run_id, fps, "cpu"),))
    queue.submit(db, grid("broken", {"model.num_ia_queries": [10, 20, 30]}, [0], root))
    failed, running, _queued = (run_id for run_id, _o, _s in runs_of(db, "broken"))
    set_state(db, failed, FAILED, attempts=3, error="Traceback (most recent call last):\n  File \"job.py\"\n"
              "RuntimeError: CUDA out of memory (known failure)")
    set_state(db, running, RUNNING, worker="host-b:7", device="cuda:1", max_iter=1000)


# Paper Table 6a/6b numbers (AP, AP_S, AP_M, AP_L, GFLOPs, V100 FPS), reproduced with small offsets.
DEMO_LAYERS = {0: (30.5, 12.1, 34.5, 48.6, 51.6, 60.2), 1: (35.6, 14.3, 38.8, 56.6, 59.6, 48.8),
               2: (37.1, 15.8, 39.7, 58.8, 67.5, 41.0), 3: (37.9, 16.0, 40.7, 60.1, 75.5, 35.5),
               6: (38.7, 16.6, 41.7, 61.1, 99.3, 25.1), 9: (39.1, 16.1, 42.3, 62.1, 123.2, 19.2)}
DEMO_QUERIES = {10: (31.2, 10.2, 32.9, 54.2, 71.9, 39.8), 50: (36.9, 14.5, 39.6, 58.5, 73.5, 37.7),
                100: (37.9, 16.0, 40.7, 60.1, 75.5, 35.5), 200: (38.5, 16.2, 41.3, 60.8, 79.5, 31.6)}
REPORTED_HEADER = "table,row,grid,row_name,AP,AP_S,AP_M,AP_L,GFLOPs,FPS,AR\n"


def prediction_image(path: Path) -> Path:
    """A small val-like image with two 'predicted masks' drawn over it."""
    image = Image.new("RGB", (320, 240), (70, 90, 110))
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rectangle((30, 120, 150, 220), fill=(200, 180, 120))
    draw.ellipse((180, 40, 290, 150), fill=(120, 160, 90))
    draw.rectangle((28, 118, 152, 222), fill=(255, 0, 0, 90), outline=(255, 0, 0), width=2)
    draw.ellipse((178, 38, 292, 152), fill=(0, 120, 255, 90), outline=(0, 120, 255), width=2)
    draw.text((32, 104), "box 0.91", fill=(255, 255, 255))
    draw.text((182, 24), "circle 0.87", fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def fill_demo(db: Database, root: Path) -> Path:
    """A paper-like database; returns the path of a matching ``reported.csv`` written under ``root``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    layers = grid("table6a_layers", {"model.decoder.num_layers": list(DEMO_LAYERS)}, [0, 1], root / "data",
                  real_stages=True, reference="model.decoder.num_layers=3", speed={"device": "cuda"})
    queries = grid("table6b_queries", {"model.num_ia_queries": list(DEMO_QUERIES)}, [0], root / "data",
                   real_stages=True, speed={"device": "cuda"})
    queue.submit(db, layers)
    queue.submit(db, queries)
    image = prediction_image(root / "predictions" / "000139.png")
    for run_id, overrides, seed in runs_of(db, "table6a_layers"):
        ap, small, medium, large, gflops, fps = DEMO_LAYERS[overrides["model.decoder.num_layers"]]
        delta = 0.25 if seed else -0.15
        v100 = fps * 1.08 + seed * 0.4
        succeed(db, run_id, ap=(ap - 0.6 + delta) / 100, gflops=gflops, device="cuda:0",
                speeds=(speed(run_id, v100), speed(run_id, v100 / 12, "cpu")),
                ap_sml=((small - 0.5) / 100, (medium - 0.4) / 100, (large - 0.7) / 100),
                artifacts=(("predictions", str(image.parent)),))
        add_records(db, run_id, 2000)
    for run_id, overrides, _seed in runs_of(db, "table6b_queries"):
        ap, small, medium, large, gflops, fps = DEMO_QUERIES[overrides["model.num_ia_queries"]]
        succeed(db, run_id, ap=(ap - 0.8) / 100, gflops=gflops, device="cuda:0", speeds=(speed(run_id, fps * 1.08),),
                ap_sml=((small - 0.5) / 100, (medium - 0.4) / 100, (large - 0.7) / 100))
    queue.submit(db, grid("table1_backbones", {"model.backbone.name": ["resnet50", "resnet101"],
                                               "model.decoder.num_layers": [1, 3]}, [0, 1], root / "data",
                          real_stages=True))
    backbone_runs = runs_of(db, "table1_backbones")
    for i, (run_id, _overrides, _seed) in enumerate(backbone_runs):
        if i == 0:
            set_state(db, run_id, FAILED, attempts=3, worker="host-b:2", device="cuda:1",
                      error="Traceback (most recent call last):\n  File \"runner/job.py\", line 242, in run_job\n"
                            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
        elif i in (1, 2):
            set_state(db, run_id, RUNNING, worker=f"host-a:{i}", device=f"cuda:{i - 1} (NVIDIA A100)",
                      max_iter=2000)
            add_records(db, run_id, 700 * i)
    reported = root / "reported.csv"
    lines = [f"6a,D{k},table6a_layers,model.decoder.num_layers={k},{v[0]},{v[1]},{v[2]},{v[3]},{v[4]},{v[5]},"
             for k, v in DEMO_LAYERS.items()]
    lines += [f"6b,Na{k},table6b_queries,model.num_ia_queries={k},{v[0]},{v[1]},{v[2]},{v[3]},{v[4]},{v[5]},"
              for k, v in DEMO_QUERIES.items()]
    reported.write_text(REPORTED_HEADER + "\n".join(lines) + "\n")
    return reported
