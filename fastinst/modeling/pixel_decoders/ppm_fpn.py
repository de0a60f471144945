"""PPM-FPN (FastInst's default pixel decoder) and its plain-FPN variant (Table 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastinst.config import ModelConfig
from fastinst.modeling.layers import conv_gn
from fastinst.registry import PIXEL_DECODERS

LEVELS = ("res3", "res4", "res5")


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling on ``(B, C, H, W)``: pools to 1/2/3/6 cells, fuses back to C channels."""

    def __init__(self, channels: int, branch_channels: int = 64, sizes: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(channels, branch_channels, 1), nn.ReLU())
            for s in sizes
        )
        self.bottleneck = nn.Conv2d(channels + len(sizes) * branch_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        branches = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return F.relu(self.bottleneck(torch.cat([*branches, x], dim=1)))


class FPNPixelDecoder(nn.Module):
    """Lateral 1x1 conv+GN per level, optional context module on the res5 lateral, top-down path of
    3x3 conv+GN+ReLU.

    ``y5 = out5(context(lat5(res5)))``, ``y4 = out4(lat4(res4) + up(y5))``, ``y3 = out3(lat3(res3) + up(y4))``.
    ``context`` is the PPM (PPM-FPN), None (FPN) or a transformer encoder; ``lateral5`` replaces the
    res5 lateral conv; ``upsample`` is the top-down interpolation mode.
    Input: ``{"res3","res4","res5"}``; output ``[E5 (B,C,H/32,W/32), E4 (B,C,H/16,W/16), E3 (B,C,H/8,W/8)]``.
    """

    def __init__(self, in_channels: dict[str, int], dim: int, context: nn.Module | None = None,
                 lateral5: nn.Module | None = None, upsample: str = "bilinear") -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleDict({k: conv_gn(in_channels[k], dim, 1, relu=False) for k in LEVELS[:2]})
        self.lateral_convs["res5"] = lateral5 if lateral5 is not None else conv_gn(in_channels["res5"], dim, 1, False)
        self.output_convs = nn.ModuleDict({k: conv_gn(dim, dim, 3, relu=True) for k in LEVELS})
        self.context = context
        self.upsample = upsample

    def _up(self, x: Tensor, size: torch.Size) -> Tensor:
        align_corners = False if self.upsample == "bilinear" else None
        return F.interpolate(x, size=size, mode=self.upsample, align_corners=align_corners)

    def forward(self, features: dict[str, Tensor]) -> list[Tensor]:
        y = self.lateral_convs["res5"](features["res5"])
        if self.context is not None:
            y = self.context(y)
        outs = [self.output_convs["res5"](y)]
        for level in ("res4", "res3"):
            lateral = self.lateral_convs[level](features[level])
            outs.append(self.output_convs[level](lateral + self._up(outs[-1], lateral.shape[-2:])))
        return outs


@PIXEL_DECODERS.register("ppm_fpn")
def build_ppm_fpn(cfg: ModelConfig, in_channels: dict[str, int]) -> FPNPixelDecoder:
    return FPNPixelDecoder(in_channels, cfg.hidden_dim, context=PyramidPooling(cfg.hidden_dim))


@PIXEL_DECODERS.register("fpn")
def build_fpn(cfg: ModelConfig, in_channels: dict[str, int]) -> FPNPixelDecoder:
    return FPNPixelDecoder(in_channels, cfg.hidden_dim)
