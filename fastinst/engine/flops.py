"""FLOP counting in the detectron2/fvcore convention, at the ATen level.

One fused multiply-add is one FLOP (docs/official_architecture.md#params-flops-fps). Counted like
fvcore's ``FlopCountAnalysis``: conv, linear/addmm, mm/matmul, bmm, einsum (via bmm), ``baddbmm``
counted like ``bmm`` (fvcore skips it; the official PyTorch-1.9 counts used bmm there),
scaled-dot-product attention (its two matmuls), group/layer norm (5 per element with affine, 4
without), inference batch norm (2 per element; detectron2's FrozenBN calls it), adaptive average
pooling (1 per input element), bilinear upsampling and grid sampling (4 per output element), nearest
upsampling (1). Element-wise ops (add, mul, softmax, sigmoid, max pool, ...) are not counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _numel(shape: Any) -> int:
    return math.prod(int(s) for s in shape)


def _conv(args: tuple, out: Any) -> int:
    weight = args[1]
    return int(out.shape[0]) * _numel(weight.shape) * _numel(out.shape[2:])


def _mm(args: tuple, out: Any) -> int:
    a, b = args[-2], args[-1]
    return _numel(a.shape) * int(b.shape[-1])


def _addmm(args: tuple, out: Any) -> int:
    return _mm(args[1:3], out)


def _bmm(args: tuple, out: Any) -> int:
    a, b = args[0], args[1]
    return _numel(a.shape) * int(b.shape[-1])


def _baddbmm(args: tuple, out: Any) -> int:
    return _bmm(args[1:3], out)


def _sdpa(args: tuple, out: Any) -> int:
    q, k, v = args[0], args[1], args[2]
    lq_lk = _numel(q.shape[:-1]) * int(k.shape[-2])
    return lq_lk * int(q.shape[-1]) + lq_lk * int(v.shape[-1])


def _group_norm(args: tuple, out: Any) -> int:
    return _numel(args[0].shape) * (5 if args[1] is not None else 4)


def _layer_norm(args: tuple, out: Any) -> int:
    return _numel(args[0].shape) * (5 if args[2] is not None else 4)


def _batch_norm(args: tuple, out: Any) -> int:
    """Inference-mode batch norm, as fvcore: 2 per element with affine, 1 without (training: 5/4)."""
    training = args[5] if len(args) > 5 and isinstance(args[5], bool) else False
    if training:
        return _numel(args[0].shape) * (5 if args[1] is not None else 4)
    return _numel(args[0].shape) * (2 if args[1] is not None else 1)


def _per_input(args: tuple, out: Any) -> int:
    return _numel(args[0].shape)


def _output_times(factor: int) -> Callable[[tuple, Any], int]:
    def count(args: tuple, out: Any) -> int:
        return factor * _numel(out.shape)

    return count


HANDLERS: dict[Any, Callable[[tuple, Any], int]] = {
    aten.convolution: _conv,
    aten.mm: _mm,
    aten.addmm: _addmm,
    aten.bmm: _bmm,
    aten.baddbmm: _baddbmm,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    aten._scaled_dot_product_flash_attention: _sdpa,
    aten._scaled_dot_product_efficient_attention: _sdpa,
    aten._scaled_dot_product_cudnn_attention: _sdpa,
    aten.native_group_norm: _group_norm,
    aten.native_layer_norm: _layer_norm,
    aten._native_batch_norm_legit_no_training: _batch_norm,
    aten.native_batch_norm: _batch_norm,
    aten._adaptive_avg_pool2d: _per_input,
    aten.mean: _per_input,  # adaptive_avg_pool2d to 1x1 lowers to mean
    aten.upsample_bilinear2d: _output_times(4),
    aten.upsample_nearest2d: _output_times(1),
    aten.grid_sampler_2d: _output_times(4),
}
_OP_NAMES = {packet: str(packet).split(".")[-1] for packet in HANDLERS}


def _register_torchvision_ops() -> None:
    """Deformable conv (R50-d-DCN) is counted like the conv it replaces (weight × output positions)."""
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "deform_conv2d"):
        packet = torch.ops.torchvision.deform_conv2d
        HANDLERS[packet] = _conv
        _OP_NAMES[packet] = "deform_conv2d"


class FlopCounter(TorchDispatchMode):
    """Counts FLOPs of everything run inside it, by operator and by tagged module scope."""

    def __init__(self) -> None:
        super().__init__()
        _register_torchvision_ops()
        self.by_op: dict[str, int] = defaultdict(int)
        self.by_scope: dict[str, int] = defaultdict(int)
        self.scope = "other"

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        handler = HANDLERS.get(func.overloadpacket)
        if handler is not None:
            first = out[0] if isinstance(out, (tuple, list)) else out
            flops = handler(args, first)
            self.by_op[_OP_NAMES[func.overloadpacket]] += flops
            self.by_scope[self.scope] += flops
        return out

    @contextmanager
    def track(self, modules: dict[str, nn.Module]) -> Iterator[FlopCounter]:
        """Attribute FLOPs inside each named module's forward to that name."""

        def enter(name: str) -> Callable:
            def hook(*_: Any) -> None:
                self.scope = name

            return hook

        def leave(*_: Any) -> None:
            self.scope = "other"

        handles = []
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
