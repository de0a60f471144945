"""Query initialisation (Table 2): IA-guided selection (default), learnable, zero, or resized features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.config import ModelConfig
from fastinst.modeling.positional import PositionalGrid
from fastinst.registry import QUERY_INITS

SOURCE_INDEX = {"E5": 0, "E4": 1, "E3": 2}


@dataclass
class InitialQueries:
    """``queries``/``pos`` ``(B, Na, C)``; IA-guided only: ``ia_logits (B, K+1, h, w)``,
    ``query_index (B, Na)`` (row-major in the selection map), ``locations (B, Na, 2)`` (x, y in [0, 1])."""

    queries: Tensor
    pos: Tensor
    ia_logits: Tensor | None = None
    query_index: Tensor | None = None
    scores: Tensor | None = None
    locations: Tensor | None = None


def local_maximum(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``(B, K, H, W)`` → bool map of values ≥ all 8 neighbours (zero padded) and ≥ ``eps``."""
    padded = F.pad(x, (1, 1, 1, 1), value=0.0)
    h, w = x.shape[-2:]
    keep = x >= eps
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            keep &= x >= padded[..., dy:dy + h, dx:dx + w]
    return keep


@torch.no_grad()
def select_ia_queries(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """IA-guided selection from ``logits (B, K+1, H, W)`` (no-object last): ``(scores, index)``, each ``(B, k)``.

    Each pixel keeps only the probability of its foreground argmax class; a pixel that is a local
    maximum of that class map (compared with same-class neighbours only) gets +1, so local maxima
    rank first and others fill the remaining slots (official code; docs/official_architecture.md#query-selection).
    """
    probs = logits.softmax(dim=1)[:, :-1]
    top = probs.max(dim=1, keepdim=True)
    kept = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
    ranked = kept + local_maximum(kept).to(kept.dtype)
    if ranked.shape[-2] * ranked.shape[-1] < k:
        raise ValueError(f"cannot select {k} queries from a {tuple(ranked.shape[-2:])} map; "
                         f"use a larger input or fewer model.num_ia_queries")
    return ranked.max(dim=1).values.flatten(1).topk(k, dim=1)


def normalized_locations(index: Tensor, h: int, w: int) -> Tensor:
    """Row-major ``index (B, Na)`` → ``(B, Na, 2)`` (x, y) on an endpoint-inclusive [0, 1] grid."""
    rows = torch.div(index, w, rounding_mode="floor").float()
    cols = (index % w).float()
    return torch.stack([cols / max(w - 1, 1), rows / max(h - 1, 1)], dim=-1)


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """``x (B, C, HW)`` at ``index (B, Na)`` → ``(B, Na, C)``."""
    return torch.gather(x, 2, index.unsqueeze(1).expand(-1, x.shape[1], -1)).transpose(1, 2)


class IAGuidedQueries(nn.Module):
    """Auxiliary classification head on the selection map, then top-Na IA-guided pixel selection."""

    def __init__(self, dim: int, num_classes: int, num_queries: int, source: str) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.source_index = SOURCE_INDEX[source]
        self.cls_head = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, num_classes + 1, 1)
        )

    def forward(self, features: list[Tensor], pos_grid: PositionalGrid) -> InitialQueries:
        x = features[self.source_index]
        h, w = x.shape[-2:]
        logits = self.cls_head(x)
        scores, index = select_ia_queries(logits, self.num_queries)
        pos = pos_grid(h, w, x.device).flatten(2).expand(x.shape[0], -1, -1)
        return InitialQueries(
            queries=_gather(x.flatten(2), index), pos=_gather(pos, index), ia_logits=logits,
            query_index=index, scores=scores, locations=normalized_locations(index, h, w),
        )


class LearnedQueries(nn.Module):
    """Na learnable positions with learnable (Mask2Former) or all-zero (DETR) content."""

    def __init__(self, dim: int, num_queries: int, zero_content: bool) -> None:
        super().__init__()
        self.pos = nn.Embedding(num_queries, dim)
        self.content = None if zero_content else nn.Embedding(num_queries, dim)

    def forward(self, features: list[Tensor], pos_grid: PositionalGrid) -> InitialQueries:
        b = features[0].shape[0]
        pos = self.pos.weight.unsqueeze(0).expand(b, -1, -1)
        queries = torch.zeros_like(pos) if self.content is None else self.content.weight.unsqueeze(0).expand(b, -1, -1)
        return InitialQueries(queries=queries, pos=pos)


class ResizedQueries(nn.Module):
    """E4 resized bilinearly to S×S (S² = Na) and flattened; positions from the grid at S×S."""

    def __init__(self, num_queries: int) -> None:
        super().__init__()
        self.size = int(round(num_queries ** 0.5))
        if self.size * self.size != num_queries:
            raise ValueError(f"model.query_init=resize needs a square model.num_ia_queries, got {num_queries}")

    def forward(self, features: list[Tensor], pos_grid: PositionalGrid) -> InitialQueries:
        x = features[SOURCE_INDEX["E4"]]
        resized = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        pos = pos_grid(self.size, self.size, x.device).flatten(2).transpose(1, 2).expand(x.shape[0], -1, -1)
        return InitialQueries(queries=resized.flatten(2).transpose(1, 2), pos=pos)


@QUERY_INITS.register("ia_guided")
def _ia(cfg: ModelConfig) -> nn.Module:
    return IAGuidedQueries(cfg.hidden_dim, cfg.num_classes, cfg.num_ia_queries, cfg.query_source)


@QUERY_INITS.register("learnable")
def _learnable(cfg: ModelConfig) -> nn.Module:
    return LearnedQueries(cfg.hidden_dim, cfg.num_ia_queries, zero_content=False)


@QUERY_INITS.register("zero")
def _zero(cfg: ModelConfig) -> nn.Module:
    return LearnedQueries(cfg.hidden_dim, cfg.num_ia_queries, zero_content=True)


@QUERY_INITS.register("resize")
def _resize(cfg: ModelConfig) -> nn.Module:
    return ResizedQueries(cfg.num_ia_queries)
