"""Training state beyond the weights: RNG streams and the resumable checkpoints of ``fastinst train``.

A checkpoint holds everything needed to resume bit-exactly on CPU: model, optimizer, scheduler,
scaler, iteration, the RNG states of every rank (the sampler position follows from the iteration),
the config hash and the dataset's categories. ``last_checkpoint`` in the run folder names the latest.
(Reading a checkpoint's weights for inference is ``fastinst.checkpoint``'s.)
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastinst.checkpoint import read_checkpoint
from fastinst.config import Config
from fastinst.engine.distributed import group_size

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
FINAL_CHECKPOINT = "model_final.pth"


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's python / numpy / torch (and CUDA) RNG states, as tensors and plain Python
    values (so checkpoints load with ``torch.load(weights_only=True)``)."""
    mt = np.random.get_state(legacy=False)  # the global MT19937: {"state": {"key", "pos"}, "has_gauss", "gauss"}
    numpy_state = {"key": torch.from_numpy(mt["state"]["key"].astype(np.int64)), "pos": int(mt["state"]["pos"]),
                   "has_gauss": int(mt["has_gauss"]), "cached_gaussian": float(mt["gauss"])}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states ``rng_state`` returned."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    iteration: int = 0  # iterations completed
    categories: list[dict[str, Any]] = field(default_factory=list)  # the dataset's, in class-index order


def save_checkpoint(path: Path, state: TrainState, rng: list[dict[str, Any]], cfg: Config) -> None:
    """Write the checkpoint atomically and point ``last_checkpoint`` at it; ``rng``: every rank's ``rng_state``."""
    payload = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
               "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
               "iteration": state.iteration, "rng": rng, "config_hash": cfg.hash(), "categories": state.categories}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    (path.parent / LAST_CHECKPOINT).write_text(path.name + "\n")


def checkpoint_name(cfg: Config, iteration: int) -> str:
    """The file a checkpoint after ``iteration`` iterations is saved as (``model_final.pth`` at the end)."""
    return FINAL_CHECKPOINT if iteration >= cfg.solver.max_iter else f"model_{iteration:07d}.pth"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint ``out_dir/last_checkpoint`` names, if both exist."""
    pointer = out_dir / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    path = out_dir / pointer.read_text().strip()
    return path if path.is_file() else None


def load_checkpoint(path: Path, state: TrainState, rank: int, cfg: Config) -> dict[str, Any]:
    """Restore ``state`` from ``path`` (written by ``save_checkpoint``); return this rank's RNG state.

    An unreadable file raises ``fastinst.checkpoint.CheckpointError`` (one line naming it)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        read_checkpoint(path)  # the same load, failing with the one-line reason
        raise
    if payload.get("config_hash") != cfg.hash():
        logger.warning("resuming from %s, which was written with a different config", path)
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.scaler.load_state_dict(payload["scaler"])
    state.iteration = int(payload["iteration"])
    rngs: list[dict[str, Any]] = payload["rng"]
    if len(rngs) != group_size():
        logger.warning("%s was written by %d processes; RNG states are not restored exactly", path, len(rngs))
    return rngs[rank % len(rngs)]
