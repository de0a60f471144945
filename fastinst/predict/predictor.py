"""``Predictor``: load a model once (config + weights, or an exported ONNX file), then predict on
images given as arrays, tensors or paths, a batch at a time.

Each image is test-resized (``EvalTransform``: shorter edge ``input.min_size_test``, longer at
most ``input.max_size_test``) and the masks come back at the image's own size, as in evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastinst.checkpoint import CheckpointError
from fastinst.config import Config, load_config
from fastinst.data.coco_classes import COCO_CLASSES, coco_categories
from fastinst.data.transforms import EvalTransform, resize_masks
from fastinst.deploy.backends import build_backend
from fastinst.deploy.backends.onnx_runtimes import RUNTIMES
from fastinst.deploy.onnx_meta import read_onnx_metadata
from fastinst.predict.media import read_image

ImageInput = np.ndarray | torch.Tensor | str | Path


@dataclass
class Prediction:
    """The instances found in one image of ``height × width`` pixels, best first."""

    scores: torch.Tensor  # (K,) float
    labels: torch.Tensor  # (K,) int64 class index
    masks: torch.Tensor  # (K, H, W) bool
    names: list[str]  # K class names
    category_ids: list[int]  # K dataset category ids

    @property
    def height(self) -> int:
        return int(self.masks.shape[-2])

    @property
    def width(self) -> int:
        return int(self.masks.shape[-1])


def default_categories(num_classes: int) -> list[dict[str, Any]]:
    """Categories of a model whose weights carry none: COCO's 80 (original ids and names) for an 80-class
    model, as the official checkpoints are; otherwise id = class index, name ``class N``."""
    if num_classes == len(COCO_CLASSES):
        return coco_categories()
    return [{"id": k, "name": f"class {k}"} for k in range(num_classes)]


class Predictor:
    """Instance segmentation with one loaded model.

    ``model``: a config (YAML path, model-zoo name or ``Config``) used with ``weights`` (a checkpoint;
    ``None`` keeps the random initialisation; an ``.onnx`` file selects ONNX Runtime and must be an export
    of this config), or an exported ``.onnx`` file alone (its config and categories come from its
    metadata). Weights or an export without categories get ``default_categories`` (COCO's for 80 classes).
    ``backend`` defaults to ``onnxruntime`` for ONNX files and ``eager`` otherwise.
    """

    def __init__(self, model: str | Path | Config, weights: str | Path | None = None, *, backend: str | None = None,
                 device: str | None = None, dtype: str = "float32", batch_size: int = 1,
                 channels_last: bool = False, overrides: Sequence[str] = ()) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        onnx_path = None
        if isinstance(model, (str, Path)) and Path(model).suffix.lower() == ".onnx":
            if weights is not None or overrides:
                raise ValueError(f"{model}: an ONNX file carries its own config and weights; "
                                 "give no weights or overrides with it")
            onnx_path, cfg = Path(model), read_onnx_metadata(model).config
        else:
            cfg = model if isinstance(model, Config) else load_config(model, list(overrides))
            if weights is not None and Path(weights).suffix.lower() == ".onnx":
                onnx_path, weights = Path(weights), None
        backend = backend or ("onnxruntime" if onnx_path is not None else "eager")
        if onnx_path is not None and backend not in RUNTIMES:
            raise ValueError(f"{onnx_path}: an ONNX file runs with backend {' or '.join(RUNTIMES)}, not {backend!r}")
        self.cfg = cfg
        self.batch_size = batch_size
        self.backend = build_backend(backend, cfg, weights, device=device, dtype=dtype,
                                     channels_last=channels_last, onnx_path=onnx_path)
        categories = self.backend.categories
        if categories is not None and len(categories) != cfg.model.num_classes:
            raise CheckpointError(f"{onnx_path or weights}: stores {len(categories)} categories but the config has "
                                  f"model.num_classes={cfg.model.num_classes}")
        self.categories: list[dict[str, Any]] = categories or default_categories(cfg.model.num_classes)
        self.class_names = [str(c["name"]) for c in self.categories]
        self._transform = EvalTransform(cfg)

    def __call__(self, inputs: ImageInput | Sequence[ImageInput]) -> Prediction | list[Prediction]:
        """One ``Prediction`` per image: an ``(H, W, 3)`` uint8 RGB array, a ``(3, H, W)`` RGB tensor
        (0..255), or an image path; a list gives a list (run ``batch_size`` at a time)."""
        if isinstance(inputs, (np.ndarray, torch.Tensor, str, Path)):
            return self.predict_batch([inputs])[0]
        items = list(inputs)
        return [p for i in range(0, len(items), self.batch_size)
                for p in self.predict_batch(items[i:i + self.batch_size])]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """All of ``images`` in one model call (the model pads them to a common size itself)."""
        tensors = [to_tensor(im) for im in images]
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        resized = [self._transform(t, t.new_zeros((0, *t.shape[-2:]), dtype=torch.bool))[0] for t in tensors]
        outputs = self.backend(resized, sizes)
        return [self._prediction(out, size) for out, size in zip(outputs, sizes, strict=True)]

    def _prediction(self, out: dict[str, torch.Tensor], size: tuple[int, int]) -> Prediction:
        masks = out["masks"]
        if tuple(masks.shape[-2:]) != size:
            masks = resize_masks(masks, size)
        labels = out["labels"].long()
        return Prediction(out["scores"].float(), labels, masks.bool(), [self.class_names[k] for k in labels.tolist()],
                          [int(self.categories[k]["id"]) for k in labels.tolist()])


def to_tensor(image: ImageInput) -> torch.Tensor:
    """``(3, H, W)`` float32 RGB 0..255 of an image array ``(H, W, 3)``/``(H, W)`` uint8, a tensor
    ``(3, H, W)``, or a path."""
    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"an image array must be (H, W, 3) or (H, W) uint8 RGB, got {image.shape} {image.dtype}")
        image = torch.tensor(image).permute(2, 0, 1) if image.ndim == 3 else torch.tensor(image)[None].expand(3, -1, -1)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"an image tensor must be (3, H, W) RGB, got {tuple(getattr(image, 'shape', ()))}")
    return image.detach().to("cpu", torch.float32)
