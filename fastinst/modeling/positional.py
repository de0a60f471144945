"""Positional embeddings of the decoder: the learnable grid P (default) or DETR sine (Table 7)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.modeling.layers import sine_position_embedding


class PositionalGrid(nn.Module):
    """Gives a ``(1, C, h, w)`` positional map for any feature size.

    ``learnable``: a learnable ``1×C×S×S`` grid (S = round(sqrt(Na))) resized bilinearly
    (align_corners False) to ``(h, w)``, as the official ``meta_pos_embed``; ``sinusoidal``: DETR sine
    embedding computed at ``(h, w)``.
    """

    def __init__(self, kind: str, dim: int, num_queries: int, init_std: float) -> None:
        super().__init__()
        self.kind = kind
        self.dim = dim
        self.size = int(round(math.sqrt(num_queries)))
        if kind == "learnable":
            # The official code leaves this uninitialised (torch.empty); we draw N(0, init_std).
            self.grid = nn.Parameter(torch.empty(1, dim, self.size, self.size))
            nn.init.normal_(self.grid, std=init_std)
        else:
            self.register_parameter("grid", None)

    def forward(self, h: int, w: int, device: torch.device) -> Tensor:
        if self.grid is None:
            return sine_position_embedding(h, w, self.dim, device)
        return F.interpolate(self.grid, size=(h, w), mode="bilinear", align_corners=False)
