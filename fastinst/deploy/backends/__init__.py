"""Inference backends: one call shape for every way of running a FastInst model.

``build_backend(name, cfg, weights, ...)`` returns a :class:`Backend`, called as
``backend(images, output_sizes)`` with ``images`` a list of ``(3, h, w)`` float32 RGB 0..255
test-resized tensors and ``output_sizes`` their ``(H, W)``; it returns per image
``{"scores": (K,), "labels": (K,) int64, "masks": (K, H, W) bool}`` on the CPU.

Families, one module each over the shared ``base``: ``torch_backends`` (``eager``, ``compile``,
``cudagraph``; ``dtype`` float16/bfloat16 under autocast, ``channels_last`` NHWC) and
``onnx_runtimes`` (``onnxruntime``: an exported ONNX file, CPU or CUDA provider; ``openvino``: the
same ONNX file through OpenVINO, CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastinst.config import Config
from fastinst.deploy.backends.base import Backend, Builder
from fastinst.deploy.backends.onnx_runtimes import RUNTIME_BACKENDS
from fastinst.deploy.backends.torch_backends import TORCH_BACKENDS
from fastinst.engine.device import pick_device
from fastinst.engine.precision import DTYPES

__all__ = ["BACKENDS", "Backend", "build_backend"]

BACKENDS: dict[str, Builder] = {**TORCH_BACKENDS, **RUNTIME_BACKENDS}


def build_backend(name: str, cfg: Config, weights: str | Path | None, *, device: str | torch.device | None = None,
                  dtype: str = "float32", channels_last: bool = False,
                  onnx_path: str | Path | None = None, cpu_outputs: bool = True) -> Backend:
    """The backend ``name`` (one of :data:`BACKENDS`) for ``cfg`` with ``weights``.

    ``cpu_outputs=False`` leaves the torch backends' results on their device (the speed protocol
    times the model up to its outputs, not the copy back); the ONNX backends always return CPU tensors.

    ONNX backends run ``onnx_path`` (checked to be a fastinst export of ``cfg``'s model), or, without
    it, export ``cfg`` with ``weights`` to a temporary file first. Raises ValueError for an unknown
    name or dtype, or a combination the device cannot run; CheckpointError for unusable weights.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dev = pick_device(device)
    if dtype == "float16" and dev.type == "cpu" and name in ("eager", "compile"):
        raise ValueError("float16 is not offered on the CPU (no fast float16 kernels there); use bfloat16")
    backend = BACKENDS[name](cfg, weights, dev, dtype, channels_last, onnx_path)
    backend.cpu_outputs = cpu_outputs
    return backend
