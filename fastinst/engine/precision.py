"""Precision names shared by training, backends and timing: the dtype names and the CPU bf16 probe."""

from __future__ import annotations

import torch

from fastinst.grid import SPEED_DTYPES

DTYPES = {name: getattr(torch, name) for name in SPEED_DTYPES}  # the one list of names: fastinst.grid


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN's bf16 kernels run natively (``torch.cpu`` private probes)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)
