"""Multi-scale deformable-attention pixel decoder (Table 5), pure PyTorch (``F.grid_sample``).

Reconstruction of Mask2Former's ``MSDeformAttnPixelDecoder`` over res3-res5
(docs/official_architecture.md#pixel-decoders): per-level 1x1 conv+GN projection, sine PE + learnable level embedding, post-norm deformable encoder layers,
output split back into ``[E5, E4, E3]``. Mask2Former's extra stride-4 FPN level is not built:
FastInst's finest map is E3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.config import ModelConfig
from fastinst.modeling.layers import Conv2dNormAct, FFNBlock, sine_position_embedding
from fastinst.registry import PIXEL_DECODERS

LEVELS = ("res5", "res4", "res3")  # coarse → fine, the order of the output list


class MSDeformAttn(nn.Module):
    """Deformable DETR's multi-scale deformable attention, sampling with bilinear ``grid_sample``.

    ``query (B, Lq, C)``, ``reference (1 or B, Lq, 2)`` (x, y in [0, 1], shared by all levels),
    ``value (B, Lv, C)``: the levels of ``shapes [(h, w), ...]`` flattened and concatenated → ``(B, Lq, C)``.
    """

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Offsets start on a ring of ``num_heads`` directions, point k at distance k (Deformable DETR)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: Tensor, reference: Tensor, value: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        b, lq, c = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value).transpose(1, 2).reshape(b * heads, c // heads, -1)
        offsets = self.sampling_offsets(query).view(b, lq, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, lq, heads, levels * points).softmax(-1)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, None, None, :] + offsets / normalizer[:, None, :]
        grids = (2.0 * locations - 1.0).permute(0, 2, 3, 1, 4, 5).flatten(0, 1)  # (B·heads, levels, Lq, P, 2)
        sampled = [
            F.grid_sample(v_l.unflatten(-1, (h, w)), grids[:, lvl], mode="bilinear", padding_mode="zeros",
                          align_corners=False)  # (B·heads, C/heads, Lq, P)
            for lvl, (v_l, (h, w)) in enumerate(zip(v.split([h * w for h, w in shapes], dim=-1), shapes))
        ]
        weights = weights.transpose(1, 2).reshape(b * heads, 1, lq, levels * points)
        out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B·heads, C/heads, Lq)
        return self.output_proj(out.view(b, c, lq).transpose(1, 2))


class DeformableEncoderLayer(nn.Module):
    """Post-norm: ``x = norm(x + MSDeformAttn(x + pos, ref, x))``, then FFN. ``x, pos (B, L, C)``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_levels: int, num_points: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFNBlock(dim, ffn_dim, dropout)

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        x = self.norm(x + self.dropout(self.attn(x + pos, reference, x, shapes)))
        return self.ffn(x)


def reference_points(shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1]: ``(1, Σ h·w, 2)`` (x, y)."""
    refs = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
                              (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w, indexing="ij")
        refs.append(torch.stack([x.flatten(), y.flatten()], -1))
    return torch.cat(refs)[None]


class MSDeformAttnPixelDecoder(nn.Module):
    """``{"res3","res4","res5"}`` → ``[E5 (B,C,H/32,W/32), E4 (B,C,H/16,W/16), E3 (B,C,H/8,W/8)]``."""

    def __init__(self, in_channels: dict[str, int], dim: int, num_layers: int, num_heads: int, ffn_dim: int,
                 num_points: int) -> None:
        super().__init__()
        self.input_proj = nn.ModuleDict()
        for level in LEVELS:
            proj = Conv2dNormAct(in_channels[level], dim, 1, norm=nn.GroupNorm(32, dim))
            nn.init.xavier_uniform_(proj.weight)
            assert proj.bias is not None  # built with bias=True
            nn.init.zeros_(proj.bias)
            self.input_proj[level] = proj
        self.level_embed = nn.Parameter(torch.empty(len(LEVELS), dim))
        nn.init.normal_(self.level_embed)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, num_heads, ffn_dim, len(LEVELS), num_points) for _ in range(num_layers)
        )

    def forward(self, features: dict[str, Tensor]) -> list[Tensor]:
        srcs, pos, shapes = [], [], []
        for lvl, level in enumerate(LEVELS):
            x = self.input_proj[level](features[level])
            h, w = x.shape[-2:]
            shapes.append((h, w))
            srcs.append(x.flatten(2).transpose(1, 2))
            pe = sine_position_embedding(h, w, x.shape[1], x.device).flatten(2).transpose(1, 2)
            pos.append(pe + self.level_embed[lvl])
        y, pos_all = torch.cat(srcs, 1), torch.cat(pos, 1)
        reference = reference_points(shapes, y.device)
        for layer in self.layers:
            y = layer(y, pos_all, reference, shapes)
        b, _, c = y.shape
        return [part.transpose(1, 2).reshape(b, c, h, w)
                for part, (h, w) in zip(y.split([h * w for h, w in shapes], dim=1), shapes)]


@PIXEL_DECODERS.register("msdeform_attn")
def build_msdeform_attn(cfg: ModelConfig, in_channels: dict[str, int]) -> MSDeformAttnPixelDecoder:
    p = cfg.pixel_decoder
    return MSDeformAttnPixelDecoder(in_channels, cfg.hidden_dim, p.num_encoder_layers, p.num_heads,
                                    p.dim_feedforward, p.num_points)
