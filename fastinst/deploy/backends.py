"""Inference backends: one call shape for every way of running a FastInst model.

``build_backend(name, cfg, weights, ...)`` returns a :class:`Backend`, called as
``backend(images, output_sizes)`` with ``images`` a list of ``(3, h, w)`` float32 RGB 0..255
test-resized tensors and ``output_sizes`` their ``(H, W)``; it returns per image
``{"scores": (K,), "labels": (K,) int64, "masks": (K, H, W) bool}`` on the CPU.

Backends: ``eager`` (the model as it is), ``compile`` (``torch.compile`` of the single-image
graph), ``cudagraph`` (CUDA only: the graph captured once per input/output size),
``onnxruntime`` (an exported ONNX file, CPU or CUDA provider), ``openvino`` (the same ONNX file
through OpenVINO, CPU). ``dtype`` float16/bfloat16 runs the torch backends under autocast;
``channels_last`` stores conv weights and activations NHWC.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastinst.config import Config
from fastinst.engine.precision import DTYPES

Result = dict[str, Tensor]


class Backend:
    """A callable model: ``(images, output_sizes) → results`` (see the module docstring).

    ``name``, ``device``, ``dtype``, ``channels_last`` say how it runs; ``categories`` are the
    ``[{"id", "name"}]`` of the weights (checkpoint or ONNX metadata) in class-index order, or None.
    """

    name: str
    device: torch.device
    dtype: str
    channels_last: bool = False
    categories: list[dict[str, Any]] | None = None
    cpu_outputs: bool = True

    def __call__(self, images: list[Tensor], output_sizes: list[tuple[int, int]]) -> list[Result]:
        raise NotImplementedError

    def describe(self) -> str:
        """``name`` plus its options, e.g. ``eager bfloat16 channels-last``."""
        return " ".join([self.name, self.dtype] + (["channels-last"] if self.channels_last else []))


def pick_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    return torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(cfg: Config, weights: str | Path | None, device: torch.device,
               channels_last: bool = False) -> tuple[torch.nn.Module, list[dict[str, Any]] | None]:
    """The eval-mode model of ``cfg`` with ``weights`` (CheckpointError propagates) and their categories."""
    from fastinst import build_model
    from fastinst.checkpoint import load_weights

    model = build_model(cfg)
    categories = load_weights(model, weights).categories if weights is not None else None
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, categories


def _outputs(result: Result, cpu: bool) -> Result:
    return {k: result[k].cpu() if cpu else result[k] for k in ("scores", "labels", "masks")}


class TorchBackend(Backend):
    """A PyTorch callable ``run(image (1, 3, h, w), output_size (H, W)) → (scores, labels, masks)`` per
    image (``eager``: the model's own batched forward instead), under autocast for half precisions."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, dtype: str, channels_last: bool,
                 categories: list[dict[str, Any]] | None,
                 run: Callable[[Tensor, tuple[int, int]], tuple[Tensor, Tensor, Tensor]] | None = None) -> None:
        self.name, self.model, self.device, self.dtype = name, model, device, dtype
        self.channels_last, self.categories, self.run = channels_last, categories, run

    @torch.inference_mode()
    def __call__(self, images: list[Tensor], output_sizes: list[tuple[int, int]]) -> list[Result]:
        with torch.autocast(self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "float32"):
            if self.run is None:
                results = self.model([im.to(self.device) for im in images], output_sizes=output_sizes)
                return [_outputs(r, self.cpu_outputs) for r in results]
            out = []
            for image, size in zip(images, output_sizes):
                x = image.to(self.device)[None]
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                scores, labels, masks = self.run(x, (int(size[0]), int(size[1])))
                out.append(_outputs({"scores": scores, "labels": labels, "masks": masks}, self.cpu_outputs))
            return out


def _eager(cfg: Config, weights: str | Path | None, device: torch.device, dtype: str, channels_last: bool,
           onnx_path: str | Path | None) -> Backend:
    model, categories = load_model(cfg, weights, device, channels_last)
    return TorchBackend("eager", model, device, dtype, channels_last, categories)


def _compile(cfg: Config, weights: str | Path | None, device: torch.device, dtype: str, channels_last: bool,
             onnx_path: str | Path | None) -> Backend:
    from fastinst.deploy.graph import SizedGraph

    model, categories = load_model(cfg, weights, device, channels_last)
    compiled = torch.compile(SizedGraph(model), dynamic=False)
    return TorchBackend("compile", model, device, dtype, channels_last, categories, run=compiled)


def _cudagraph(cfg: Config, weights: str | Path | None, device: torch.device, dtype: str, channels_last: bool,
               onnx_path: str | Path | None) -> Backend:
    from fastinst.deploy.cudagraph import GraphCache
    from fastinst.deploy.graph import SizedGraph

    if device.type != "cuda":
        raise ValueError(f"backend 'cudagraph' needs a CUDA device, got {device}")
    model, categories = load_model(cfg, weights, device, channels_last)
    cache = GraphCache(SizedGraph(model), device, DTYPES[dtype])
    return TorchBackend("cudagraph", model, device, dtype, channels_last, categories, run=cache)


def _onnx(runtime: str) -> Callable[..., Backend]:
    def build(cfg: Config, weights: str | Path | None, device: torch.device, dtype: str, channels_last: bool,
              onnx_path: str | Path | None) -> Backend:
        from fastinst.deploy.runtimes import build_runtime_backend

        return build_runtime_backend(runtime, cfg, weights, device, dtype, onnx_path)

    return build


BACKENDS: dict[str, Callable[..., Backend]] = {
    "eager": _eager,
    "compile": _compile,
    "cudagraph": _cudagraph,
    "onnxruntime": _onnx("onnxruntime"),
    "openvino": _onnx("openvino"),
}


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
