"""fastinst: a modular, faithful PyTorch FastInst (CVPR 2023)."""

from fastinst.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "build_model", "load_config"]


def build_model(cfg: Config):  # noqa: ANN201 - avoids importing torch at package import
    """Build FastInst (or a registered variant) from a resolved config."""
    from fastinst.modeling import build_model as _build

    return _build(cfg)
