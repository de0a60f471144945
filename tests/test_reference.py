"""Faithfulness: the official implementation's outputs, reproduced from its weights and features."""

from __future__ import annotations

import torch

import fastinst
from fastinst.convert import convert_official_state_dict
from fastinst.modeling.postprocess import instance_inference, resize_mask_logits


def _model_and_outputs(reference: dict):
    torch.manual_seed(0)
    model = fastinst.build_model(fastinst.load_config(None, []))
    missing, unexpected = model.load_state_dict(convert_official_state_dict(reference["state_dict"]), strict=False)
    assert not unexpected
    assert all(k.startswith("backbone.") for k in missing), [k for k in missing if not k.startswith("backbone.")]
    model.eval()
    with torch.no_grad():
        out = model.forward_head(reference["inputs"], all_stage_logits=True)
    return out, reference["outputs"]


def test_reference_head(reference: dict) -> None:
    out, ref = _model_and_outputs(reference)
    e5, e4, e3 = out["multi_scale_features"]
    for mine, key in ((e5, "pixel_decoder_stride32"), (e4, "pixel_decoder_stride16"), (e3, "pixel_decoder_stride8")):
        torch.testing.assert_close(mine, ref[key], atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(out["ia_logits"], ref["ia_aux_class_logits"], atol=1e-5, rtol=1e-5)

    # Same selected set; near-tied queries (2 ulp apart) may swap order, which permutes the query axis.
    index, ref_index = out["query_index"][0], ref["query_proposal_indices"][0]
    assert set(index.tolist()) == set(ref_index.tolist())
    perm = torch.tensor([index.tolist().index(i) for i in ref_index.tolist()])
    torch.testing.assert_close(out["query_scores"][0][perm], ref["query_proposal_topk_values"][0], atol=1e-6, rtol=0)

    stages = [*out["aux_outputs"], out]
    assert len(stages) == 4
    for s, stage in enumerate(stages):
        torch.testing.assert_close(stage["pred_logits"][0][perm], ref["pred_logits_per_layer"][s, 0],
                                   atol=1e-5, rtol=1e-5, msg=f"stage {s} logits")
        torch.testing.assert_close(stage["pred_masks"][0][perm], ref["pred_masks_per_layer"][s, 0],
                                   atol=1e-4, rtol=1e-4, msg=f"stage {s} mask logits")


def test_reference_instances(reference: dict) -> None:
    out, ref = _model_and_outputs(reference)
    masks = resize_mask_logits(out["pred_masks"][0], (320, 448), (320, 448), (320, 448))
    result = instance_inference(out["pred_logits"][0], masks, top_k=100)
    # Map our (query, class) flat index into the reference query order before comparing as a set.
    index, ref_index = out["query_index"][0].tolist(), ref["query_proposal_indices"][0].tolist()
    to_ref = torch.tensor([ref_index.index(i) for i in index])
    num_classes = 80
    flat = to_ref[result["topk_index"] // num_classes] * num_classes + result["topk_index"] % num_classes
    order, ref_order = flat.argsort(), ref["instances_topk_flat_indices"].argsort()
    assert torch.equal(flat[order], ref["instances_topk_flat_indices"][ref_order])
    torch.testing.assert_close(result["scores"][order], ref["instances_scores"][ref_order], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result["class_scores"][order], ref["instances_class_scores"][ref_order],
                               atol=1e-6, rtol=1e-5)
    assert torch.equal(result["labels"][order], ref["instances_pred_classes"][ref_order])
    disagree = (result["masks"][order] != ref["instances_pred_masks"][ref_order]).float().mean().item()
    assert disagree < 1e-5, f"{disagree:.2e} of mask pixels differ"
