"""Per-stage prediction heads and the attention masks built from their outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.modeling.layers import MLP


class PredictionHead(nn.Module):
    """One head set: LayerNorm on the Na queries, class MLP, mask-embedding MLP, pixel Linear.

    ``class_layers=1`` gives Mask2Former's Linear class head; ``project_pixels=False`` takes the pixels
    as mask features without the Linear.
    ``queries (B, Na, C)``, ``pixels (B, L, C)`` → ``logits (B, Na, K+1)`` (or None), ``masks (B, Na, h, w)``.
    """

    def __init__(self, dim: int, num_classes: int, class_layers: int = 3, project_pixels: bool = True) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.class_embed = MLP(dim, dim, num_classes + 1, class_layers)
        self.mask_embed = MLP(dim, dim, dim, 3)
        self.pixel_proj = nn.Linear(dim, dim) if project_pixels else nn.Identity()

    def forward(self, queries: Tensor, pixels: Tensor, hw: tuple[int, int],
                with_class: bool = True) -> tuple[Tensor | None, Tensor]:
        q = self.query_norm(queries)
        logits = self.class_embed(q) if with_class else None
        masks = torch.einsum("bqc,blc->bql", self.mask_embed(q), self.pixel_proj(pixels))
        return logits, masks.reshape(masks.shape[0], masks.shape[1], *hw)


def _finish_mask(blocked: Tensor, num_heads: int) -> Tensor:
    """Unblock fully blocked rows, repeat per head: ``(B, N, L)`` → ``(B·heads, N, L)`` detached."""
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0).detach()


def predicted_attention_mask(mask_logits: Tensor, num_aux: int, num_heads: int,
                             size: tuple[int, int] | None = None) -> Tensor:
    """Block pixels whose previous mask logit is < 0; auxiliary rows never blocked.

    ``mask_logits (B, Na, h, w)`` → ``(B·heads, Na+Nb, h·w)`` bool, True = blocked; with ``size`` the
    logits are first resized bilinearly to it (Mask2Former's per-level masks), giving ``size``'s h·w.
    """
    mask_logits = mask_logits.detach()
    if size is not None:
        mask_logits = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    padded = F.pad(mask_logits, (0, 0, 0, 0, 0, num_aux), value=1.0)
    return _finish_mask(padded.flatten(2) < 0, num_heads)


def gt_attention_mask(indices: list[tuple[Tensor, Tensor]], gt_masks: list[Tensor], hw: tuple[int, int],
                      num_queries: int, num_heads: int) -> Tensor:
    """GT-mask-guided attention mask: matched query i attends only inside its GT
    (docs/official_architecture.md#gt-mask-guidance).

    ``gt_masks[b] (M_b, Hp, Wp)`` padded full-resolution masks, resized to ``hw`` with nearest.
    Returns ``(B·heads, num_queries, h·w)`` bool, True = blocked.
    """
    blocked = torch.zeros(len(gt_masks), num_queries, hw[0] * hw[1], dtype=torch.bool, device=gt_masks[0].device)
    for b, ((src, tgt), masks) in enumerate(zip(indices, gt_masks)):
        if len(src) == 0:
            continue
        small = F.interpolate(masks[None].float(), size=hw, mode="nearest")[0].bool()
        blocked[b, src.to(blocked.device)] = ~small[tgt.to(blocked.device)].flatten(1)
    return _finish_mask(blocked, num_heads)
