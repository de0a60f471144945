"""Pixel decoders: backbone features → ``[E5, E4, E3]`` (strides 32, 16, 8), ``hidden_dim`` channels each."""

from fastinst.modeling.pixel_decoders import (  # noqa: F401  (register the alternatives)
    msdeform_attn,
    ppm_fpn,
    transformer_encoder,
)
from fastinst.registry import PIXEL_DECODERS

__all__ = ["PIXEL_DECODERS"]
