"""What every inference backend is: the call shape (:class:`Backend`), its results, its builder's
signature, and the label naming a backend with its options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastinst.config import Config

Result = dict[str, Tensor]  # one image's "scores" (K,), "labels" (K,) int64, "masks" (K, H, W) bool


def backend_label(name: str, dtype: str, channels_last: bool) -> str:
    """A backend name with its options, e.g. ``eager bfloat16 channels-last``."""
    return " ".join([name, dtype] + (["channels-last"] if channels_last else []))


class Backend:
    """A callable model: ``(images, output_sizes) → results`` (see ``fastinst.deploy.backends``).

    ``name``, ``device``, ``dtype``, ``channels_last`` say how it runs; ``categories`` are the
    ``[{"id", "name"}]`` of the weights (checkpoint or ONNX metadata) in class-index order, or None.
    """

    name: str
    device: torch.device
    dtype: str
    channels_last: bool = False
    categories: list[dict[str, Any]] | None = None
    cpu_outputs: bool = True

    def __call__(self, images: list[Tensor], output_sizes: list[tuple[int, int]]) -> list[Result]:
        raise NotImplementedError

    def describe(self) -> str:
        """``name`` plus its options, e.g. ``eager bfloat16 channels-last``."""
        return backend_label(self.name, self.dtype, self.channels_last)


# A backend family's builder: (cfg, weights, device, dtype, channels_last, onnx_path) → Backend.
Builder = Callable[[Config, str | Path | None, torch.device, str, bool, str | Path | None], Backend]
