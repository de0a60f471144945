"""The training records' schema: what ``metrics.jsonl`` holds and ``train(on_record=...)`` receives.

One JSON object a line, flat. A step record (``"type": "train"``) is the mean over the steps since
the previous one::

    {"type": "train", "iteration": 20, "time": 0.41, "data_time": 0.01, "lr": 1e-4,
     "total_loss": 31.2, "loss_cls": 1.9, "loss_mask": 2.3, ...}

``iteration`` counts finished optimisation steps (1-based), ``time`` is seconds per step including
loading, ``data_time`` seconds per step waiting for data, ``lr`` the largest parameter group's rate,
``total_loss`` the sum of the loss terms and every ``loss_*`` key one loss term by its criterion
name. An eval record (``"type": "eval"``) holds the periodic COCO evaluation at ``iteration``
(``AP``, ``AP50``, ... as fractions). Pure Python: the runner imports it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

TRAIN, EVAL = "train", "eval"
LOSS_PREFIX = "loss_"
STEP_FIELDS = ("iteration", "time", "data_time", "lr", "total_loss")


class RecordError(ValueError):
    """A record does not follow the schema; the message names the key."""


def _number(kind: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{kind} record: {key!r} must be a number, got {value!r}")
    return float(value)


def _iteration(kind: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"{kind} record: 'iteration' must be a whole number >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class StepRecord:
    """Means over a logging window; ``losses`` maps each ``loss_*`` term to its value."""

    iteration: int
    time: float
    data_time: float
    lr: float
    total_loss: float
    losses: dict[str, float]

    def __post_init__(self) -> None:
        _iteration(TRAIN, self.iteration)
        for key in STEP_FIELDS[1:]:
            _number(TRAIN, key, getattr(self, key))
        for key, value in self.losses.items():
            if not key.startswith(LOSS_PREFIX):
                raise RecordError(f"{TRAIN} record: unknown key {key!r} (loss terms are named {LOSS_PREFIX}*)")
            _number(TRAIN, key, value)
        if not math.isclose(self.total_loss, sum(self.losses.values()), rel_tol=1e-6, abs_tol=1e-9):
            raise RecordError(f"{TRAIN} record: 'total_loss' {self.total_loss} is not the sum of the loss "
                              f"terms {sum(self.losses.values())}")

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object of a ``metrics.jsonl`` line."""
        return {"type": TRAIN, "iteration": self.iteration, "time": self.time, "data_time": self.data_time,
                "lr": self.lr, "total_loss": self.total_loss, **self.losses}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """Validate a flat step record (raises ``RecordError`` naming the key) and read it."""
        if data.get("type") != TRAIN:
            raise RecordError(f"step record: 'type' must be {TRAIN!r}, got {data.get('type')!r}")
        fixed: dict[str, Any] = {k: data.get(k) for k in STEP_FIELDS}  # checked by __post_init__
        losses = {k: v for k, v in data.items() if k not in ("type", *STEP_FIELDS)}
        return cls(**fixed, losses=losses)

    @classmethod
    def from_means(cls, iteration: int, means: dict[str, float]) -> StepRecord:
        """From a window's means of ``time``, ``data_time``, ``lr`` and the ``loss_*`` terms."""
        losses = {k: v for k, v in means.items() if k.startswith(LOSS_PREFIX)}
        return cls(iteration=iteration, time=means["time"], data_time=means["data_time"], lr=means["lr"],
                   total_loss=sum(losses.values()), losses=losses)


@dataclass(frozen=True)
class EvalRecord:
    """A periodic evaluation at ``iteration``: ``metrics`` as ``evaluate`` returns them."""

    iteration: int
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": EVAL, "iteration": self.iteration, **self.metrics}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRecord:
        return cls(_iteration(EVAL, data.get("iteration")),
                   {k: v for k, v in data.items() if k not in ("type", "iteration")})


def parse_record(data: dict[str, Any]) -> StepRecord | EvalRecord:
    """Read one record by its ``type``; raises ``RecordError`` for anything off the schema."""
    kinds: dict[str, type[StepRecord] | type[EvalRecord]] = {TRAIN: StepRecord, EVAL: EvalRecord}
    kind = kinds.get(data.get("type"))  # type: ignore[arg-type]  # None or a foreign type finds no kind
    if kind is None:
        raise RecordError(f"record: 'type' must be one of {list(kinds)}, got {data.get('type')!r}")
    return kind.from_dict(data)
