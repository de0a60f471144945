"""FastInst modeling: backbone, pixel decoders, query init, decoder, heads, matcher, criterion."""

from __future__ import annotations

from fastinst.config import Config
from fastinst.modeling import (  # noqa: F401  (register the alternatives)
    decoder,
    mask2former_decoder,
    pixel_decoders,
    query_init,
)
from fastinst.modeling.meta_arch import FastInst


def build_model(cfg: Config) -> FastInst:
    """Build the FastInst meta-architecture described by ``cfg``."""
    return FastInst(cfg)


__all__ = ["FastInst", "build_model"]
