"""Unit tests of the model parts against brute-force versions and hand-made cases."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

import fastinst
from fastinst.modeling.criterion import dice_loss, semantic_ia_targets, sigmoid_ce_loss
from fastinst.modeling.heads import gt_attention_mask, predicted_attention_mask
from fastinst.modeling.matcher import HungarianMatcher, match_ia_pixels
from fastinst.modeling.postprocess import instance_inference
from fastinst.modeling.query_init import local_maximum, normalized_locations, select_ia_queries

SMALL = ["model.backbone.name=resnet18", "model.num_classes=3", "model.num_ia_queries=16",
         "model.num_aux_queries=4", "loss.num_points=64"]


def _brute_local_max(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    b, k, h, w = x.shape
    out = torch.zeros_like(x, dtype=torch.bool)
    for bi, ki, i, j in itertools.product(range(b), range(k), range(h), range(w)):
        v = x[bi, ki, i, j]
        neighbours = [x[bi, ki, i + di, j + dj] if 0 <= i + di < h and 0 <= j + dj < w else torch.tensor(0.0)
                      for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
        out[bi, ki, i, j] = bool(v >= eps and all(v >= n for n in neighbours))
    return out


def test_local_maximum_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 7, generator=g)
    x[x < 0.3] = 0.0  # zeros (other classes' pixels) are never maxima
    x[0, 0, 2, 2] = x[0, 0, 2, 3] = 0.95  # plateau: both count as maxima (>=)
    assert torch.equal(local_maximum(x), _brute_local_max(x))


def test_ia_selection_ranks_local_maxima_first() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 5, 6, generator=g) * 3  # K=3 classes + no-object
    scores, index = select_ia_queries(logits, 10)
    probs = logits.softmax(1)[:, :-1]
    top = probs.max(1)
    kept = torch.zeros_like(probs).scatter_(1, top.indices[:, None], top.values[:, None])
    is_max = _brute_local_max(kept).any(1).flatten(1)[0]
    expected = top.values.flatten(1)[0] + is_max.float()
    assert torch.allclose(scores[0], expected[index[0]])
    assert torch.all(scores[0][:-1] >= scores[0][1:])
    n_max = int(is_max.sum())
    assert set(index[0, : min(n_max, 10)].tolist()) <= set(is_max.nonzero().flatten().tolist())


def test_normalized_locations_endpoint_inclusive() -> None:
    index = torch.tensor([[0, 4, 15, 19]])  # 4x5 map
    locs = normalized_locations(index, 4, 5)
    assert torch.allclose(locs[0], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))


def _brute_assignment(cost: torch.Tensor) -> float:
    q, m = cost.shape
    return min(sum(cost[p[j], j].item() for j in range(m)) for p in itertools.permutations(range(q), m))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_is_optimal(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    q, m, size = 5, 3, 16
    outputs = {"pred_logits": torch.randn(1, q, 4, generator=g), "pred_masks": torch.randn(1, q, 8, 8, generator=g),
               "query_locations": torch.rand(1, q, 2, generator=g)}
    targets = [{"labels": torch.tensor([0, 2, 1]), "masks": (torch.rand(m, size, size, generator=g) > 0.5).float()}]
    matcher = HungarianMatcher(2.0, 5.0, 5.0, 1000.0, num_points=size * size)
    # Same points for the matcher and the brute-force cost.
    torch.manual_seed(seed)
    (src, tgt), = matcher(outputs, targets)
    assert len(src) == m and len(set(src.tolist())) == m
    torch.manual_seed(seed)
    from fastinst.modeling.layers import point_sample
    from fastinst.modeling.matcher import pairwise_dice, pairwise_sigmoid_ce
    points = torch.rand(1, size * size, 2)
    pred = point_sample(outputs["pred_masks"], points)[0]
    gt = point_sample(targets[0]["masks"][None], points)[0]
    inside = point_sample(targets[0]["masks"][None], outputs["query_locations"])[0] > 0
    cost = (-2 * outputs["pred_logits"][0].softmax(-1)[:, [0, 2, 1]] + 5 * pairwise_sigmoid_ce(pred, gt)
            + 5 * pairwise_dice(pred, gt) - 1000 * inside.T.float())
    chosen = sum(cost[s, t].item() for s, t in zip(src.tolist(), tgt.tolist()))
    assert chosen == pytest.approx(_brute_assignment(cost), abs=1e-4)


def test_location_cost_forces_query_inside_its_gt() -> None:
    masks = torch.zeros(1, 16, 16)
    masks[0, :8, :8] = 1  # GT in the top-left quarter
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4),
               "query_locations": torch.tensor([[[0.9, 0.9], [0.1, 0.1]]])}
    outputs["pred_logits"][0, 0, 1] = 5.0  # query 0 predicts the right class but lies outside
    (src, _), = HungarianMatcher(2.0, 5.0, 5.0, 1000.0, 64)(outputs, [{"labels": torch.tensor([1]), "masks": masks}])
    assert src.tolist() == [1]
    (src, _), = HungarianMatcher(2.0, 5.0, 5.0, 0.0, 64)(outputs, [{"labels": torch.tensor([1]), "masks": masks}])
    assert src.tolist() == [0]


def test_ia_matcher_picks_a_pixel_inside_each_gt() -> None:
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 0, 3, 3] = 10.0  # most confident class-0 pixel is outside the GT
    masks = torch.zeros(1, 32, 32)
    masks[0, :16, :16] = 1  # covers cells (0..1, 0..1) of the 4x4 map
    (pix, tgt), = match_ia_pixels(logits, [{"labels": torch.tensor([0]), "masks": masks}], 2.0, 1000.0)
    row, col = divmod(int(pix[0]), 4)
    assert row < 2 and col < 2
    (pix, _), = match_ia_pixels(logits, [{"labels": torch.tensor([0]), "masks": masks}], 2.0, 0.0)
    assert int(pix[0]) == 15


def test_loss_values_on_hand_made_cases() -> None:
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # BCE: row 0 is log 2 everywhere, row 1 is ~0; mean per mask, summed, / num_masks.
    assert sigmoid_ce_loss(logits, labels, 2.0).item() == pytest.approx(torch.log(torch.tensor(2.0)).item() / 2, rel=1e-4)
    # Dice row 0: 1 - (2*0.5 + 1)/(1 + 1 + 1) = 1/3; row 1 ≈ 1 - 3/3 = 0.
    assert dice_loss(logits, labels, 1.0).item() == pytest.approx(1 / 3, abs=1e-4)


def test_semantic_ia_targets_prefer_smaller_instance() -> None:
    masks = torch.zeros(2, 8, 8)
    masks[0] = 1  # large instance, class 0
    masks[1, :4, :4] = 1  # small instance on top, class 1
    target = semantic_ia_targets([{"labels": torch.tensor([0, 1]), "masks": masks}], (2, 2), no_object=2)
    assert target.tolist() == [[1, 0, 0, 0]]


def test_attention_masks() -> None:
    logits = torch.tensor([[[[1.0, -1.0]], [[-1.0, -2.0]]]])  # B=1, Na=2, 1x2 pixels
    mask = predicted_attention_mask(logits, num_aux=1, num_heads=2)
    assert mask.shape == (2, 3, 2)
    assert mask[0].tolist() == [[False, True], [False, False], [False, False]]  # all-blocked row cleared
    gt = torch.zeros(1, 16, 16)
    gt[0, :, :8] = 1
    mask = gt_attention_mask([(torch.tensor([1]), torch.tensor([0]))], [gt], (1, 2), num_queries=3, num_heads=1)
    assert mask[0].tolist() == [[False, False], [False, True], [False, False]]


def test_instance_inference() -> None:
    class_logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 4.0, 0.0]])  # 2 queries, K=2 (+ no-object)
    mask_logits = torch.full((2, 4, 4), -5.0)
    mask_logits[0, :2] = 5.0
    mask_logits[1, 2:] = 3.0
    out = instance_inference(class_logits, mask_logits, top_k=3)
    probs = class_logits.softmax(-1)[:, :-1]
    assert out["masks"].shape == (3, 4, 4) and out["masks"].dtype == torch.bool
    assert out["labels"][0] == 0 and torch.equal(out["masks"][0], mask_logits[0] > 0)
    expected0 = probs[0, 0] * torch.sigmoid(torch.tensor(5.0))
    assert out["scores"][0].item() == pytest.approx(expected0.item(), rel=1e-5)
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


@pytest.mark.parametrize(("sizes", "output_sizes"), [([(96, 128)], None),
                                                      ([(80, 100), (64, 120)], [(160, 200), (50, 93)])])
def test_resize_order_gives_the_same_instances(sizes: list[tuple[int, int]],
                                               output_sizes: list[tuple[int, int]] | None) -> None:
    """Top-k first (inference) and every mask resized first (the official order, FLOP counts): equal outputs."""
    torch.manual_seed(0)
    model = fastinst.build_model(fastinst.load_config(None, [*SMALL, "model.hidden_dim=64"])).eval()
    images = [torch.rand(3, h, w) * 255 for h, w in sizes]
    with torch.no_grad():
        fast = model(images, output_sizes=output_sizes)
        official = model(images, output_sizes=output_sizes, resize_all_masks=True)
    for a, b in zip(fast, official, strict=True):
        assert a.keys() == b.keys() and a["masks"].any()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_default_model_eval_outputs() -> None:
    model = fastinst.build_model(fastinst.load_config(None, [])).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 200, 300) * 255, torch.rand(3, 256, 190) * 255])
    assert out[0]["masks"].shape == (100, 200, 300) and out[1]["masks"].shape == (100, 256, 190)
    assert out[0]["scores"].shape == (100,) and out[0]["labels"].max() < 80


def test_forward_head_shapes() -> None:
    cfg = fastinst.load_config(None, [])
    model = fastinst.build_model(cfg).eval()
    feats = {"res3": torch.randn(2, 512, 24, 32), "res4": torch.randn(2, 1024, 12, 16),
             "res5": torch.randn(2, 2048, 6, 8)}
    with torch.no_grad():
        out = model.forward_head(feats)
    assert out["pred_logits"].shape == (2, 100, 81)
    assert out["pred_masks"].shape == (2, 100, 24, 32)
    assert out["query_index"].shape == (2, 100) and int(out["query_index"].max()) < 12 * 16
    assert out["ia_logits"].shape == (2, 81, 12, 16)
    assert len(out["aux_outputs"]) == 3


def _targets(sizes: list[tuple[int, int]], num_classes: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    targets = []
    for h, w in sizes:
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, : h // 2, : w // 2] = True
        masks[1, h // 3:, w // 3:] = True
        targets.append({"labels": torch.randint(0, num_classes, (2,), generator=g), "masks": masks})
    return targets


def test_default_model_forward_backward() -> None:
    torch.manual_seed(0)
    cfg = fastinst.load_config(None, ["loss.num_points=256"])
    model = fastinst.build_model(cfg).train()
    sizes = [(160, 192), (128, 160)]
    images = [torch.rand(3, h, w) * 255 for h, w in sizes]
    losses = model(images, _targets(sizes, 80))
    # final + 2D aux outputs (D guided + D un-guided), each cls/mask/dice, plus the IA-q loss.
    assert len(losses) == 3 * (1 + 2 * 3) + 1
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.decoder.query_init.cls_head[0].weight.grad.abs().sum() > 0
    assert model.decoder.layers[2].query_ffn.linear1.weight.grad.abs().sum() > 0
    assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fp32_head", [False, True])
def test_fp32_head_keeps_autocast_to_the_backbone(fp32_head: bool) -> None:
    cfg = fastinst.load_config(None, [*SMALL, "model.hidden_dim=64", f"model.fp32_head={fp32_head}"])
    model = fastinst.build_model(cfg).eval()
    res5: list[torch.dtype] = []
    model.backbone.layer4.register_forward_hook(lambda _m, _i, out: res5.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_head(model.backbone(torch.rand(1, 3, 64, 64)))
    assert res5 == [torch.bfloat16]
    assert out["pred_masks"].dtype == (torch.float32 if fp32_head else torch.bfloat16)


def test_matcher_costs_stay_float32_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastinst.modeling import matcher as matcher_module

    seen = []
    real = matcher_module.pairwise_sigmoid_ce
    monkeypatch.setattr(matcher_module, "pairwise_sigmoid_ce", lambda *a: seen.append(real(*a).dtype) or real(*a))
    outputs = {"pred_logits": torch.randn(1, 4, 3), "pred_masks": torch.randn(1, 4, 8, 8)}
    targets = [{"labels": torch.tensor([0, 1]), "masks": (torch.rand(2, 16, 16) > 0.5).float()}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        HungarianMatcher(2.0, 5.0, 5.0, 0.0, 64)(outputs, targets)
    assert seen == [torch.float32]


def test_gt_guidance_off_has_no_guided_outputs() -> None:
    cfg = fastinst.load_config(None, [*SMALL, "model.decoder.gt_mask_guidance=false"])
    model = fastinst.build_model(cfg).train()
    losses = model([torch.rand(3, 128, 128) * 255], _targets([(128, 128)], 3))
    assert len(losses) == 3 * (1 + 3) + 1


def test_guided_pass_uses_gt_mask() -> None:
    """Guided outputs differ from the normal ones and share the final matching."""
    torch.manual_seed(0)
    cfg = fastinst.load_config(None, SMALL)
    model = fastinst.build_model(cfg).train()
    batch, _ = model.preprocess([torch.rand(3, 128, 128) * 255])
    targets = [model._pad_target(t, (128, 128)) for t in _targets([(128, 128)], 3)]
    out = model.forward_head(model.backbone(batch), targets)
    guided, normal = out["aux_outputs"][:3], out["aux_outputs"][3:]
    assert all("matching_indices" in g for g in guided)
    assert not torch.allclose(guided[-1]["pred_masks"], out["pred_masks"])
    assert all("matching_indices" not in n for n in normal)


def test_bilinear_helper_matches_grid_sample_convention() -> None:
    from fastinst.modeling.layers import point_sample
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # Cell centres in [0, 1] coordinates sample the pixel values exactly (align_corners=False).
    coords = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]])
    assert point_sample(x, coords).flatten().tolist() == [0.0, 7.0]


@pytest.mark.parametrize(("norm", "norm_type"), [("FrozenBN", "FrozenBatchNorm2d"), ("BN", "BatchNorm2d"),
                                                 ("GN", "GroupNorm")])
def test_backbone_norm_choice(norm: str, norm_type: str) -> None:
    cfg = fastinst.load_config(None, [*SMALL, f"model.backbone.norm={norm}"])
    backbone = fastinst.build_model(cfg).backbone
    assert type(backbone.bn1).__name__ == norm_type
    trainable_norm = any(p.requires_grad for p in backbone.bn1.parameters())
    assert trainable_norm == (norm != "FrozenBN")


def test_gn_backbone_rejects_bn_weights() -> None:
    with pytest.raises(fastinst.ConfigError, match="norm=GN"):
        fastinst.load_config(None, ["model.backbone.norm=GN", "model.backbone.weights=imagenet"])


def test_docstring_citations_name_existing_sections() -> None:
    """Every ``docs/official_architecture.md#anchor`` cited in the code is a heading of that document."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "official_architecture.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    cited = {m for p in (root / "fastinst").rglob("*.py")
             for m in re.findall(r"official_architecture\.md#([\w-]+)", p.read_text())}
    assert cited and cited <= anchors, sorted(cited - anchors)
