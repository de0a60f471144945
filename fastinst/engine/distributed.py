"""This process's place in a ``torchrun`` job, and the collective steps training takes.

With env ``WORLD_SIZE`` > 1 the process joins the group described by ``RANK/WORLD_SIZE/LOCAL_RANK``:
nccl on CUDA (one GPU per local rank), gloo on CPU. With one process every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from fastinst.engine.device import pick_device


@dataclass
class Dist:
    """This process's place in the job: rank, world size, device; ``owned``: we initialised the group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | torch.device | None = None) -> Dist:
    """Join the process group described by env ``RANK/WORLD_SIZE/LOCAL_RANK`` (torchrun) if
    ``WORLD_SIZE`` > 1: nccl on CUDA (one GPU per local rank), gloo on CPU."""
    dev = pick_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return Dist(dist.get_rank(), dist.get_world_size(), dev, owned)


def shutdown_distributed(d: Dist) -> None:
    """Destroy the process group if ``setup_distributed`` created it."""
    if d.owned:
        dist.destroy_process_group()


def group_size() -> int:
    """Processes in the initialised group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """``values`` (any shape) averaged over the ranks."""
    if d.world_size > 1:
        dist.all_reduce(values)
        values = values / d.world_size
    return values


def all_gather_object(value: Any, d: Dist) -> list[Any]:
    """Every rank's ``value`` (index = rank)."""
    if d.world_size == 1:
        return [value]
    values: list[Any] = [None] * d.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(d: Dist) -> None:
    """Wait for every rank."""
    if d.world_size > 1:
        dist.barrier()
