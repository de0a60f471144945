"""The whole single-image inference path as one traceable module (the body of the ONNX graph).

``InferenceGraph(model)(image (1, 3, h, w) float RGB 0..255, output_size (2,) int64)`` →
``scores (K,)``, ``labels (K,) int64``, ``masks (K, H, W) bool`` with ``(H, W) = output_size``:
normalise, zero-pad bottom/right to a multiple of ``size_divisibility``, backbone, pixel decoder,
decoder, top-k instance inference with the selected mask logits resized to the padded input,
cropped and resized to ``output_size``. The same operations, in the same order, as
``FastInst.forward`` in eval mode, written without Python ints taken from tensor shapes so that
height and width stay symbolic; one exception: the mask resize runs as two matrix products
(:func:`resize_as_matmul`, equal up to float32 summation order, and ~2x less memory traffic than
resize → crop → resize at full resolution, which dominated the post-processing in profiles).
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.modeling.meta_arch import FastInst
from fastinst.modeling.postprocess import instance_inference


def bilinear_matrix(out_len: int, in_len: int, like: Tensor) -> Tensor:
    """``(out_len, in_len)`` weights of a 1-D bilinear resize (``align_corners=False``, PyTorch's
    source-index rule: ``src = max((dst + 0.5) · in/out - 0.5, 0)``, edge clamped)."""
    dst = torch.arange(out_len, device=like.device, dtype=like.dtype)
    src = ((dst + 0.5) * (in_len / out_len) - 0.5).clamp(min=0)
    low = src.floor()
    frac = (src - low)[:, None]
    low = low.long()[:, None]
    high = torch.clamp(low + 1, max=in_len - 1)
    cols = torch.arange(in_len, device=like.device)[None, :]
    return (cols == low).to(like.dtype) * (1 - frac) + (cols == high).to(like.dtype) * frac


def resize_as_matmul(logits: Tensor, padded: tuple[int, int], image: tuple[int, int],
                     output: tuple[int, int]) -> Tensor:
    """``resize_mask_logits`` as two matrix products: ``(k, h, w)`` → ``(k, H, W)``.

    Upsampling to the padded size, cropping to the image and resizing to the output size are all
    linear along each axis, so each axis collapses into one ``(out, in)`` matrix: the result equals
    the three steps up to float32 summation order, without writing the padded-size intermediate.
    """
    device = logits.device.type
    if torch.is_autocast_enabled(device):  # half-precision runs: masks are still resized in float32
        with torch.autocast(device, enabled=False):
            return resize_as_matmul(logits.float(), padded, image, output)
    rows = bilinear_matrix(output[0], image[0], logits) @ bilinear_matrix(padded[0], logits.shape[-2], logits)[: image[0]]
    cols = bilinear_matrix(output[1], image[1], logits) @ bilinear_matrix(padded[1], logits.shape[-1], logits)[: image[1]]
    return rows @ (logits @ cols.T)


def infer(model: FastInst, image: Tensor, out_h: int, out_w: int) -> tuple[Tensor, Tensor, Tensor]:
    """``image (1, 3, h, w)`` → ``scores (K,)``, ``labels (K,)``, ``masks (K, out_h, out_w) bool``."""
    h, w = image.shape[-2], image.shape[-1]
    d = model.size_divisibility
    x = (image - model.pixel_mean) / model.pixel_std
    x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
    out = model.forward_head(model.backbone(x))
    resize = partial(resize_as_matmul, padded=(x.shape[-2], x.shape[-1]), image=(h, w), output=(out_h, out_w))
    result = instance_inference(out["pred_logits"][0], out["pred_masks"][0], model.top_k, resize)
    return result["scores"], result["labels"], result["masks"]


class InferenceGraph(nn.Module):
    """The exported graph: ``(image (1, 3, h, w), output_size (2,) int64)`` → scores, labels, masks."""

    def __init__(self, model: FastInst) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, output_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # an int64 tensor's items are ints (unbacked SymInts under torch.export; int() would specialise them)
        out_h, out_w = cast(int, output_size[0].item()), cast(int, output_size[1].item())
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
