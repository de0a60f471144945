"""FastInst: preprocess → backbone → pixel decoder → decoder → (criterion | post-processing)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.config import Config
from fastinst.modeling.backbone import build_backbone
from fastinst.modeling.criterion import SetCriterion
from fastinst.modeling.matcher import HungarianMatcher
from fastinst.modeling.postprocess import instance_inference, resize_mask_logits
from fastinst.registry import DECODERS, PIXEL_DECODERS


class FastInst(nn.Module):
    """The full model. Eval: ``model(images)`` → per image ``scores (k,)``, ``labels (k,)``,
    ``masks (k, H, W) bool``; ``resize_all_masks=True`` resizes every query's mask before the top-k
    (the official order, which FLOP counts follow; same outputs, slower). Train:
    ``model(images, targets)`` → dict of weighted losses."""

    pixel_mean: Tensor  # buffers, (3, 1, 1) each
    pixel_std: Tensor

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m = cfg.model
        self.size_divisibility = m.size_divisibility
        self.fp32_head = m.fp32_head
        self.top_k = m.test.detections_per_image
        self.register_buffer("pixel_mean", torch.tensor(m.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(m.pixel_std).view(3, 1, 1), persistent=False)
        self.backbone = build_backbone(m.backbone)
        self.pixel_decoder = PIXEL_DECODERS.get(m.pixel_decoder.name)(m, self.backbone.out_channels)
        loss = cfg.loss
        # loss.ia.location_cost concerns the IA-q matcher only (Table 6f); this one always has it.
        matcher = HungarianMatcher(loss.class_weight, loss.mask_weight, loss.dice_weight, loss.location_weight,
                                   loss.num_points)
        self.decoder = DECODERS.get(m.decoder.name)(m, matcher)
        self.criterion = SetCriterion(m.num_classes, matcher, loss, use_ia_loss=m.query_init == "ia_guided")

    def forward_head(self, features: dict[str, Tensor], targets: list[dict] | None = None,
                     all_stage_logits: bool = False) -> dict:
        """Everything after the backbone on ``{"res3","res4","res5"}``; adds ``multi_scale_features``.
        With ``model.fp32_head``, in float32 whatever autocast the caller set."""
        if self.fp32_head:
            with torch.autocast(next(iter(features.values())).device.type, enabled=False):
                return self._head({k: v.float() for k, v in features.items()}, targets, all_stage_logits)
        return self._head(features, targets, all_stage_logits)

    def _head(self, features: dict[str, Tensor], targets: list[dict] | None, all_stage_logits: bool) -> dict:
        multi_scale = self.pixel_decoder(features)
        out = self.decoder(multi_scale, targets, all_stage_logits=all_stage_logits)
        out["multi_scale_features"] = multi_scale
        return out

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise, then zero-pad bottom/right to a common size divisible by ``size_divisibility``."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        d = self.size_divisibility
        hp = -(-max(h for h, _ in sizes) // d) * d
        wp = -(-max(w for _, w in sizes) // d) * d
        batch = images[0].new_zeros(len(images), 3, hp, wp, device=self.pixel_mean.device)
        for i, im in enumerate(images):
            batch[i, :, : sizes[i][0], : sizes[i][1]] = (im.to(batch) - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def forward(self, images: list[Tensor], targets: list[dict] | None = None,
                output_sizes: list[tuple[int, int]] | None = None,
                resize_all_masks: bool = False) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        batch, sizes = self.preprocess(images)
        padded = (batch.shape[-2], batch.shape[-1])
        if self.training:
            if targets is None:
                raise ValueError("FastInst in train mode needs targets")
            targets = [self._pad_target(t, padded) for t in targets]
            out = self.forward_head(self.backbone(batch), targets)
            return self.criterion(out, targets)
        out = self.forward_head(self.backbone(batch))
        results = []
        for i, size in enumerate(sizes):
            out_size = output_sizes[i] if output_sizes is not None else size
            resize = partial(resize_mask_logits, padded_size=padded, image_size=size, output_size=out_size)
            results.append(instance_inference(out["pred_logits"][i], out["pred_masks"][i], self.top_k, resize,
                                              resize_all=resize_all_masks))
        return results

    def _pad_target(self, target: dict, padded: tuple[int, int]) -> dict:
        masks = target["masks"].to(self.pixel_mean.device)
        h, w = masks.shape[-2:]
        masks = F.pad(masks.float(), (0, padded[1] - w, 0, padded[0] - h))
        return {"labels": target["labels"].to(self.pixel_mean.device), "masks": masks}
