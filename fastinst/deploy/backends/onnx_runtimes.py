"""The backends that run the exported ONNX graph: ``onnxruntime`` (CPU, or its CUDA provider) and
``openvino`` (CPU).

Both take the file ``onnx_path`` (which must be a fastinst export of the config's model), or export
the config with its weights to a temporary file first. One image per call; the graph does the
whole inference path including the resize to ``output_size`` (see ``fastinst.deploy.onnx_export``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastinst.config import Config
from fastinst.deploy.backends.base import Backend, Builder, Result

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class RuntimeBackend(Backend):
    """Runs ``(image (1, 3, h, w) float32, output_size (2,) int64)`` feeds through a runtime's ``runner``."""

    def __init__(self, name: str, runner: Runner, device: torch.device, dtype: str, path: Path,
                 categories: list[dict[str, Any]] | None, keep: Any = None) -> None:
        self.name, self.runner, self.device, self.dtype = name, runner, device, dtype
        self.path, self.categories, self._keep = path, categories, keep

    def __call__(self, images: list[Tensor], output_sizes: list[tuple[int, int]]) -> list[Result]:
        results = []
        for image, size in zip(images, output_sizes):
            feeds = {"image": image[None].float().cpu().contiguous().numpy(),
                     "output_size": np.asarray(size, dtype=np.int64)}
            scores, labels, masks = self.runner(feeds)
            results.append({"scores": torch.from_numpy(np.asarray(scores)),
                            "labels": torch.from_numpy(np.asarray(labels)).long(),
                            "masks": torch.from_numpy(np.asarray(masks)).bool()})
        return results


def resolve_onnx(cfg: Config, weights: str | Path | None, onnx_path: str | Path | None
                 ) -> tuple[Path, list[dict[str, Any]] | None, Any]:
    """The ONNX file to run (checked against ``cfg``), its categories, and a temporary directory to keep alive
    (when it was exported here from ``cfg`` and ``weights``)."""
    from fastinst.deploy.onnx_meta import check_onnx_matches, read_onnx_metadata

    if onnx_path is not None:
        meta = read_onnx_metadata(onnx_path)
        check_onnx_matches(onnx_path, meta.config, cfg)
        return Path(onnx_path), meta.categories, None
    from fastinst.deploy.onnx_export import export_onnx

    tmp = tempfile.TemporaryDirectory(prefix="fastinst_onnx_")
    path = export_onnx(cfg, weights, Path(tmp.name) / "model.onnx")
    return path, read_onnx_metadata(path).categories, tmp


def _onnxruntime(path: Path, device: torch.device, dtype: str) -> tuple[Runner, torch.device]:
    import onnxruntime as ort

    if dtype != "float32":
        raise ValueError(f"backend 'onnxruntime' runs the float32 graph, got dtype {dtype!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("backend 'onnxruntime' on CUDA needs onnxruntime-gpu (CUDAExecutionProvider missing)")
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    return (lambda feeds: session.run(None, feeds)), device


def _openvino(path: Path, device: torch.device, dtype: str) -> tuple[Runner, torch.device]:
    import openvino as ov

    if device.type != "cpu":
        raise ValueError(f"backend 'openvino' runs on the CPU here, got device {device}")
    precision = {"float32": "f32", "bfloat16": "bf16"}.get(dtype)
    if precision is None:
        raise ValueError(f"backend 'openvino' runs float32 or bfloat16, got dtype {dtype!r}")
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = request.infer(feeds)
        return [out[o] for o in compiled.outputs]

    return run, device


RUNTIMES: dict[str, Callable[[Path, torch.device, str], tuple[Runner, torch.device]]] = {
    "onnxruntime": _onnxruntime, "openvino": _openvino}


def _runtime_builder(name: str) -> Builder:
    """The builder of runtime ``name``: it runs ``onnx_path`` or a fresh export of the config."""

    def build(cfg: Config, weights: str | Path | None, device: torch.device, dtype: str, channels_last: bool,
              onnx_path: str | Path | None) -> Backend:
        path, categories, keep = resolve_onnx(cfg, weights, onnx_path)
        runner, dev = RUNTIMES[name](path, device, dtype)
        return RuntimeBackend(name, runner, dev, dtype, path, categories, keep)

    return build


RUNTIME_BACKENDS: dict[str, Builder] = {name: _runtime_builder(name) for name in RUNTIMES}
