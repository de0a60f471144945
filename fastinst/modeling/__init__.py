"""FastInst modeling: backbone, pixel decoders, query init, decoder, heads, matcher, criterion."""

from __future__ import annotations

from fastinst.config import Config
from fastinst.modeling import pixel_decoders, query_init  # noqa: F401  (register alternatives)
from fastinst.modeling.meta_arch import FastInst


def build_model(cfg: Config) -> FastInst:
    """Build the FastInst meta-architecture described by ``cfg``."""
    return FastInst(cfg)


__all__ = ["FastInst", "build_model"]
