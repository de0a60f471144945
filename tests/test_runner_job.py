"""How the job maps the training engine's JSONL records onto train_records rows."""

from __future__ import annotations

from runner.job import train_record


def test_engine_record_maps_step_total_and_terms() -> None:
    record = {"type": "train", "iteration": 20, "loss_cls": 1.0, "loss_mask": 2.0, "loss_ia": 3.0,
              "total_loss": 6.0, "lr": 1e-4, "time": 0.5, "data_time": 0.01}
    row = train_record(run_id=7, attempt=1, index=1, record=record)
    assert row.step == 20
    assert row.loss == 6.0
    assert row.losses == {"loss_cls": 1.0, "loss_mask": 2.0, "loss_ia": 3.0}
    assert row.lr == 1e-4 and row.data["type"] == "train"


def test_record_without_total_sums_terms_and_uses_index() -> None:
    row = train_record(run_id=7, attempt=1, index=4, record={"loss_a": 1.5, "loss_b": 0.5})
    assert row.step == 4 and row.loss == 2.0
