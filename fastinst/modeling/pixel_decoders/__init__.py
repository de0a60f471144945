"""Pixel decoders: backbone features → ``[E5, E4, E3]`` (strides 32, 16, 8), ``hidden_dim`` channels each."""

from fastinst.modeling.pixel_decoders import ppm_fpn  # noqa: F401  (registers ppm_fpn, fpn)
from fastinst.registry import PIXEL_DECODERS

__all__ = ["PIXEL_DECODERS"]
