"""FastInst's transformer decoder: query init, dual-path layers, per-stage heads, GT-mask guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fastinst.config import ModelConfig
from fastinst.modeling.heads import PredictionHead, gt_attention_mask, predicted_attention_mask
from fastinst.modeling.layers import AttentionBlock, FFNBlock
from fastinst.modeling.positional import PositionalGrid
from fastinst.registry import DECODERS, QUERY_INITS

Matcher = Callable[[dict, list[dict]], list[tuple[Tensor, Tensor]]]


class DecoderLayer(nn.Module):
    """One decoder layer; ``update`` picks the paths and their order (Table 3).

    Pixel path: (a) pixel cross-attention to the queries, (b) pixel FFN. Query path: (c) masked
    cross-attention to the pixels, (d) self-attention, (e) FFN. All post-norm.
    ``queries (B, N, C)``, ``pixels (B, L, C)``, ``attn_mask (B·heads, N, L)``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, update: str) -> None:
        super().__init__()
        self.pixel_first = update != "dual_query_then_pixel"
        self.update_pixels = update != "single_query"
        self.update_queries = update != "single_pixel"
        if self.update_pixels:
            self.pixel_cross_attn = AttentionBlock(dim, num_heads, dropout)
            self.pixel_ffn = FFNBlock(dim, ffn_dim, dropout)
        if self.update_queries:
            self.query_cross_attn = AttentionBlock(dim, num_heads, dropout)
            self.query_self_attn = AttentionBlock(dim, num_heads, dropout)
            self.query_ffn = FFNBlock(dim, ffn_dim, dropout)

    def _pixels(self, q: Tensor, x: Tensor, pos_q: Tensor, pos_x: Tensor) -> Tensor:
        return self.pixel_ffn(self.pixel_cross_attn(x, q, pos_x, pos_q))

    def _queries(self, q: Tensor, x: Tensor, pos_q: Tensor, pos_x: Tensor, attn_mask: Tensor | None) -> Tensor:
        q = self.query_cross_attn(q, x, pos_q, pos_x, attn_mask)
        q = self.query_self_attn(q, q, pos_q, pos_q)
        return self.query_ffn(q)

    def forward(self, q: Tensor, x: Tensor, pos_q: Tensor, pos_x: Tensor,
                attn_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.pixel_first and self.update_pixels:
            x = self._pixels(q, x, pos_q, pos_x)
        if self.update_queries:
            q = self._queries(q, x, pos_q, pos_x, attn_mask)
        if not self.pixel_first and self.update_pixels:
            x = self._pixels(q, x, pos_q, pos_x)
        return q, x


@DECODERS.register("fastinst")
class FastInstDecoder(nn.Module):
    """``[E5, E4, E3]`` → per-stage class and mask predictions (docs/official_architecture.md#decoder).

    Outputs: ``pred_logits (B, Na, K+1)``, ``pred_masks (B, Na, H3, W3)`` of the last stage and
    ``aux_outputs``: in training ``[guided_1..guided_D, pred_0..pred_{D-1}]``, in eval
    ``[pred_0..pred_{D-1}]`` (none for ``single_pixel``, whose layers need no predicted masks);
    IA-guided init adds ``ia_logits``, ``query_index``, ``query_locations``.
    """

    def __init__(self, cfg: ModelConfig, matcher: Matcher | None = None) -> None:
        super().__init__()
        dec = cfg.decoder
        self.num_heads = dec.num_heads
        self.num_queries = cfg.num_ia_queries
        self.num_aux = cfg.num_aux_queries
        self.gt_mask_guidance = dec.gt_mask_guidance
        self.matcher = matcher
        self.query_init = QUERY_INITS.get(cfg.query_init)(cfg)
        self.pos_grid = PositionalGrid(dec.pos_embed, cfg.hidden_dim, cfg.num_ia_queries, dec.pos_embed_init_std)
        if self.num_aux > 0:
            self.aux_query_features = nn.Embedding(self.num_aux, cfg.hidden_dim)
            self.aux_query_pos = nn.Embedding(self.num_aux, cfg.hidden_dim)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.hidden_dim, dec.num_heads, dec.dim_feedforward, dec.dropout, dec.update)
            for _ in range(dec.num_layers)
        )
        self.heads = nn.ModuleList(PredictionHead(cfg.hidden_dim, cfg.num_classes) for _ in range(dec.num_layers + 1))

    def _append_aux(self, queries: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        if self.num_aux == 0:
            return queries, pos
        b = queries.shape[0]
        aux_q = self.aux_query_features.weight.unsqueeze(0).expand(b, -1, -1)
        aux_pos = self.aux_query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        return torch.cat([queries, aux_q], dim=1), torch.cat([pos, aux_pos], dim=1)

    def _predict(self, stage: int, q: Tensor, x: Tensor, hw: tuple[int, int], with_class: bool) -> dict:
        logits, masks = self.heads[stage](q[:, : self.num_queries], x, hw, with_class)
        return {"pred_logits": logits, "pred_masks": masks}

    def forward(self, features: list[Tensor], targets: list[dict] | None = None,
                all_stage_logits: bool = False) -> dict:
        e3 = features[2]
        hw = (e3.shape[-2], e3.shape[-1])
        init = self.query_init(features, self.pos_grid)
        q, pos_q = self._append_aux(init.queries, init.pos)
        x = e3.flatten(2).transpose(1, 2)
        pos_x = self.pos_grid(hw[0], hw[1], e3.device).flatten(2).transpose(1, 2)
        num_layers = len(self.layers)
        with_class = self.training or all_stage_logits
        # In eval, intermediate masks are only needed by the masked attention of a query path.
        keep = with_class or any(layer.update_queries for layer in self.layers)

        stages = [self._predict(0, q, x, hw, with_class or num_layers == 0)] if keep or num_layers == 0 else []
        layer_outputs = []
        for i, layer in enumerate(self.layers):
            attn_mask = None
            if layer.update_queries:
                attn_mask = predicted_attention_mask(stages[-1]["pred_masks"], self.num_aux, self.num_heads)
            q, x = layer(q, x, pos_q, pos_x, attn_mask)
            layer_outputs.append((q, x))
            if keep or i == num_layers - 1:
                stages.append(self._predict(i + 1, q, x, hw, with_class or i == num_layers - 1))

        locations = init.locations
        for stage in stages:
            stage["query_locations"] = locations
        guided = []
        if self.training and self.gt_mask_guidance and num_layers > 0:
            guided = self._guided_pass(stages[-1], layer_outputs, pos_q, pos_x, hw, targets)

        out = dict(stages[-1])
        out["aux_outputs"] = guided + stages[:-1]
        out["ia_logits"] = init.ia_logits
        out["query_index"] = init.query_index
        out["query_scores"] = init.scores
        return out

    def _guided_pass(self, final: dict, layer_outputs: list[tuple[Tensor, Tensor]], pos_q: Tensor,
                     pos_x: Tensor, hw: tuple[int, int], targets: list[dict] | None) -> list[dict]:
        """Re-run each layer l on its own outputs under the GT attention mask (official code), then head l."""
        if targets is None or self.matcher is None:
            raise ValueError("GT-mask-guided learning needs targets and a matcher in training mode")
        indices = self.matcher(final, targets)
        mask = gt_attention_mask(indices, [t["masks"] for t in targets], hw,
                                 self.num_queries + self.num_aux, self.num_heads)
        guided = []
        for i, (layer, (q, x)) in enumerate(zip(self.layers, layer_outputs)):
            gq, gx = layer(q, x, pos_q, pos_x, mask)
            stage = self._predict(i + 1, gq, gx, hw, with_class=True)
            stage["query_locations"] = final["query_locations"]
            stage["matching_indices"] = indices
            guided.append(stage)
        return guided
