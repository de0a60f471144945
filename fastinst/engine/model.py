"""The inference model: a config's model with its weights, in eval mode on a device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastinst.checkpoint import load_weights
from fastinst.config import Config

if TYPE_CHECKING:
    from fastinst.modeling import FastInst


def load_model(cfg: Config, weights: str | Path | None, device: torch.device,
               channels_last: bool = False) -> tuple[FastInst, list[dict[str, Any]] | None]:
    """The eval-mode model of ``cfg`` with ``weights`` (``None``: as initialised; CheckpointError
    propagates) on ``device``, and the weights' categories (``[{"id", "name"}]`` or None).
    ``channels_last``: conv weights stored NHWC."""
    from fastinst import build_model

    model = build_model(cfg)
    categories = load_weights(model, weights).categories if weights is not None else None
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, categories
