"""ONNX export of the whole inference path, with dynamic height and width.

The graph (:class:`fastinst.deploy.graph.InferenceGraph`) takes ``image (1, 3, h, w)`` float32 RGB
0..255 (test-resized, any h and w from :func:`min_side` up) and ``output_size (2,)`` int64 ``(H, W)``,
and returns ``scores (K,)`` float32, ``labels (K,)`` int64, ``masks (K, H, W)`` bool: normalisation,
padding, backbone, pixel decoder, decoder, mask resize and top-k instance inference are all inside.
Outside: image decoding and the test-time resize (short edge ``input.min_size_test``, long edge at
most ``input.max_size_test``), and batching (one image per call). Exported with the dynamo exporter
at :data:`OPSET`, checked with ``onnx.checker``; the file carries ``metadata_props``
``fastinst_config`` (resolved config YAML), ``fastinst_categories`` (JSON, when known) and
``fastinst_opset``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from fastinst.config import Config
from fastinst.deploy.graph import InferenceGraph
from fastinst.deploy.pooling import replace_adaptive_pools
from fastinst.engine.model import load_model
from fastinst.modeling.meta_arch import FastInst

OPSET = 18
OPSET_KEY = "fastinst_opset"
INPUT_NAMES = ["image", "output_size"]
OUTPUT_NAMES = ["scores", "labels", "masks"]
SOURCE_STRIDE = {"E5": 32, "E4": 16, "E3": 8}


def min_side(cfg: Config) -> int:
    """Smallest height/width the graph accepts: IA-guided selection needs ``Na`` cells in its feature map."""
    m = cfg.model
    d = m.size_divisibility
    if m.query_init != "ia_guided":
        return d
    cells = math.ceil(math.sqrt(m.num_ia_queries))
    return max(d, math.ceil(cells * SOURCE_STRIDE[m.query_source] / d) * d)


def _remainder_scalar(self: Any, other: Any) -> Any:
    """``aten.remainder.Scalar`` with a symbolic divisor (integer tensors: ONNX ``Mod``, Python's sign rule)."""
    from onnxscript import opset18 as op

    return op.Mod(self, op.CastLike(other, self))


def export_onnx(cfg: Config, weights: str | Path | None, out: str | Path, opset: int = OPSET) -> Path:
    """Export ``cfg`` with ``weights`` to the single ONNX file ``out`` (weights inside); returns its path."""
    model, categories = load_model(cfg, weights, torch.device("cpu"))
    return export_model(model, cfg, categories, out, opset)


def export_model(model: FastInst, cfg: Config, categories: list[dict[str, Any]] | None, out: str | Path,
                 opset: int = OPSET) -> Path:
    """Export the eval-mode CPU float32 ``model`` of ``cfg`` (left unchanged) to ``out``, with metadata."""
    import onnx

    from fastinst.deploy.onnx_meta import CATEGORIES_KEY, CONFIG_KEY

    out = Path(out)
    exported = copy.deepcopy(model)
    replace_adaptive_pools(exported)
    graph = InferenceGraph(exported).eval()
    lo = min_side(cfg)
    size = (max(lo, cfg.input.min_size_test // 2), max(lo, cfg.input.max_size_test // 2))
    example = (torch.rand(1, 3, *size) * 255, torch.tensor(size, dtype=torch.int64))
    dims = {2: torch.export.Dim("height", min=lo, max=8192), 3: torch.export.Dim("width", min=lo, max=8192)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(graph, example, str(out), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          dynamic_shapes={"image": dims, "output_size": None}, opset_version=opset,
                          external_data=False, verbose=False,
                          custom_translation_table={torch.ops.aten.remainder.Scalar: _remainder_scalar})
    proto = onnx.load(str(out))
    meta = {CONFIG_KEY: cfg.to_yaml(), OPSET_KEY: str(opset)}
    if categories is not None:
        meta[CATEGORIES_KEY] = json.dumps(categories)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return out


def verify_export(model: torch.nn.Module, cfg: Config, path: str | Path, seed: int = 0) -> dict[str, Any]:
    """Run ``path`` through ONNX Runtime and the eager ``model`` it was exported from on one seeded random
    image of test size; the :func:`fastinst.deploy.compare.parity` deviation plus the ``size`` used."""
    from fastinst.deploy.backends import build_backend
    from fastinst.deploy.backends.torch_backends import TorchBackend
    from fastinst.deploy.compare import parity

    lo = min_side(cfg)
    size = (max(lo, cfg.input.min_size_test), max(lo, min(cfg.input.max_size_test, cfg.input.min_size_test * 4 // 3)))
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(seed)) * 255
    eager = TorchBackend("eager", model, torch.device("cpu"), "float32", False, None)
    runtime = build_backend("onnxruntime", cfg, None, device="cpu", onnx_path=path)
    return {**parity(eager([image], [size]), runtime([image], [size])), "size": size}
