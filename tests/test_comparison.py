"""`runner compare` and the verdict columns of `runner export`: rows of a grid against the baseline,
on real per-image matchings (pycocotools) of synthetic runs; bad input; the seed policy."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from runner_helpers import REPO, runner_cmd
from sqlalchemy import delete, func, select
from verdict_helpers import comparison_db, evaluate_queued, evaluated_run, synthetic_val

from runner.comparison import ComparisonError, compare_grid, row_intervals
from runner.db import AddedSeed, Artifact, Database, Metrics, Run, SpeedMeasurement, init_db
from runner.export import export_grid
from runner.seed_policy import apply_seed_policy, policy_state

QUALITIES = {"base": 0.55, "same": 0.55, "better": 0.95}


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = init_db(f"sqlite:///{tmp_path / 'results.db'}")
    yield database
    database.dispose()


def table_counts(db: Database) -> dict[str, int]:
    tables = (Run, Metrics, Artifact, SpeedMeasurement, AddedSeed)
    return {t.__tablename__: db.read(lambda s, t=t: s.scalar(select(func.count()).select_from(t))) for t in tables}


def add_speed(db: Database, run_id: int, rounds: list[float], group: str | None) -> None:
    extra = {"fps_repeats": rounds, **({"interleave": {"group": group, "runs": [], "position": []}} if group else {})}
    sorted_rounds = sorted(rounds)
    db.write(lambda s: s.add(SpeedMeasurement(
        run_id=run_id, device_type="cpu", device="test cpu", dtype="float32", backend="eager",
        fps=sorted_rounds[len(rounds) // 2], fps_min=min(rounds), fps_max=max(rounds), latency_ms={},
        repeats=len(rounds), images=10, warmup=1, threads=1, host="h", packages={}, concurrent=[], source="measure",
        extra=extra)))


def run_ids(db: Database, row: str) -> list[int]:
    return db.read(lambda s: list(s.scalars(select(Run.id).where(Run.row_name == row).order_by(Run.id))))


def test_planted_difference_decided_and_same_config_undecided(tmp_path: Path, sqlite_db: Database) -> None:
    comparison_db(tmp_path, sqlite_db, QUALITIES, seeds=3, same=("same",))
    frame = compare_grid(sqlite_db, "cmp", resamples=300)
    by_row = frame.set_index("row")
    assert list(frame["row"]) == ["base", "same", "better"] and frame.attrs["baseline"] == "base"
    assert by_row.loc["base", "verdict"] == "baseline"
    # A/A: the same config under another name (its runs are the baseline's): undecided, P = 1/2.
    assert by_row.loc["same", "verdict"] == "undecided" and by_row.loc["same", "delta"] == 0.0
    assert by_row.loc["same", "p_better"] == pytest.approx(0.5) and by_row.loc["same", "delta_width"] > 0
    # The planted difference: decided in its direction, with a high probability of improvement.
    assert by_row.loc["better", "verdict"] == "better" and by_row.loc["better", "delta_lo"] > 0
    assert by_row.loc["better", "p_better"] > 0.9
    low, value, high = by_row.loc["better", ["value_lo", "value", "value_hi"]]
    assert low < value < high
    metrics = sqlite_db.read(lambda s: list(s.scalars(select(Metrics.AP).join(Run).where(Run.row_name == "better"))))
    assert value == pytest.approx(100 * sum(metrics) / len(metrics))  # the stored APs, in percent
    reverse = compare_grid(sqlite_db, "cmp", baseline="better", resamples=300).set_index("row")
    assert reverse.loc["base", "verdict"] == "worse"
    assert reverse.loc["base", "delta"] == pytest.approx(-by_row.loc["better", "delta"])


def test_fps_ratio_from_interleaved_rounds_and_unpaired_fallback(tmp_path: Path, sqlite_db: Database) -> None:
    comparison_db(tmp_path, sqlite_db, {"base": 0.6, "fast": 0.6}, seeds=2)
    drift = [1.0, 0.8, 1.1, 0.9, 1.05]
    group = uuid.uuid4().hex
    for run_id in run_ids(sqlite_db, "base"):
        add_speed(sqlite_db, run_id, [20.0 * d for d in drift], group)
    for run_id in run_ids(sqlite_db, "fast"):
        add_speed(sqlite_db, run_id, [25.0 * d * (1 + 0.002 * i) for i, d in enumerate(drift)], group)
    fast = compare_grid(sqlite_db, "cmp", resamples=50).set_index("row").loc["fast"]
    assert fast["fps_paired"] and fast["fps_verdict"] == "faster"
    assert fast["fps_ratio_lo"] < fast["fps_ratio"] < fast["fps_ratio_hi"] and 1.2 < fast["fps_ratio"] < 1.3
    # Newer rows measured apart (no interleaved group): the newest shared group still pairs them ...
    for run_id in run_ids(sqlite_db, "fast"):
        add_speed(sqlite_db, run_id, [25.0 * d for d in drift], None)
    assert compare_grid(sqlite_db, "cmp", resamples=50).set_index("row").loc["fast", "fps_paired"]
    # ... and without any, the ratio is unpaired and says so (drift between measurements is not cancelled).
    sqlite_db.write(lambda s: s.execute(delete(SpeedMeasurement)))
    for run_id in run_ids(sqlite_db, "base"):
        add_speed(sqlite_db, run_id, [20.0 * d for d in drift], None)
    for run_id in run_ids(sqlite_db, "fast"):
        add_speed(sqlite_db, run_id, [25.0 * d for d in reversed(drift)], None)
    unpaired = compare_grid(sqlite_db, "cmp", resamples=50).set_index("row").loc["fast"]
    assert not unpaired["fps_paired"] and unpaired["fps_verdict"] in ("faster", "undecided")
    assert unpaired["fps_ratio_hi"] - unpaired["fps_ratio_lo"] > 5 * (fast["fps_ratio_hi"] - fast["fps_ratio_lo"])


def test_bad_input_names_what_is_wrong_and_changes_nothing(tmp_path: Path, sqlite_db: Database) -> None:
    gt = comparison_db(tmp_path, sqlite_db, {"base": 0.6, "other": 0.7}, seeds=2)
    before = table_counts(sqlite_db)
    with pytest.raises(ComparisonError, match=r"no row named 'nope' in grid 'cmp' \(rows: base, other\)"):
        compare_grid(sqlite_db, "cmp", baseline="nope")
    with pytest.raises(ComparisonError, match="choose from"):
        compare_grid(sqlite_db, "cmp", metric="AR100")
    # Another val set for one run: refused, naming the runs on each side.
    other = run_ids(sqlite_db, "other")[0]
    sqlite_db.write(lambda s: s.execute(delete(Artifact).where(Artifact.run_id == other)))
    sqlite_db.write(lambda s: s.execute(delete(Metrics).where(Metrics.run_id == other)))
    evaluated_run(sqlite_db, other, synthetic_val(40, seed=5), 0.7, 0, tmp_path)
    with pytest.raises(ComparisonError, match=rf"different val sets.*other run {other}"):
        compare_grid(sqlite_db, "cmp")
    # A run without its matching (an old database): named, with what to do.
    sqlite_db.write(lambda s: s.execute(delete(Artifact).where(Artifact.run_id == other)))
    with pytest.raises(ComparisonError, match=rf"no per-image matching for other: run {other} \(seed 0\)"):
        compare_grid(sqlite_db, "cmp")
    after = table_counts(sqlite_db)
    assert after == {**before, "artifacts": before["artifacts"] - 1}  # only what the test itself deleted
    # export still works without verdicts, and says why
    notes: list[str] = []
    text = export_grid(sqlite_db, "cmp", "md", note=notes.append)
    assert "verdict" not in text and notes and "no per-image matching" in notes[0]
    assert gt


def test_baseline_with_one_run_is_refused(tmp_path: Path, sqlite_db: Database) -> None:
    comparison_db(tmp_path, sqlite_db, {"base": 0.6, "other": 0.7}, seeds=1)
    with pytest.raises(ComparisonError, match="baseline 'base' has 1 succeeded run.*at least 2"):
        compare_grid(sqlite_db, "cmp")
    rows = row_intervals(sqlite_db, "cmp", resamples=50)  # intervals without a comparison still work
    assert rows["value_lo"].notna().all() and rows["note"].str.contains("seed variation unknown").all()


def test_export_and_cli_carry_the_verdicts(tmp_path: Path, sqlite_db: Database) -> None:
    comparison_db(tmp_path, sqlite_db, QUALITIES, seeds=2, same=("same",))
    csv = export_grid(sqlite_db, "cmp", "csv").splitlines()
    header = csv[0].split(",")
    for column in ("baseline", "value_lo", "value_hi", "delta", "delta_lo", "delta_hi", "delta_width", "p_better",
                   "verdict", "fps_ratio", "fps_ratio_lo", "fps_ratio_hi", "fps_verdict"):
        assert column in header, column
    verdicts = [line.split(",")[header.index("verdict")] for line in csv[1:]]
    assert verdicts[0] == "baseline" and verdicts[1] == "undecided"
    md = export_grid(sqlite_db, "cmp", "md")
    assert "AP [95% CI]" in md and "ΔAP vs base [95% CI]" in md and "P(better)" in md and "(w " in md
    latex = export_grid(sqlite_db, "cmp", "latex")
    assert "\\caption{" in latex and "decided" in latex
    decided = [line for line in latex.splitlines() if "better" in line and line.startswith("better")]
    assert all("*" in line for line in decided)
    url = str(sqlite_db.url)
    out = subprocess.run(runner_cmd(url, "compare", "cmp", "--resamples", "200"), cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ΔAP vs base [95% CI]" in out.stdout and "undecided" in out.stdout and "P(better)" in out.stdout
    bad = subprocess.run(runner_cmd(url, "compare", "cmp", "--baseline", "nope"), cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("runner compare: no row named 'nope'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_seed_policy_adds_seeds_only_where_undecided(tmp_path: Path, sqlite_db: Database) -> None:
    qualities = {"base": 0.6, "close": 0.6, "far": 0.98}
    gt = comparison_db(tmp_path, sqlite_db, qualities, seeds=2, extra="seed_policy: {min: 2, max: 4}\n")
    state = policy_state(sqlite_db, "cmp")
    assert state.policy is not None and state.policy.max == 4 and state.waiting == ""
    added = apply_seed_policy(sqlite_db, "cmp")
    assert sorted(a["row"] for a in added) == ["base", "close"] and {a["seed"] for a in added} == {2}
    assert "undecided" in next(a["reason"] for a in added if a["row"] == "close")
    assert apply_seed_policy(sqlite_db, "cmp") == []  # the step waits for its runs
    assert "not succeeded yet" in policy_state(sqlite_db, "cmp").waiting
    for _step in range(3):
        evaluate_queued(sqlite_db, tmp_path, gt, qualities)
        apply_seed_policy(sqlite_db, "cmp")
    state = policy_state(sqlite_db, "cmp")
    assert state.seeds["far"] == 2 and state.seeds["close"] <= 4 and state.seeds["base"] <= 4
    runs = sqlite_db.read(lambda s: s.scalar(select(func.count()).select_from(Run)))
    assert runs == sum(state.seeds.values())
    out = subprocess.run(runner_cmd(str(sqlite_db.url), "status", "cmp"), cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert "seed policy of 'cmp': 2 to 4 seeds" in out.stdout and "step 1: seed 2 added to close" in out.stdout
    frame = compare_grid(sqlite_db, "cmp", resamples=100).set_index("row")
    assert frame.loc["close", "runs"] == state.seeds["close"] and frame.loc["far", "verdict"] == "better"
