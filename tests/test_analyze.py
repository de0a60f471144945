"""Params and FLOPs against the official implementation measured the same way.

The measurement conventions: docs/official_architecture.md#params-flops-fps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastinst
from fastinst.engine.analyze import analyze, count_flops
from fastinst.engine.flops import FlopCounter

OFFICIAL = {3: (34_176_597, 82.76), 1: (29_658_035, 65.36), 0: (27_398_754, 56.65)}


@pytest.mark.parametrize("layers", [3, 1, 0])
def test_params_and_gflops_match_official(layers: int) -> None:
    result = analyze(fastinst.load_config(None, [f"model.decoder.num_layers={layers}"]), (640, 853))
    params, gflops = OFFICIAL[layers]
    assert result["params"] == params
    assert result["gflops"] == pytest.approx(gflops, rel=0.01)


def test_counter_conventions() -> None:
    """One multiply-add = one FLOP for conv/linear/bmm; norms and bilinear resize as fvcore counts them."""
    counter = FlopCounter()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad(), counter:
        nn.Conv2d(8, 16, 3, padding=1, bias=True)(x)  # 2*16*8*9*100 = 230,400
        nn.Linear(8, 4)(torch.randn(5, 8))  # 160
        torch.bmm(torch.randn(3, 4, 5), torch.randn(3, 5, 6))  # 360
        nn.GroupNorm(4, 8)(x)  # 5 * 1600 = 8000
        nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)  # 4 * 6400
        torch.relu(x) + x  # not counted
    assert counter.by_op["convolution"] == 230_400
    assert counter.by_op["addmm"] == 160
    assert counter.by_op["bmm"] == 360
    assert counter.by_op["native_group_norm"] == 8000
    assert counter.by_op["upsample_bilinear2d"] == 25_600
    assert counter.total == 230_400 + 160 + 360 + 8000 + 25_600


def test_flops_do_not_depend_on_weights() -> None:
    cfg = fastinst.load_config(None, ["model.backbone.name=resnet18", "model.num_ia_queries=16"])
    image = [torch.rand(3, 128, 160) * 255]
    torch.manual_seed(0)
    a = count_flops(fastinst.build_model(cfg), image).total
    torch.manual_seed(1)
    b = count_flops(fastinst.build_model(cfg), image).total
    assert a == b > 0


def test_cli_prints_json_last_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastinst.cli", "analyze", "--set", "model.backbone.name=resnet18",
         "--set", "model.num_ia_queries=16", "--size", "128x160", "--json"],
        capture_output=True, text=True, check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["params"] > 0 and result["gflops"] > 0 and result["size"] == [128, 160]


def test_cli_rejects_unknown_key() -> None:
    proc = subprocess.run([sys.executable, "-m", "fastinst.cli", "analyze", "--set", "model.decoder.layers=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "did you mean 'model.decoder.num_layers'" in proc.stderr
