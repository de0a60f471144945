"""Mask2Former's masked-attention decoder: Table 1's "Mask2Former†" (Mask2Former-light) baseline.

Per layer: masked cross-attention to one level of ``[E5, E4, E3]`` (cycling; sine or learnable PE
plus a learnable level embedding), self-attention, FFN, all post-norm. One head set shared by all
stages predicts masks on a 3x3 conv of E3. No IA-guided queries, location cost or GT guidance.
See docs/official_architecture.md#mask2former-light.
"""

from __future__ import annotations

from torch import Tensor, nn

from fastinst.config import ModelConfig
from fastinst.modeling.decoder import Matcher
from fastinst.modeling.heads import PredictionHead, predicted_attention_mask
from fastinst.modeling.layers import AttentionBlock, FFNBlock, c2_xavier_fill
from fastinst.modeling.positional import PositionalGrid
from fastinst.registry import DECODERS, QUERY_INITS


@DECODERS.register("mask2former")
class Mask2FormerDecoder(nn.Module):
    """``[E5, E4, E3]`` → ``pred_logits (B, Nq, K+1)``, ``pred_masks (B, Nq, H3, W3)``, ``aux_outputs``
    ``[pred_0..pred_{D-1}]`` (as ``FastInstDecoder``'s outputs; the IA-guided entries are None)."""

    def __init__(self, cfg: ModelConfig, matcher: Matcher | None = None) -> None:
        super().__init__()
        dec, dim = cfg.decoder, cfg.hidden_dim
        self.num_heads = dec.num_heads
        self.query_init = QUERY_INITS.get(cfg.query_init)(cfg)
        self.pos_grid = PositionalGrid(dec.pos_embed, dim, cfg.num_ia_queries, dec.pos_embed_init_std)
        self.level_embed = nn.Embedding(3, dim)
        self.mask_features = nn.Conv2d(dim, dim, 3, padding=1)
        c2_xavier_fill(self.mask_features)
        self.cross_attn = nn.ModuleList(AttentionBlock(dim, dec.num_heads, dec.dropout) for _ in range(dec.num_layers))
        self.self_attn = nn.ModuleList(AttentionBlock(dim, dec.num_heads, dec.dropout) for _ in range(dec.num_layers))
        self.ffn = nn.ModuleList(FFNBlock(dim, dec.dim_feedforward, dec.dropout) for _ in range(dec.num_layers))
        self.head = PredictionHead(dim, cfg.num_classes, class_layers=1, project_pixels=False)

    def _predict(self, q: Tensor, pixels: Tensor, hw: tuple[int, int], with_class: bool) -> dict:
        logits, masks = self.head(q, pixels, hw, with_class)
        return {"pred_logits": logits, "pred_masks": masks}

    def forward(self, features: list[Tensor], targets: list[dict] | None = None,
                all_stage_logits: bool = False) -> dict:
        mask_features = self.mask_features(features[2])
        hw = (mask_features.shape[-2], mask_features.shape[-1])
        pixels = mask_features.flatten(2).transpose(1, 2)
        memory, pos, sizes = [], [], []
        for lvl, x in enumerate(features):
            h, w = x.shape[-2:]
            sizes.append((h, w))
            memory.append(x.flatten(2).transpose(1, 2) + self.level_embed.weight[lvl])
            pos.append(self.pos_grid(h, w, x.device).flatten(2).transpose(1, 2))
        init = self.query_init(features, self.pos_grid)
        q, pos_q = init.queries, init.pos
        num_layers = len(self.ffn)
        with_class = self.training or all_stage_logits
        stages = [self._predict(q, pixels, hw, with_class or num_layers == 0)]
        for i in range(num_layers):
            lvl = i % len(features)
            attn_mask = predicted_attention_mask(stages[-1]["pred_masks"], 0, self.num_heads, sizes[lvl])
            q = self.cross_attn[i](q, memory[lvl], pos_q, pos[lvl], attn_mask)
            q = self.ffn[i](self.self_attn[i](q, q, pos_q, pos_q))
            stages.append(self._predict(q, pixels, hw, with_class or i == num_layers - 1))
        out = dict(stages[-1])
        out.update(aux_outputs=stages[:-1], ia_logits=None, query_index=None, query_scores=None)
        return out
