"""The whole single-image inference path as one traceable module (the body of the ONNX graph).

``InferenceGraph(model)(image (1, 3, h, w) float RGB 0..255, output_size (2,) int64)`` →
``scores (K,)``, ``labels (K,) int64``, ``masks (K, H, W) bool`` with ``(H, W) = output_size``:
normalise, zero-pad bottom/right to a multiple of ``size_divisibility``, backbone, pixel decoder,
decoder, top-k instance inference with the selected mask logits resized to the padded input,
cropped and resized to ``output_size``. The same operations, in the same order, as
``FastInst.forward`` in eval mode, written without Python ints taken from tensor shapes so that
height and width stay symbolic.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.modeling.meta_arch import FastInst
from fastinst.modeling.postprocess import instance_inference, resize_mask_logits


def infer(model: FastInst, image: Tensor, out_h: int, out_w: int) -> tuple[Tensor, Tensor, Tensor]:
    """``image (1, 3, h, w)`` → ``scores (K,)``, ``labels (K,)``, ``masks (K, out_h, out_w) bool``."""
    h, w = image.shape[-2], image.shape[-1]
    d = model.size_divisibility
    x = (image - model.pixel_mean) / model.pixel_std
    x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
    out = model.forward_head(model.backbone(x))
    resize = partial(resize_mask_logits, padded_size=(x.shape[-2], x.shape[-1]), image_size=(h, w),
                     output_size=(out_h, out_w))
    result = instance_inference(out["pred_logits"][0], out["pred_masks"][0], model.top_k, resize)
    return result["scores"], result["labels"], result["masks"]


class InferenceGraph(nn.Module):
    """The exported graph: ``(image (1, 3, h, w), output_size (2,) int64)`` → scores, labels, masks."""

    def __init__(self, model: FastInst) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, output_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out_h, out_w = output_size[0].item(), output_size[1].item()
        torch._check(out_h > 0)
        torch._check(out_w > 0)
        return infer(self.model, image, out_h, out_w)


class SizedGraph(nn.Module):
    """The same path with the output size as Python ints (for ``torch.compile`` and CUDA graphs)."""

    def __init__(self, model: FastInst) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, output_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        return infer(self.model, image, output_size[0], output_size[1])
