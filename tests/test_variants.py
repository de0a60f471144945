"""Every ablation variant builds, runs eval and train forward/backward; params; contradictions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastinst
from fastinst.config import ConfigError, load_config
from fastinst.engine.analyze import count_parameters
from fastinst.engine.grid_report import meta_model
from fastinst.modeling.backbone import DeformConv3x3, build_backbone
from fastinst.modeling.pixel_decoders.msdeform_attn import MSDeformAttn, reference_points

REPO = Path(__file__).resolve().parents[1]
M2F = REPO / "experiments" / "configs" / "mask2former_light.yaml"
# Tiny: ResNet-18, 64-d, 64x96 inputs (E5 2x3, so Na <= 6), one decoder layer, 2-layer encoders.
TINY = ["model.backbone.name=resnet18", "model.hidden_dim=64", "model.num_classes=3", "model.num_ia_queries=4",
        "model.num_aux_queries=2", "model.decoder.num_layers=1", "model.decoder.dim_feedforward=64",
        "model.pixel_decoder.dim_feedforward=64", "model.pixel_decoder.num_encoder_layers=2",
        "loss.num_points=64"]
VARIANTS = {
    "default": [],
    "D0": ["model.decoder.num_layers=0"],
    "D2_no_guidance": ["model.decoder.num_layers=2", "model.decoder.gt_mask_guidance=false"],
    "learnable": ["model.query_init=learnable"],
    "zero": ["model.query_init=zero"],
    "resize": ["model.query_init=resize"],
    "single_pixel": ["model.decoder.update=single_pixel", "model.decoder.num_layers=2"],
    "single_query": ["model.decoder.update=single_query"],
    "dual_query_then_pixel": ["model.decoder.update=dual_query_then_pixel"],
    "Nb0": ["model.num_aux_queries=0"],
    "E3": ["model.query_source=E3"],
    "E5": ["model.query_source=E5"],
    "semantic_ia": ["loss.ia.assignment=semantic", "loss.ia.location_cost=false"],
    "no_location_cost": ["loss.ia.location_cost=false"],
    "sinusoidal": ["model.decoder.pos_embed=sinusoidal"],
    "fpn": ["model.pixel_decoder.name=fpn"],
    "transformer_encoder": ["model.pixel_decoder.name=transformer_encoder"],
    "msdeform_attn": ["model.pixel_decoder.name=msdeform_attn"],
    "resnet50d_dcn": ["model.backbone.name=resnet50d_dcn"],
    "mask2former": ["model.decoder.name=mask2former", "model.query_init=learnable", "model.num_aux_queries=0",
                    "model.decoder.update=single_query", "model.decoder.gt_mask_guidance=false",
                    "model.decoder.pos_embed=sinusoidal", "model.decoder.num_layers=4"],
}
SIZES = [(64, 96), (56, 80)]


def _targets() -> list[dict]:
    targets = []
    for h, w in SIZES:
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 4:30, 8:50] = True
        masks[1, 20:50, 40:78] = True
        targets.append({"labels": torch.tensor([0, 2]), "masks": masks})
    return targets


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_eval_and_train(name: str) -> None:
    torch.manual_seed(0)
    cfg = load_config(None, TINY + VARIANTS[name])
    model = fastinst.build_model(cfg)
    images = [torch.rand(3, h, w) * 255 for h, w in SIZES]
    model.eval()
    with torch.no_grad():
        results = model(images)
    for result, (h, w) in zip(results, SIZES):
        k = min(cfg.model.test.detections_per_image, cfg.model.num_ia_queries * cfg.model.num_classes)
        assert result["masks"].shape == (k, h, w) and result["scores"].shape == (k,)
    model.train()
    losses = model(images, _targets())
    num_outputs = 1 + cfg.model.decoder.num_layers * (2 if cfg.model.decoder.gt_mask_guidance else 1)
    assert sum(k.startswith("loss_cls") for k in losses) == num_outputs
    assert ("loss_ia" in losses) == (cfg.model.query_init == "ia_guided")
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if cfg.model.decoder.num_layers == 0:  # positions (P, auxiliary queries) only feed decoder layers
        missing = [n for n in missing if n not in ("decoder.pos_grid.grid", "decoder.aux_query_pos.weight",
                                                   "decoder.aux_query_features.weight")]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize(("overrides", "params"), [
    ([], 34_176_597),
    (["model.backbone.name=resnet50d_dcn"], 34_693_527),
    (["model.backbone.name=resnet101"], 53_116_501),
    (["model.decoder.num_layers=1"], 29_658_035),
])
def test_param_counts(overrides: list[str], params: int) -> None:
    assert count_parameters(meta_model(load_config(None, overrides))) == params


def test_mask2former_preset() -> None:
    cfg = load_config(M2F)
    assert (cfg.model.decoder.name, cfg.model.decoder.num_layers, cfg.model.query_init) == ("mask2former", 9, "learnable")
    model = meta_model(cfg)
    assert not hasattr(model.decoder.query_init, "cls_head") and len(model.decoder.ffn) == 9


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.decoder.name=mask2former"], "no IA-guided queries"),
    (["model.decoder.name=mask2former", "model.query_init=learnable"], "gt_mask_guidance=false"),
    (["model.decoder.name=mask2former", "model.query_init=learnable", "model.decoder.gt_mask_guidance=false"],
     "update=single_query"),
    (["model.decoder.name=mask2former", "model.query_init=learnable", "model.decoder.gt_mask_guidance=false",
      "model.decoder.update=single_query"], "num_aux_queries=0"),
    (["model.decoder.name=detr"], "model.decoder.name: invalid value"),
    (["model.pixel_decoder.name=msdeform_attn", "model.pixel_decoder.num_points=0"], "num_points must be >= 1"),
    (["model.pixel_decoder.name=transformer_encoder", "model.pixel_decoder.num_heads=3"], "divisible by"),
    (["model.query_init=zero", "model.query_source=E5"], "query_source=E5 only applies"),
    (["model.query_init=resize", "loss.ia.location_cost=false"], "only applies to model.query_init=ia_guided"),
])
def test_contradictions_rejected(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_deform_conv_starts_as_the_plain_conv() -> None:
    torch.manual_seed(0)
    conv = DeformConv3x3(8, 16, stride=2)
    x = torch.randn(1, 8, 12, 10)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        conv.offset.bias.fill_(0.5)  # a half-pixel shift must change the output
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1), atol=1e-3)


def test_resnet50d_dcn_loads_timm_layout_without_offsets(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.backbone.name=resnet50d_dcn"]).model.backbone
    state = {k: v + 1 for k, v in build_backbone(cfg).state_dict().items() if ".offset." not in k}
    assert "conv1.3.weight" in state and "layer2.0.downsample.1.weight" in state  # timm's key layout
    torch.save(state, tmp_path / "resnet50d.pth")
    cfg.weights = str(tmp_path / "resnet50d.pth")
    loaded = build_backbone(cfg)
    torch.testing.assert_close(loaded.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    cfg.weights = str(tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        build_backbone(cfg)


def test_msdeform_attn_at_zero_offsets_reads_the_reference_pixel() -> None:
    """One level, one point, no offset: sampling at each pixel centre returns that pixel's value."""
    torch.manual_seed(0)
    attn = MSDeformAttn(16, num_heads=2, num_levels=1, num_points=1)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    shapes = [(5, 7)]
    x = torch.randn(2, 35, 16)
    out = attn(torch.randn(2, 35, 16), reference_points(shapes, x.device), x, shapes)
    torch.testing.assert_close(out, attn.output_proj(attn.value_proj(x)), atol=1e-5, rtol=1e-5)
