"""fastinst: a modular, faithful PyTorch FastInst (CVPR 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastinst.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from fastinst.modeling import FastInst
    from fastinst.predict import Predictor

__all__ = ["Config", "ConfigError", "Predictor", "build_model", "load_config"]


def __getattr__(name: str) -> type[Predictor]:  # lazy, so that importing fastinst does not import torch
    if name == "Predictor":
        from fastinst.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'fastinst' has no attribute {name!r}")


def build_model(cfg: Config) -> FastInst:  # imports torch on first call, not at package import
    """Build FastInst (or a registered variant) from a resolved config."""
    from fastinst.modeling import build_model as _build

    return _build(cfg)
