"""Transformer-encoder pixel decoder (Table 5): a DETR encoder on the res5 lateral inside the FPN.

Reconstruction of Mask2Former's ``TransformerEncoderPixelDecoder`` (docs/official_architecture.md#pixel-decoders):
res5 → 1x1 conv (bias) → post-norm DETR encoder (sine PE) → 3x3 conv+GN+ReLU as y5 → FPN top-down path (nearest).
"""

from __future__ import annotations

from torch import Tensor, nn

from fastinst.config import ModelConfig
from fastinst.modeling.layers import AttentionBlock, FFNBlock, c2_xavier_fill, sine_position_embedding
from fastinst.modeling.pixel_decoders.ppm_fpn import FPNPixelDecoder
from fastinst.registry import PIXEL_DECODERS


class TransformerEncoder(nn.Module):
    """Post-norm DETR encoder (self-attention + FFN per layer, sine PE added to q and k):
    ``(B, C, h, w)`` → ``(B, C, h, w)``."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.ModuleList(AttentionBlock(dim, num_heads, dropout) for _ in range(num_layers))
        self.ffn = nn.ModuleList(FFNBlock(dim, ffn_dim, dropout) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        pos = sine_position_embedding(h, w, c, x.device).flatten(2).transpose(1, 2)
        y = x.flatten(2).transpose(1, 2)
        for attn, ffn in zip(self.attn, self.ffn):
            y = ffn(attn(y, y, pos, pos))
        return y.transpose(1, 2).reshape(b, c, h, w)


@PIXEL_DECODERS.register("transformer_encoder")
def build_transformer_encoder(cfg: ModelConfig, in_channels: dict[str, int]) -> FPNPixelDecoder:
    p = cfg.pixel_decoder
    input_proj = nn.Conv2d(in_channels["res5"], cfg.hidden_dim, 1)
    c2_xavier_fill(input_proj)
    encoder = TransformerEncoder(cfg.hidden_dim, p.num_encoder_layers, p.num_heads, p.dim_feedforward)
    return FPNPixelDecoder(in_channels, cfg.hidden_dim, context=encoder, lateral5=input_proj, upsample="nearest")
