"""Name → builder registries for every swappable part of the model.

Each registry declares its names here, in one table: the config accepts exactly these values for
its key (``fastinst.config`` reads them without importing the modeling modules), and the modeling
modules may only register builders under a declared name. ``tests/test_registry.py`` checks that
every declared name has a builder once ``fastinst.modeling`` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The inference backends' names (``fastinst.deploy.backends`` builds them): declared here so that a grid's
# ``speed.backend`` and the command lines can check a name without importing torch.
BACKEND_NAMES = ("eager", "compile", "cudagraph", "onnxruntime", "openvino")


class Registry:
    """Maps a config value (e.g. ``"ppm_fpn"``) of the key ``config_key`` to the callable that builds it."""

    def __init__(self, name: str, config_key: str, choices: tuple[str, ...]) -> None:
        self.name = name
        self.config_key = config_key
        self.choices = choices
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if key not in self.choices:
            raise KeyError(f"{self.name}: {key!r} is not declared; add it to the choices of "
                           f"{self.config_key} in fastinst/registry.py")

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if key in self._items:
                raise KeyError(f"{self.name}: {key!r} is already registered")
            self._items[key] = fn
            return fn

        return wrap

    def get(self, key: str) -> Callable[..., Any]:
        if key not in self._items:
            raise KeyError(f"{self.name}: unknown {key!r}; registered: {sorted(self._items)}")
        return self._items[key]

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def keys(self) -> list[str]:
        """Names with a registered builder (all of ``choices`` once ``fastinst.modeling`` is imported)."""
        return sorted(self._items)


BACKBONES = Registry("backbone", "model.backbone.name",
                     ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50d_dcn"))
PIXEL_DECODERS = Registry("pixel decoder", "model.pixel_decoder.name",
                          ("ppm_fpn", "fpn", "transformer_encoder", "msdeform_attn"))
DECODERS = Registry("decoder", "model.decoder.name", ("fastinst", "mask2former"))
QUERY_INITS = Registry("query init", "model.query_init", ("ia_guided", "learnable", "zero", "resize"))
REGISTRIES = (BACKBONES, PIXEL_DECODERS, DECODERS, QUERY_INITS)
