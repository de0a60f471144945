"""Building blocks shared by the pixel decoders, the decoder and the heads."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """detectron2's ``c2_xavier_fill``: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Conv2dNormAct(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm (stored as ``.norm``) and activation.

    The norm lives inside the conv module, so state-dict keys read ``name.weight`` and
    ``name.norm.weight`` as in detectron2's ``Conv2d``.
    """

    def __init__(self, *args: Any, norm: nn.Module | None = None, activation: nn.Module | None = None,
                 **kwargs: Any) -> None:  # args, kwargs: nn.Conv2d's, passed on unchanged
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def conv_gn(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> Conv2dNormAct:
    """Bias-free conv + GroupNorm(32) (+ ReLU), c2_xavier init: the FPN lateral/output conv."""
    conv = Conv2dNormAct(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False,
                         norm=nn.GroupNorm(32, out_channels), activation=nn.ReLU() if relu else None)
    c2_xavier_fill(conv)
    return conv


class MLP(nn.Module):
    """``num_layers`` Linears with ReLU between them: ``(..., in) → (..., out)``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class AttentionBlock(nn.Module):
    """Post-norm attention sub-layer: ``norm(x + MHA(x + pos_x, mem + pos_mem, mem))``.

    Batch-first: ``x (B, Nq, C)``, ``memory (B, Nk, C)``; ``attn_mask (B·heads, Nq, Nk)`` bool,
    True = blocked. Used for cross-attention (memory given) and self-attention (memory = x).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, x: Tensor, memory: Tensor, pos_x: Tensor | None = None, pos_mem: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        q = x if pos_x is None else x + pos_x
        k = memory if pos_mem is None else memory + pos_mem
        out = self.attn(q, k, memory, attn_mask=attn_mask, need_weights=False)[0]
        return self.norm(x + self.dropout(out))


class FFNBlock(nn.Module):
    """Post-norm feed-forward sub-layer: ``norm(x + W2 relu(W1 x))``, ``(..., C) → (..., C)``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


def sine_position_embedding(h: int, w: int, dim: int, device: torch.device,
                            temperature: float = 10000.0) -> Tensor:
    """DETR sine embedding (normalize=True, scale 2π), ``dim/2`` features per axis: ``(1, dim, h, w)``."""
    num_feats = dim // 2
    eps, scale = 1e-6, 2 * torch.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0)


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample ``inputs (N, C, H, W)`` at ``coords (N, P, 2)`` in [0, 1] (x, y): ``(N, C, P)``."""
    out = F.grid_sample(inputs, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False)
    return out.squeeze(3)
