"""Tiny name → builder registries for every swappable part of the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """Maps a config value (e.g. ``"ppm_fpn"``) to the callable that builds it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
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
        return sorted(self._items)


BACKBONES = Registry("backbone")
PIXEL_DECODERS = Registry("pixel decoder")
DECODERS = Registry("decoder")
QUERY_INITS = Registry("query init")
