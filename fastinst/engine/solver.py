"""Optimizer and LR schedule of the official recipe (docs/official_architecture.md#training-recipe).

AdamW with backbone lr ×``solver.backbone_multiplier`` and no weight decay on norm / embedding
weights; warmup then step decay ×``solver.gamma`` at fractions ``solver.steps`` of ``solver.max_iter``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastinst.config import Config

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)


def param_groups(cfg: Config, model: nn.Module) -> list[dict[str, Any]]:
    """One AdamW group per trainable parameter, as detectron2's ``get_default_optimizer_params``:
    lr ×``backbone_multiplier`` under ``backbone.``, weight decay ``weight_decay_norm`` for norm
    layers and ``weight_decay_embed`` for ``nn.Embedding``, ``weight_decay`` otherwise."""
    s = cfg.solver
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            wd = s.weight_decay
            if isinstance(module, NORM_TYPES):
                wd = s.weight_decay_norm
            elif isinstance(module, nn.Embedding):
                wd = s.weight_decay_embed
            lr = s.base_lr * (s.backbone_multiplier if full.startswith("backbone.") else 1.0)
            groups.append({"params": [param], "lr": lr, "weight_decay": wd, "name": full})
    return groups


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.AdamW:
    """AdamW (0.9, 0.999, eps 1e-8) over ``param_groups``; the fused kernel where the parameters'
    device has one (CPU and CUDA: 4x faster than the per-tensor loop over ~800 groups on CPU)."""
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(param_groups(cfg, model), lr=cfg.solver.base_lr, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=cfg.solver.weight_decay, fused=fused)


def lr_factor(cfg: Config, iteration: int) -> float:
    """Multiplier of every group's lr at ``iteration`` (0-based): linear warmup from
    ``warmup_factor`` over ``warmup_iters``, times ``gamma`` per milestone ``int(f · max_iter)`` passed."""
    s = cfg.solver
    milestones = sorted(int(f * s.max_iter) for f in s.steps)
    factor: float = s.gamma ** sum(iteration >= m for m in milestones)
    if iteration < s.warmup_iters:
        alpha = iteration / s.warmup_iters
        factor *= s.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration: every group's lr is its initial lr × ``lr_factor(cfg, iteration)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))
