"""Losses: IA-q loss on the auxiliary head, and per-stage class / mask BCE / dice losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.config import LossConfig
from fastinst.modeling.layers import point_sample
from fastinst.modeling.matcher import HungarianMatcher, Indices, match_ia_pixels


@torch.no_grad()
def uncertain_point_coords(logits: Tensor, num_points: int, oversample_ratio: float,
                           importance_ratio: float) -> Tensor:
    """PointRend sampling on ``logits (N, 1, h, w)``: ``(N, P, 2)``, most uncertain (−|logit|) + random."""
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()[:, 0]  # (N, S)
    num_uncertain = int(importance_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    picked = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    rand = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([picked, rand], dim=1)


def sigmoid_ce_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean BCE over points, summed over masks, / num_masks. ``(M, P)`` each."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """``1 − (2Σσy + 1)/(Σσ + Σy + 1)`` per mask, summed, / num_masks. ``(M, P)`` each."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def semantic_ia_targets(targets: list[dict], hw: tuple[int, int], no_object: int) -> Tensor:
    """Dense IA targets (Table 6f "− bipartite matching"): ``(B, h·w)`` class per pixel.

    A pixel gets the class of a GT whose mask, adaptive-avg-pooled to ``hw``, is > 0 there; where
    GTs overlap the smaller one wins; everything else is no-object.
    """
    out = []
    for t in targets:
        dense = torch.full((hw[0] * hw[1],), no_object, dtype=torch.int64, device=t["labels"].device)
        if len(t["labels"]):
            inside = F.adaptive_avg_pool2d(t["masks"][None].float(), hw)[0].flatten(1) > 0  # (M, hw)
            for j in t["masks"].flatten(1).sum(1).argsort(descending=True).tolist():
                dense[inside[j]] = t["labels"][j]
        out.append(dense)
    return torch.stack(out)


class SetCriterion(nn.Module):
    """Total loss = λ_ia·IA-q + Σ_outputs (λ_cls·CE + λ_bce·BCE + λ_dice·dice) (docs/official_architecture.md#losses).

    Returns weighted losses named ``loss_{cls,mask,dice}`` (final stage), ``loss_{...}_{i}`` (aux
    output i) and ``loss_ia``.
    """

    empty_weight: Tensor  # buffer (K+1,): CE class weights, the no-object class last

    def __init__(self, num_classes: int, matcher: HungarianMatcher, cfg: LossConfig, use_ia_loss: bool) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.cfg = cfg
        self.use_ia_loss = use_ia_loss
        weight = torch.ones(num_classes + 1)
        weight[-1] = cfg.no_object_weight
        self.register_buffer("empty_weight", weight, persistent=False)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            total = torch.tensor([num_masks], device=outputs["pred_masks"].device)
            torch.distributed.all_reduce(total)
            num_masks = max(total.item() / torch.distributed.get_world_size(), 1.0)
        losses = self._stage_losses(outputs, targets, num_masks, suffix="")
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._stage_losses(aux, targets, num_masks, suffix=f"_{i}"))
        if self.use_ia_loss and outputs.get("ia_logits") is not None:
            losses["loss_ia"] = self.cfg.ia_weight * self.ia_loss(outputs["ia_logits"], targets)
        return losses

    def _stage_losses(self, out: dict, targets: list[dict], num_masks: float, suffix: str) -> dict[str, Tensor]:
        indices = out.get("matching_indices") or self.matcher(out, targets)
        return {
            "loss_cls" + suffix: self.cfg.class_weight * self.class_loss(out["pred_logits"], targets, indices),
            **{k + suffix: v for k, v in self.mask_losses(out["pred_masks"], targets, indices, num_masks).items()},
        }

    def class_loss(self, logits: Tensor, targets: list[dict], indices: Indices) -> Tensor:
        """Weighted CE over all queries; unmatched queries target no-object. ``logits (B, Q, K+1)``."""
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target[b, src] = targets[b]["labels"][tgt]
        return F.cross_entropy(logits.float().transpose(1, 2), target, self.empty_weight)

    def mask_losses(self, masks: Tensor, targets: list[dict], indices: Indices,
                    num_masks: float) -> dict[str, Tensor]:
        """Point-sampled BCE and dice on matched pairs. ``masks (B, Q, h, w)``, GT at padded full res."""
        src = torch.cat([masks[b, s] for b, (s, _) in enumerate(indices)])
        if src.shape[0] == 0:
            zero = masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        gt = torch.cat([targets[b]["masks"][t] for b, (_, t) in enumerate(indices)]).to(src)
        src = src[:, None].float()
        coords = uncertain_point_coords(src, self.cfg.num_points, self.cfg.oversample_ratio,
                                        self.cfg.importance_sample_ratio)
        labels = point_sample(gt[:, None], coords)[:, 0]
        logits = point_sample(src, coords)[:, 0]
        return {
            "loss_mask": self.cfg.mask_weight * sigmoid_ce_loss(logits, labels, num_masks),
            "loss_dice": self.cfg.dice_weight * dice_loss(logits, labels, num_masks),
        }

    def ia_loss(self, ia_logits: Tensor, targets: list[dict]) -> Tensor:
        """CE over every pixel of the selection map: matched (or, semantic: covered) pixels get their
        GT class, the rest no-object. ``ia_logits (B, K+1, h, w)``."""
        b, _, h, w = ia_logits.shape
        ia = self.cfg.ia
        if ia.assignment == "semantic":
            target = semantic_ia_targets(targets, (h, w), self.num_classes)
        else:
            indices = match_ia_pixels(ia_logits, targets, self.cfg.class_weight,
                                      self.cfg.location_weight if ia.location_cost else 0.0)
            target = torch.full((b, h * w), self.num_classes, dtype=torch.int64, device=ia_logits.device)
            for i, (pix, tgt) in enumerate(indices):
                target[i, pix] = targets[i]["labels"][tgt]
        weight = None
        if ia.no_object_weight == "inverse_area":
            weight = torch.ones(self.num_classes + 1, device=ia_logits.device)
            weight[-1] = 1.0 / (h * w)
        return F.cross_entropy(ia_logits.float().flatten(2), target, weight)
