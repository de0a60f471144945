"""Instance inference: top-k (query, class) pairs, binary masks, mask-quality-weighted scores.

As the official post-processing does (docs/official_architecture.md#inference).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_mask_logits(mask_logits: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                       output_size: tuple[int, int]) -> Tensor:
    """``(Q, h, w)`` logits → padded input size → crop to the image → ``output_size``, bilinear."""
    masks = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    masks = masks[:, :, : image_size[0], : image_size[1]]
    # Always resized, even to the same size, as the official sem_seg_postprocess (FLOPs and FPS count it).
    masks = F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)
    return masks[0]


def instance_inference(class_logits: Tensor, mask_logits: Tensor, top_k: int,
                       resize: Callable[[Tensor], Tensor] | None = None,
                       resize_all: bool = False) -> dict[str, Tensor]:
    """``class_logits (Q, K+1)``, ``mask_logits (Q, H, W)`` at output size → ``scores (k,)``,
    ``labels (k,)``, ``masks (k, H, W) bool``, ``class_scores (k,)``, ``topk_index (k,)`` (into Q·K),
    sorted by score. With ``resize``, ``mask_logits`` may be at any size: the k selected ``(k, h, w)``
    are resized to output size after selection (a per-mask resize, so the values are the same as
    resizing all Q first; only the gather moves to the small maps). ``resize_all`` resizes all Q
    ``(Q, h, w)`` before selecting, in the official order: same outputs, the official FLOP count."""
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.softmax(-1)[:, :-1].flatten()
    class_scores, topk_index = probs.topk(min(top_k, probs.numel()))
    labels = topk_index % num_classes
    if resize is not None and resize_all:
        mask_logits = resize(mask_logits)
    masks = mask_logits[torch.div(topk_index, num_classes, rounding_mode="floor")]
    if resize is not None and not resize_all:
        masks = resize(masks)
    binary = masks > 0
    # One bool→float cast serves both sums (a float32 count is exact below 2^24 pixels per mask).
    inside = binary.to(masks.dtype)
    mask_scores = (masks.sigmoid() * inside).flatten(1).sum(1) / (inside.float().flatten(1).sum(1) + 1e-6)
    scores = class_scores * mask_scores
    order = scores.argsort(descending=True)
    return {
        "scores": scores[order], "labels": labels[order], "masks": binary[order],
        "class_scores": class_scores[order], "topk_index": topk_index[order],
    }
