"""Load checkpoints in the official FastInst key layout (detectron2 backbone names, ``sem_seg_head.*``)."""

from __future__ import annotations

import re

from torch import Tensor

_DROP = ("criterion.empty_weight", "sem_seg_head.predictor.criterion.empty_weight", "pixel_mean", "pixel_std")

# (official regex, our replacement), applied to the first match only.
_RULES: list[tuple[str, str]] = [
    # detectron2 ResNet → torchvision ResNet (res2..res5 are layer1..layer4)
    (r"^backbone\.stem\.conv1\.norm\.", "backbone.bn1."),
    (r"^backbone\.stem\.conv1\.", "backbone.conv1."),
    *[rule for stage in (2, 3, 4, 5) for rule in (
        (rf"^backbone\.res{stage}\.(\d+)\.shortcut\.norm\.", f"backbone.layer{stage - 1}.{{0}}.downsample.1."),
        (rf"^backbone\.res{stage}\.(\d+)\.shortcut\.", f"backbone.layer{stage - 1}.{{0}}.downsample.0."),
        (rf"^backbone\.res{stage}\.(\d+)\.conv(\d)\.norm\.", f"backbone.layer{stage - 1}.{{0}}.bn{{1}}."),
        (rf"^backbone\.res{stage}\.(\d+)\.conv(\d)\.", f"backbone.layer{stage - 1}.{{0}}.conv{{1}}."),
    )],
    # pixel decoder: adapter_/layer_ 1, 2, 3 are the res3, res4, res5 lateral / output convs
    *[rule for idx, level in ((1, 3), (2, 4), (3, 5)) for rule in (
        (rf"^sem_seg_head\.pixel_decoder\.adapter_{idx}\.", f"pixel_decoder.lateral_convs.res{level}."),
        (rf"^sem_seg_head\.pixel_decoder\.layer_{idx}\.", f"pixel_decoder.output_convs.res{level}."),
    )],
    (r"^sem_seg_head\.pixel_decoder\.ppm\.", "pixel_decoder.context."),
    # decoder
    (r"^sem_seg_head\.predictor\.meta_pos_embed$", "decoder.pos_grid.grid"),
    (r"^sem_seg_head\.predictor\.empty_query_features\.", "decoder.aux_query_features."),
    (r"^sem_seg_head\.predictor\.empty_query_pos_embed\.", "decoder.aux_query_pos."),
    (r"^sem_seg_head\.predictor\.query_proposal\.conv_proposal_cls_logits\.", "decoder.query_init.cls_head."),
    (r"^sem_seg_head\.predictor\.transformer_mask_cross_attention_layers\.(\d+)\.multihead_attn\.",
     "decoder.layers.{0}.pixel_cross_attn.attn."),
    (r"^sem_seg_head\.predictor\.transformer_mask_cross_attention_layers\.(\d+)\.norm\.",
     "decoder.layers.{0}.pixel_cross_attn.norm."),
    (r"^sem_seg_head\.predictor\.transformer_mask_ffn_layers\.(\d+)\.", "decoder.layers.{0}.pixel_ffn."),
    (r"^sem_seg_head\.predictor\.transformer_query_cross_attention_layers\.(\d+)\.multihead_attn\.",
     "decoder.layers.{0}.query_cross_attn.attn."),
    (r"^sem_seg_head\.predictor\.transformer_query_cross_attention_layers\.(\d+)\.norm\.",
     "decoder.layers.{0}.query_cross_attn.norm."),
    (r"^sem_seg_head\.predictor\.transformer_query_self_attention_layers\.(\d+)\.self_attn\.",
     "decoder.layers.{0}.query_self_attn.attn."),
    (r"^sem_seg_head\.predictor\.transformer_query_self_attention_layers\.(\d+)\.norm\.",
     "decoder.layers.{0}.query_self_attn.norm."),
    (r"^sem_seg_head\.predictor\.transformer_query_ffn_layers\.(\d+)\.", "decoder.layers.{0}.query_ffn."),
    (r"^sem_seg_head\.predictor\.decoder_query_norm_layers\.(\d+)\.", "decoder.heads.{0}.query_norm."),
    (r"^sem_seg_head\.predictor\.class_embed_layers\.(\d+)\.", "decoder.heads.{0}.class_embed."),
    (r"^sem_seg_head\.predictor\.mask_embed_layers\.(\d+)\.", "decoder.heads.{0}.mask_embed."),
    (r"^sem_seg_head\.predictor\.mask_features_layers\.(\d+)\.", "decoder.heads.{0}.pixel_proj."),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]


def _rename(key: str) -> str:
    for pattern, repl in _COMPILED:
        match = pattern.match(key)
        if match is not None:
            return repl.format(*match.groups()) + key[match.end():]
    raise KeyError(f"no mapping for official key {key!r}")


def is_official_state_dict(sd: dict[str, Tensor]) -> bool:
    """True when ``sd`` uses the official layout (``sem_seg_head.*`` or detectron2 ``backbone.res*``)."""
    return any(k.startswith(("sem_seg_head.", "backbone.stem.", "backbone.res")) for k in sd)


def convert_official_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official FastInst state dict (full model or head only) to this model's keys.

    Loss-only buffers (``criterion.empty_weight``) and pixel mean/std are dropped; an unknown key
    raises ``KeyError`` naming it. Values are returned as float32 where they were floating point.
    """
    out = {}
    for key, value in sd.items():
        if key in _DROP or key.endswith("num_batches_tracked"):
            continue
        out[_rename(key)] = value.float() if value.is_floating_point() else value
    return out
