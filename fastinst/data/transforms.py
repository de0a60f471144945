"""Augmentation and batching.

Transforms act on ``image (3, H, W) float`` and ``masks (M, H, W) bool`` together and take a
``random.Random`` for their randomness. Images resize bilinearly with antialiasing (as PIL does
for detectron2), masks with exact nearest neighbour.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from fastinst.config import Config

if TYPE_CHECKING:
    from fastinst.data.coco import CocoInstanceDataset

Pair = tuple[torch.Tensor, torch.Tensor]


def shortest_edge_size(h: int, w: int, short: int, max_size: float = float("inf")) -> tuple[int, int]:
    """Output (h, w) with the shorter edge ``short`` and the longer edge at most ``max_size``."""
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize(image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> Pair:
    """Resize image (3, H, W) bilinearly and masks (M, H, W) by nearest neighbour to ``size``."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, masks
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return image, resize_masks(masks, size)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(M, H, W) bool → (M, *size) bool by exact nearest neighbour."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].to(torch.uint8), size=size, mode="nearest-exact")[0].bool()


def resize_shortest_edge(image: torch.Tensor, masks: torch.Tensor, short: int,
                         max_size: float = float("inf")) -> Pair:
    h, w = image.shape[-2:]
    return resize(image, masks, shortest_edge_size(h, w, short, max_size))


def random_crop(image: torch.Tensor, masks: torch.Tensor, size_range: Sequence[int], rng: random.Random) -> Pair:
    """Crop of uniform integer height and width in ``size_range`` (clipped to the image), uniform position."""
    h, w = image.shape[-2:]
    ch = rng.randint(min(h, size_range[0]), min(h, size_range[1]))
    cw = rng.randint(min(w, size_range[0]), min(w, size_range[1]))
    y0, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
    return image[:, y0:y0 + ch, x0:x0 + cw], masks[:, y0:y0 + ch, x0:x0 + cw]


def hflip(image: torch.Tensor, masks: torch.Tensor) -> Pair:
    return image.flip(-1), masks.flip(-1)


class TrainTransform:
    """The official (SparseInst) recipe: with probability ``1 - crop_prob`` resize the shorter edge
    to a choice of ``min_size_train`` (longer ≤ ``max_size_train``); otherwise first resize the
    shorter edge to a choice of ``crop_resize_choices`` (no cap) and random-crop, then that resize.
    Then a horizontal flip with p=0.5."""

    def __init__(self, cfg: Config) -> None:
        self.input = cfg.input

    def __call__(self, image: torch.Tensor, masks: torch.Tensor, rng: random.Random) -> Pair:
        c = self.input
        if c.crop_enabled and rng.random() < c.crop_prob:
            image, masks = resize_shortest_edge(image, masks, rng.choice(c.crop_resize_choices))
            image, masks = random_crop(image, masks, c.crop_size, rng)
        image, masks = resize_shortest_edge(image, masks, rng.choice(c.min_size_train), c.max_size_train)
        if c.random_flip and rng.random() < 0.5:
            image, masks = hflip(image, masks)
        return image.contiguous(), masks.contiguous()


class EvalTransform:
    """Deterministic resize: shorter edge ``min_size_test``, longer ≤ ``max_size_test``."""

    def __init__(self, cfg: Config) -> None:
        self.short, self.max_size = cfg.input.min_size_test, cfg.input.max_size_test

    def __call__(self, image: torch.Tensor, masks: torch.Tensor, rng: random.Random | None = None) -> Pair:
        return resize_shortest_edge(image, masks, self.short, self.max_size)


# --------------------------------------------------------------------------- loaders


def collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch is the list of its items (sizes differ; the model pads to its size divisibility)."""
    return list(batch)


class InfiniteSampler(Sampler):
    """Endless seeded shuffled keys ``(index, sample_seed)``, sharded over ``world_size`` ranks.

    Global position ``p`` (counted over all ranks) holds epoch ``p // n``'s permutation (seeded by
    ``seed`` and the epoch) at ``p % n``; rank ``r`` takes positions ``r, r + world_size, …`` after
    skipping ``start`` of its own (to resume). The sample seed depends only on ``(seed, p)``, so the
    augmentation is the same whatever the number of loader workers.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.size, self.seed, self.rank, self.world_size, self.start = size, seed, rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, perm = -1, torch.empty(0, dtype=torch.int64)
        for p in itertools.count(self.rank + self.start * self.world_size, self.world_size):
            if p // self.size != epoch:
                epoch = p // self.size
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            yield int(perm[p % self.size]), self.seed * 2**32 + p


def build_train_loader(cfg: Config, dataset: CocoInstanceDataset, batch_size: int | None = None,
                       seed: int | None = None, num_workers: int | None = None, rank: int = 0, world_size: int = 1,
                       start: int = 0) -> DataLoader:
    """Endless loader of ``collate`` batches (lists of items); defaults from ``cfg.solver.batch_size``,
    ``cfg.seed`` and ``cfg.data.num_workers``. ``batch_size`` is per rank."""
    workers = cfg.data.num_workers if num_workers is None else num_workers
    sampler = InfiniteSampler(len(dataset), cfg.seed if seed is None else seed, rank, world_size, start)
    return DataLoader(dataset, batch_size=batch_size or cfg.solver.batch_size, sampler=sampler,
                      num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)


def build_test_loader(cfg: Config, dataset: Dataset, batch_size: int = 1, num_workers: int | None = None) -> DataLoader:
    """Loader over the dataset once, in order."""
    workers = cfg.data.num_workers if num_workers is None else num_workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
