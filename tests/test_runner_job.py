"""How the job maps the training engine's records (fastinst.engine.records) onto train_records rows."""

from __future__ import annotations

import pytest

from fastinst.engine.records import EvalRecord, RecordError, StepRecord
from runner.job import train_record


def test_step_record_maps_iteration_total_and_terms() -> None:
    record = StepRecord(iteration=20, time=0.5, data_time=0.01, lr=1e-4, total_loss=6.0,
                        losses={"loss_cls": 1.0, "loss_mask": 2.0, "loss_ia": 3.0}).to_dict()
    row = train_record(run_id=7, attempt=1, index=1, record=record)
    assert (row.step, row.loss, row.lr, row.time) == (20, 6.0, 1e-4, 0.5)
    assert row.losses == {"loss_cls": 1.0, "loss_mask": 2.0, "loss_ia": 3.0}
    assert row.data == record


def test_eval_record_maps_only_the_step() -> None:
    row = train_record(run_id=7, attempt=1, index=3, record=EvalRecord(40, {"AP": 0.25}).to_dict())
    assert (row.step, row.loss, row.lr, row.losses) == (40, None, None, {})
    assert row.data == {"type": "eval", "iteration": 40, "AP": 0.25}


@pytest.mark.parametrize(("record", "message"), [
    ({"step": 1, "loss": 2.0}, "run 7 record 4: record: 'type' must be one of"),
    ({"type": "train", "iteration": 1, "time": 0.1, "data_time": 0.0, "lr": 1e-4, "loss": 2.0},
     "run 7 record 4: train record: 'total_loss' must be a number, got None"),
])
def test_off_schema_record_is_refused_naming_the_key(record: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        train_record(run_id=7, attempt=1, index=4, record=record)
