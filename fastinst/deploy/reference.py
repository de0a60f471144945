""""Real weights" for parity checks: the official FastInst-D3 R50 head weights from the shared reference
data (``fastinst_r50_d3_head_reference.pt``) on a fixed-seed ResNet-50 (the file has no backbone)."""

from __future__ import annotations

from pathlib import Path

import torch

from fastinst.config import Config, load_config

REFERENCE_NAME = "fastinst_r50_d3_head_reference.pt"


def reference_checkpoint(reference: str | Path, out: str | Path, seed: int = 0,
                         cfg: Config | None = None) -> Path:
    """Write a full state dict for ``cfg`` (default: FastInst-D3 R50) to ``out``: backbone as initialised
    after ``torch.manual_seed(seed)``, everything else from the official ``reference`` file."""
    from fastinst import build_model
    from fastinst.convert import convert_official_state_dict

    payload = torch.load(reference, map_location="cpu", weights_only=True)
    head = {k: v.float() for k, v in convert_official_state_dict(payload["state_dict"]).items()}
    torch.manual_seed(seed)
    state = build_model(cfg or load_config(None, [])).state_dict()
    missing = [k for k in state if k not in head and not k.startswith("backbone.")]
    if missing:
        raise ValueError(f"{reference}: lacks head weights, e.g. {missing[:3]}")
    out = Path(out)
    torch.save({k: head.get(k, v) for k, v in state.items()}, out)
    return out
