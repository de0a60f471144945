"""Parameters and FLOPs of a config, measured as the official ``tools/analyze_model.py`` does."""

from __future__ import annotations

import torch
from torch import nn

from fastinst.config import Config
from fastinst.engine.flops import FlopCounter


def count_parameters(model: nn.Module) -> int:
    """``nn.Parameter`` elements only (frozen-BN statistics and affine are buffers), as detectron2."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, images: list[torch.Tensor],
                output_sizes: list[tuple[int, int]] | None = None) -> FlopCounter:
    """FLOPs of one eval-mode ``model(images)`` call, post-processing included as the official code
    runs it: every query's mask resized to ``output_sizes`` (default the input sizes), then the top-k."""
    model.eval()
    scopes = {name: getattr(model, name) for name in ("backbone", "pixel_decoder", "decoder")
              if hasattr(model, name)}
    counter = FlopCounter()
    with torch.no_grad(), counter.track(scopes), counter:
        model(images, output_sizes=output_sizes, resize_all_masks=True)
    return counter


def analyze(cfg: Config, size: tuple[int, int] = (640, 853), model: nn.Module | None = None) -> dict:
    """Params and GFLOPs of ``cfg`` on one ``size`` image (random weights: counts do not depend on them)."""
    from fastinst import build_model

    model = model if model is not None else build_model(cfg)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, size[0], size[1], generator=generator) * 255
    counter = count_flops(model, [image])
    return {
        "params": count_parameters(model),
        "gflops": counter.total / 1e9,
        "size": list(size),
        "gflops_by_module": {k: v / 1e9 for k, v in sorted(counter.by_scope.items())},
        "gflops_by_op": {k: v / 1e9 for k, v in sorted(counter.by_op.items())},
        "config_hash": cfg.hash(),
    }
