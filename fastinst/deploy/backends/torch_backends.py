"""The PyTorch backends: ``eager`` (the model as it is), ``compile`` (``torch.compile`` of the
single-image graph) and ``cudagraph`` (CUDA only: the graph captured once per input/output size).
``dtype`` float16/bfloat16 runs them under autocast; ``channels_last`` stores conv weights and
activations NHWC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastinst.config import Config
from fastinst.deploy.backends.base import Backend, Builder, Result
from fastinst.engine.model import load_model
from fastinst.engine.precision import DTYPES


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


TORCH_BACKENDS: dict[str, Builder] = {"eager": _eager, "compile": _compile, "cudagraph": _cudagraph}
