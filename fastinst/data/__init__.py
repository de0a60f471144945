"""COCO-format data: datasets, augmentation, loaders and synthetic data.

``DataSpec`` and ``DatasetError`` import without torch; the rest loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastinst.data.spec import DatasetError, DataSpec

_LAZY = {
    "CocoInstanceDataset": "fastinst.data.coco",
    "TrainTransform": "fastinst.data.transforms",
    "EvalTransform": "fastinst.data.transforms",
    "build_train_loader": "fastinst.data.transforms",
    "build_test_loader": "fastinst.data.transforms",
    "collate": "fastinst.data.transforms",
    "make_synthetic": "fastinst.data.synthetic",
}

__all__ = ["DataSpec", "DatasetError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastinst.data' has no attribute {name!r}")
