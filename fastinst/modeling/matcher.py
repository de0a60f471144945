"""Hungarian matchers (scipy): predictions ↔ GT with a location cost, and IA-q pixels ↔ GT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fastinst.modeling.layers import point_sample

Indices = list[tuple[Tensor, Tensor]]


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits over points for every pair: ``(Q, P)``, ``(M, P)`` → ``(Q, M)``."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - (2Σσy + 1) / (Σσ + Σy + 1)`` for every pair: ``(Q, P)``, ``(M, P)`` → ``(Q, M)``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _solve(cost: Tensor) -> tuple[Tensor, Tensor]:
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher:
    """cost = w_cls·(−p[gt class]) + w_bce·BCE + w_dice·dice + w_loc·(−[query location inside GT]).

    Mask costs on ``num_points`` uniform points shared by all pairs of an image (fp32).
    """

    def __init__(self, cost_class: float, cost_mask: float, cost_dice: float, cost_location: float,
                 num_points: int) -> None:
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.cost_location = cost_location
        self.num_points = num_points

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict]) -> Indices:
        """``outputs``: ``pred_logits (B, Q, K+1)``, ``pred_masks (B, Q, h, w)``, optional
        ``query_locations (B, Q, 2)``; ``targets[b]``: ``labels (M,)``, ``masks (M, Hp, Wp)``.
        Costs in float32 even under autocast (as the official matcher)."""
        with torch.autocast(outputs["pred_masks"].device.type, enabled=False):
            return self._match(outputs, targets)

    def _match(self, outputs: dict, targets: list[dict]) -> Indices:
        indices = []
        for b, target in enumerate(targets):
            logits = outputs["pred_logits"][b].float()
            pred = outputs["pred_masks"][b].float()
            gt = target["masks"].to(pred)
            labels = target["labels"]
            cost = -self.cost_class * logits.softmax(-1)[:, labels]
            points = torch.rand(1, self.num_points, 2, device=pred.device)
            pred_pts = point_sample(pred[None], points)[0]
            gt_pts = point_sample(gt[None], points)[0]
            cost = cost + self.cost_mask * pairwise_sigmoid_ce(pred_pts, gt_pts)
            cost = cost + self.cost_dice * pairwise_dice(pred_pts, gt_pts)
            locations = outputs.get("query_locations")
            if self.cost_location and locations is not None and len(labels):
                inside = point_sample(gt[None], locations[b][None].to(gt))[0] > 0  # (M, Q)
                cost = cost - self.cost_location * inside.T.to(cost)
            indices.append(_solve(cost))
        return indices


@torch.no_grad()
def match_ia_pixels(ia_logits: Tensor, targets: list[dict], cost_class: float, cost_location: float) -> Indices:
    """Match each GT to one pixel of the selection map (IA-q matcher, docs/official_architecture.md#matching).

    cost = w_cls·(−p_pixel[gt class]) + w_loc·(−[GT adaptive-avg-pooled to the map is > 0]).
    ``ia_logits (B, K+1, h, w)``; returns per image (pixel indices, GT indices).
    """
    hw = (int(ia_logits.shape[-2]), int(ia_logits.shape[-1]))
    indices = []
    for b, target in enumerate(targets):
        probs = ia_logits[b].float().flatten(1).T.softmax(-1)  # (hw, K+1)
        cost = -cost_class * probs[:, target["labels"]]
        if cost_location and len(target["labels"]):
            inside = F.adaptive_avg_pool2d(target["masks"][None].float(), hw)[0] > 0
            cost = cost - cost_location * inside.flatten(1).T.to(cost)
        indices.append(_solve(cost))
    return indices
