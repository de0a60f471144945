"""Precision names shared by training, backends and timing: the dtype names and the CPU bf16 probe."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN's bf16 kernels run natively (``torch.cpu`` private probes)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)
