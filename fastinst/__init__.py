"""fastinst: a modular, faithful PyTorch FastInst (CVPR 2023)."""

from fastinst.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "Predictor", "build_model", "load_config"]


def __getattr__(name: str):  # noqa: ANN202 - lazy, so that importing fastinst does not import torch
    if name == "Predictor":
        from fastinst.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'fastinst' has no attribute {name!r}")


def build_model(cfg: Config):  # noqa: ANN201 - avoids importing torch at package import
    """Build FastInst (or a registered variant) from a resolved config."""
    from fastinst.modeling import build_model as _build

    return _build(cfg)
