"""Baseline: GLEE / MaskDINO-style pixel decoder (MOBIUS Tab. 1 row a, Tab. 3 rows a-c).

Every block runs on the concatenation of all scales {S3, S4, S5, S6}: bidirectional image-text
cross-attention over all tokens (GLEE's early fusion), multi-scale deformable self-attention with
every token as a query, and an FFN. Its cost grows with the total token count, which is exactly
what the bottleneck decoder avoids; it is here to measure that difference side by side.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .deform_attn import MSDeformAttn
from .layers import FFN, level_position_embeddings, reference_grid
from .neck import NormedProjection
from .pixel_decoder_common import MaskFeatureHead, PixelDecoderOutput, TextContext, TextFusion, token_anchors

_STRIDES = [8, 16, 32, 64]


class MaskDinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, points: int, ffn_dim: int, text_fusion: bool, update_text: bool):
        super().__init__()
        self.fusion = TextFusion(dim, heads, nn.LayerNorm(dim), update_text) if text_fusion else None
        self.self_attn = MSDeformAttn(dim, levels=4, heads=heads, points=points)
        self.norm_self = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, pos: Tensor, text: TextContext, shapes: list[tuple[int, int]],
                ref_points: Tensor) -> tuple[Tensor, TextContext]:
        """tokens: (B, S, C) all scales; pos: (S, C); ref_points: (S, 2)."""
        if self.fusion is not None:
            tokens, text = self.fusion(tokens, pos, text)
        ref = ref_points[None, :, None, :].expand(tokens.shape[0], -1, len(shapes), -1)  # (B, S, 4, 2)
        tokens = self.norm_self(tokens + self.self_attn(tokens + pos, ref, tokens, shapes))
        tokens = self.norm_ffn(tokens + self.ffn(tokens))
        return tokens, text


class MaskDinoPixelDecoder(nn.Module):
    def __init__(self, dim: int, num_blocks: int, heads: int, points: int, ffn_dim: int,
                 text_fusion: bool = True, multi_scale_memory: bool = True):
        super().__init__()
        self.multi_scale_memory = multi_scale_memory
        self.level_embed = nn.Parameter(torch.randn(4, dim) * 0.02)
        self.blocks = nn.ModuleList(MaskDinoBlock(dim, heads, points, ffn_dim, text_fusion,
                                                  update_text=i < num_blocks - 1) for i in range(num_blocks))
        self.mask_head = MaskFeatureHead(dim, upsample=2)

    def forward(self, s2: Tensor | NormedProjection, pyramid: list[Tensor], text: TextContext) -> PixelDecoderOutput:
        batch, dim = pyramid[0].shape[:2]
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in pyramid]
        tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in pyramid], dim=1)      # (B, S, C)
        pos = level_position_embeddings(shapes, dim, self.level_embed, tokens.device, tokens.dtype)
        ref_points = reference_grid(shapes, tokens.device, tokens.dtype)
        for block in self.blocks:
            tokens, text = block(tokens, pos, text, shapes, ref_points)
        maps = [t.transpose(1, 2).reshape(batch, dim, h, w)
                for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)]
        memory = maps if self.multi_scale_memory else [maps[1]]  # single scale = stride 16
        return PixelDecoderOutput(
            memory=memory,
            selection_tokens=tokens,
            selection_anchors=token_anchors(shapes, _STRIDES, tokens.device, tokens.dtype),
            mask_features=self.mask_head(maps[0], s2),
            text=text,
        )
