"""End to end: two variants × two seeds of the CPU preset on a tiny synthetic set, through
`runner submit` + `runner work` (training, then the measurement phase) to the results database,
then `runner export`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from runner_helpers import REPO, runner_cmd
from sqlalchemy import func, select

from runner.db import SUCCEEDED, Artifact, Database, MeasureJob, Metrics, Run, SpeedMeasurement, TrainRecord


@pytest.mark.slow
def test_cpu_preset_grid_end_to_end(tmp_path: Path) -> None:
    from fastinst.data.synthetic import make_synthetic

    make_synthetic(tmp_path / "synth", num_train=8, num_val=4, size=128, num_classes=4, workers=1)
    grid = tmp_path / "e2e.yaml"
    grid.write_text(f"""\
name: e2e
base:
  _base_: {REPO / 'experiments' / 'configs' / 'cpu_tiny.yaml'}
  solver: {{max_iter: 4, batch_size: 2, warmup_iters: 1, checkpoint_period: 4, log_period: 1}}
  input: {{min_size_train: [128], max_size_train: 128, crop_enabled: false, min_size_test: 128, max_size_test: 128}}
  data: {{num_workers: 0}}
axes:
  model.decoder.num_layers: [1, 2]
seeds: 2
stages: [train, eval, analyze, bench]
stage_options: {{analyze: {{size: [128, 128]}}, bench: {{images: 2, warmup: 1, repeats: 2}}}}
data: synth
resources: {{gpus: 0}}
""")
    url = f"sqlite:///{tmp_path / 'results.db'}"
    run = lambda *a: subprocess.run(runner_cmd(url, *a), cwd=REPO, capture_output=True, text=True, timeout=1800)  # noqa: E731
    out = run("submit", str(grid))
    assert out.returncode == 0 and "4 queued" in out.stdout, out.stderr
    out = run("work", "--cpu-slots", "1", "--exit-when-empty", "--poll", "0.5", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-3000:]
    db = Database(url)
    runs = db.read(lambda s: list(s.scalars(select(Run))))
    assert [r.status for r in runs] == [SUCCEEDED] * 4, [r.error for r in runs]
    metrics = db.read(lambda s: list(s.scalars(select(Metrics))))
    assert all(m.AP is not None and m.params and m.gflops for m in metrics)
    assert db.read(lambda s: s.scalar(select(func.count()).select_from(TrainRecord))) >= 4 * 4
    assert all(r.git_commit and r.packages.get("torch") for r in runs)
    drawn = db.read(lambda s: list(s.scalars(select(Artifact.path).where(Artifact.kind == "predictions"))))
    assert len(drawn) == 4 and all(len(list(Path(p).glob("*.png"))) == 4 for p in drawn)  # every val image
    # The measurement phase: one measurement per run, each alone on the host, from the run's checkpoint.
    jobs = db.read(lambda s: list(s.scalars(select(MeasureJob))))
    assert [j.status for j in jobs] == [SUCCEEDED] * 4 and all(j.weights and j.weights.endswith(".pth") for j in jobs)
    speed = db.read(lambda s: list(s.scalars(select(SpeedMeasurement))))
    assert sorted(r.run_id for r in speed) == sorted(r.id for r in runs)
    assert all(r.source == "stage" and r.concurrent == [] and r.repeats == 2 and r.images == 2 for r in speed)
    assert min(j.started_at for j in jobs) >= max(r.finished_at for r in runs)  # training first, then measuring
    db.dispose()
    out = run("export", "e2e", "--format", "md")
    assert out.returncode == 0
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines()]
    assert cells[0] == ["model.decoder.num_layers", "AP", "AP_S", "AP_M", "AP_L", "GFLOPs", "FPS (cpu/float32)"]
    assert [row[0] for row in cells[2:4]] == ["1", "2"] and all("±" in row[1] and row[6] for row in cells[2:4])
    print(out.stdout)
