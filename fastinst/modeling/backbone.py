"""ResNet backbones from torchvision with frozen batch norm, returning res3/res4/res5.

Matches the official FastInst R50/R101 (detectron2 ResNet with the stride on the 3x3 conv, i.e.
torchvision's layout; FrozenBN whose statistics and affine are buffers; FREEZE_AT 0).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

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

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


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


def load_backbone_weights(backbone: nn.Module, name: str, weights: str) -> None:
    """Load ImageNet weights (``"imagenet"``: torchvision weights API) or a local state-dict file."""
    if weights == "imagenet":
        if name not in IMAGENET_WEIGHTS:
            raise ValueError(f"model.backbone.weights=imagenet is not available for {name!r}")
        state = torchvision.models.get_weight(IMAGENET_WEIGHTS[name]).get_state_dict(progress=True)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"model.backbone.weights: no such file {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"backbone weights {weights}: missing keys {missing[:5]}, unexpected {unexpected[:5]}")


def _torchvision_resnet(arch: str):
    def build(cfg: BackboneConfig) -> ResNetBackbone:
        resnet = getattr(torchvision.models, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
        backbone = ResNetBackbone(resnet, cfg.freeze_at)
        if cfg.weights is not None:
            load_backbone_weights(backbone, arch, cfg.weights)
        return backbone

    return build


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONES.register(_arch)(_torchvision_resnet(_arch))


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    return BACKBONES.get(cfg.name)(cfg)
