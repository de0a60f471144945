"""ResNet backbones from torchvision with frozen batch norm, returning res3/res4/res5.

Matches the official FastInst R50/R101 (detectron2 ResNet with the stride on the 3x3 conv, i.e.
torchvision's layout; FrozenBN whose statistics and affine are buffers; FREEZE_AT 0), and builds
R50-d-DCN (timm's ResNet-50-D layout: deep stem, avg-pool shortcut; deformable conv v1 in every
res4/res5 bottleneck).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from fastinst.config import BackboneConfig
from fastinst.registry import BACKBONES

# torchvision weights enum names for ``weights: imagenet`` (V1 = the R-50.pkl the official code uses).
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
}


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine, all buffers: ``(B, C, H, W)`` → same.

    Runs ``F.batch_norm`` in inference mode, as detectron2's FrozenBN does, so FLOP counts match the
    official analysis (2 per element).
    """

    weight: Tensor  # buffers, (C,) each
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def norm_layer(name: str) -> Callable[[int], nn.Module]:
    """``model.backbone.norm`` → a ``num_channels → module`` factory."""
    if name == "FrozenBN":
        return FrozenBatchNorm2d
    if name == "BN":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(32, channels)


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk: ``(B, 3, H, W)`` → ``{"res3": /8, "res4": /16, "res5": /32}``."""

    def __init__(self, resnet: torchvision.models.ResNet, freeze_at: int = 0) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        width = 4 if isinstance(resnet.layer1[0], torchvision.models.resnet.Bottleneck) else 1
        self.out_channels = {"res3": 128 * width, "res4": 256 * width, "res5": 512 * width}
        self.out_strides = {"res3": 8, "res4": 16, "res5": 32}
        stages = [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]
        for stage in stages[:freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res3 = self.layer2(self.layer1(x))
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {"res3": res3, "res4": res4, "res5": res5}


def load_backbone_weights(backbone: nn.Module, name: str, weights: str, optional: tuple[str, ...] = ()) -> None:
    """Load ImageNet weights (``"imagenet"``: torchvision weights API) or a local state-dict file.

    Keys containing one of ``optional`` (e.g. DCN offsets, absent from ImageNet weights) may be missing.
    """
    if weights == "imagenet":
        if name not in IMAGENET_WEIGHTS:
            raise ValueError(f"model.backbone.weights=imagenet is not available for {name!r}; pass a local file")
        state = torchvision.models.get_weight(IMAGENET_WEIGHTS[name]).get_state_dict(progress=True)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"model.backbone.weights: no such file {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not any(o in k for o in optional)]
    if missing or unexpected:
        raise ValueError(f"backbone weights {weights}: missing keys {missing[:5]}, unexpected {unexpected[:5]}")


def _torchvision_resnet(arch: str) -> Callable[[BackboneConfig], ResNetBackbone]:
    def build(cfg: BackboneConfig) -> ResNetBackbone:
        resnet = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer(cfg.norm))
        backbone = ResNetBackbone(resnet, cfg.freeze_at)
        if cfg.weights is not None:
            load_backbone_weights(backbone, arch, cfg.weights)
        return backbone

    return build


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONES.register(_arch)(_torchvision_resnet(_arch))


class DeformConv3x3(nn.Module):
    """Deformable conv v1 (one offset group, no modulation): ``(B, Cin, H, W)`` → ``(B, Cout, H/s, W/s)``.

    The offset branch is a plain 3x3 conv with bias giving 18 channels, zero-initialised, so the
    layer starts as the regular conv. Keys: ``weight`` (the conv's) and ``offset.{weight,bias}``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.offset = nn.Conv2d(in_channels, 18, 3, stride=stride, padding=1)
        nn.init.zeros_(self.offset.weight)
        assert self.offset.bias is not None  # built with bias=True
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        return deform_conv2d(x, self.offset(x), self.weight, stride=self.stride, padding=1)


def _deep_stem(norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """ResNet-D stem before ``bn1``: 3x3 convs 3→32 (stride 2) → 32 → 64, BN+ReLU between them."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(((3, 32), (32, 32), (32, 64))):
        layers.append(nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1, padding=1, bias=False))
        if i < 2:
            layers += [norm(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _avg_down(block: torchvision.models.resnet.Bottleneck, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """ResNet-D shortcut: 2x2 avg-pool (stride-2 blocks only) → 1x1 conv → BN, keys as timm's."""
    conv = block.downsample[0]
    stride = conv.stride[0]
    pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False),
                         norm(conv.out_channels))


@BACKBONES.register("resnet50d_dcn")
def build_resnet50d_dcn(cfg: BackboneConfig) -> ResNetBackbone:
    """ResNet-50-D with deformable 3x3 convs in res4/res5; weights: a local timm ``resnet50d`` state dict."""
    norm = norm_layer(cfg.norm)
    resnet = torchvision.models.resnet50(weights=None, norm_layer=norm)
    resnet.conv1 = _deep_stem(norm)
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        layer[0].downsample = _avg_down(layer[0], norm)
    for layer in (resnet.layer3, resnet.layer4):
        for block in layer:
            block.conv2 = DeformConv3x3(block.conv2.in_channels, block.conv2.out_channels, block.conv2.stride[0])
    backbone = ResNetBackbone(resnet, cfg.freeze_at)
    if cfg.weights is not None:
        load_backbone_weights(backbone, "resnet50d_dcn", cfg.weights, optional=(".conv2.offset.",))
    return backbone


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    return BACKBONES.get(cfg.name)(cfg)
