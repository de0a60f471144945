"""Adaptive average pooling written with shape-generic ops, for graphs with a dynamic input size.

``nn.AdaptiveAvgPool2d`` with an output size that does not divide the input (the PPM's 2, 3 and 6
bins) is decomposed at export into gathers whose indices are fixed for the example input's size;
this module computes the same bins (PyTorch's ``floor(i·H/s)`` to ``ceil((i+1)·H/s)``) as two
averaging matrices built from the runtime size, so one exported graph serves every input size.
Equal to ``nn.AdaptiveAvgPool2d`` up to float32 summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def averaging_matrix(bins: int, length: int, like: Tensor) -> Tensor:
    """``(bins, length)``: row i averages positions ``floor(i·L/bins) .. ceil((i+1)·L/bins) - 1``."""
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * length, bins, rounding_mode="floor")
    end = -torch.div(-(i + 1) * length, bins, rounding_mode="floor")
    j = torch.arange(length, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``(B, C, H, W)`` → ``(B, C, s, s)`` average bins, as ``nn.AdaptiveAvgPool2d(s)``."""

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        rows = averaging_matrix(self.output_size, x.shape[-2], x)
        cols = averaging_matrix(self.output_size, x.shape[-1], x)
        return torch.einsum("ih,bchw,jw->bcij", rows, x, cols)


def replace_adaptive_pools(module: nn.Module) -> int:
    """Swap every square ``nn.AdaptiveAvgPool2d`` in ``module`` (in place) for the matrix form; returns the count."""
    count = 0
    for name, child in module.named_children():
        size = getattr(child, "output_size", None)
        if isinstance(child, nn.AdaptiveAvgPool2d) and isinstance(size, int):
            setattr(module, name, MatrixAdaptiveAvgPool2d(size))
            count += 1
        else:
            count += replace_adaptive_pools(child)
    return count
