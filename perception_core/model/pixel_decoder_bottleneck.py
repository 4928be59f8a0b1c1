"""MOBIUS bottleneck pixel decoder (Sec. 3.2, Eq. 1a-1e).

One feature scale B = S_i (stride 8, 16 or 32; 16 in the paper) is the representational bottleneck.
Each of the M blocks fuses text and all scales *into* B, so every attention runs at the bottleneck's
length |B| instead of the length of all scales concatenated:

    1a  B   = GN(CA(B, E_text) + B)                   image-to-text cross-attention
    1b  E   = LN(CA(E_text, B) + E_text)              text-to-image (updates the text tokens)
    1c  B   = GN(DeformSA(B) + B)                     deformable self-attention within B
    1d  B   = GN(MSDeformCA(B, {S3,S4,S5,S6}) + B)    multi-scale deformable cross-attention
    1e  B^  = GN(FFN(B) + B)

The paper's Eq. 1b writes the residual onto B; as the text says, 1b updates the text tokens.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import deform_conv
from .deform_attn import MSDeformAttn, ProjectedValues, project_many
from .layers import FFN, TokenGroupNorm, level_position_embeddings, reference_grid, sine_position_embedding
from .neck import NormedProjection
from .pixel_decoder_common import MaskFeatureHead, PixelDecoderOutput, TextContext, TextFusion, token_anchors

_STRIDE_TO_LEVEL = {8: 0, 16: 1, 32: 2}  # index into [S3, S4, S5, S6]
_GN_GROUPS = 32


class BottleneckBlock(nn.Module):
    def __init__(self, dim: int, heads: int, points: int, ffn_dim: int, text_fusion: bool, update_text: bool):
        super().__init__()
        groups = min(_GN_GROUPS, dim)
        self.fusion = TextFusion(dim, heads, TokenGroupNorm(groups, dim), update_text) if text_fusion else None
        self.self_attn = MSDeformAttn(dim, levels=1, heads=heads, points=points)
        self.norm_self = TokenGroupNorm(groups, dim)
        self.cross_attn = MSDeformAttn(dim, levels=4, heads=heads, points=points)
        self.norm_cross = TokenGroupNorm(groups, dim)
        self.ffn = FFN(dim, ffn_dim)
        self.norm_ffn = TokenGroupNorm(groups, dim)

    def forward(self, bottleneck: Tensor, pos: Tensor, text: TextContext, bottleneck_shape: tuple[int, int],
                levels: ProjectedValues, level_shapes: list[tuple[int, int]],
                ref_points: Tensor) -> tuple[Tensor, TextContext]:
        """
        bottleneck: (B, C, N) maps of B, channels first; pos: (C, N); text.tokens: (B, T, C);
        levels: {S3..S6} through cross_attn.value_proj (deform_attn.project_many; a canvas when sampling
        is lowered for export); ref_points: (N, 2) xy in [0, 1].
        Returns the enhanced bottleneck (B, C, N) and the text context after fusion.

        Channels first throughout: GroupNorm, the FFN (as W x + b), both deformable attentions and the
        image side of the fusion all read and write (B, C, N), so the block has no (B, N, C) <-> (B, C, N)
        transposes (the tokens-first layout needed two around every GroupNorm and attention: ~1 ms of
        the default model's exported graph). The position embedding goes to every attention as
        `query_pos` / `key_pos`: in the export it folds into the projections' constants, and
        bottleneck + pos is never formed.
        """
        if self.fusion is not None:
            bottleneck, text = self.fusion(bottleneck, pos, text, channels_first=True)  # Eq. 1a-1b
        batch = bottleneck.shape[0]
        ref = ref_points[None, :, None, :].expand(batch, -1, 1, -1)                # (B, N, 1, 2)
        attended = self.self_attn(bottleneck, ref, bottleneck, [bottleneck_shape], channels_first=True,
                                  query_channels_first=True, query_pos=pos)
        bottleneck = self.norm_self(bottleneck + attended, channels_first=True)    # Eq. 1c
        ref_levels = ref_points[None, :, None, :].expand(batch, -1, len(level_shapes), -1)  # (B, N, 4, 2)
        attended = self.cross_attn(bottleneck, ref_levels, levels, level_shapes, channels_first=True,
                                   query_channels_first=True, query_pos=pos)
        bottleneck = self.norm_cross(bottleneck + attended, channels_first=True)   # Eq. 1d
        bottleneck = self.norm_ffn(bottleneck + self.ffn(bottleneck, channels_first=True),
                                   channels_first=True)                             # Eq. 1e
        return bottleneck, text


class BottleneckPixelDecoder(nn.Module):
    """M bottleneck blocks on the stride-`bottleneck_stride` scale; optional multi-scale memory."""

    def __init__(self, dim: int, num_blocks: int, heads: int, points: int, ffn_dim: int,
                 bottleneck_stride: int = 16, text_fusion: bool = True, multi_scale_memory: bool = False):
        super().__init__()
        if bottleneck_stride not in _STRIDE_TO_LEVEL:
            raise ValueError(f"bottleneck_stride={bottleneck_stride}; choose one of {sorted(_STRIDE_TO_LEVEL)}")
        self.dim = dim
        self.stride = bottleneck_stride
        self.bottleneck_level = _STRIDE_TO_LEVEL[bottleneck_stride]
        self.multi_scale_memory = multi_scale_memory
        self.level_embed = nn.Parameter(torch.randn(4, dim) * 0.02)
        # The text tokens updated by the last block's Eq. 1b would never be read: it skips 1b.
        self.blocks = nn.ModuleList(BottleneckBlock(dim, heads, points, ffn_dim, text_fusion,
                                                    update_text=i < num_blocks - 1) for i in range(num_blocks))
        self.mask_head = MaskFeatureHead(dim, upsample=bottleneck_stride // 4)

    @property
    def reads_factored_first_level(self) -> bool:
        """S3 may come as a NormedProjection (InputProjection(factored_first=True)) unless it is B;
        `forward` forms it where it needs the map (eagerly, or as multi-scale decoder memory)."""
        return self.bottleneck_level != 0

    def forward(self, s2: Tensor | NormedProjection, pyramid: list[Tensor | NormedProjection],
                text: TextContext) -> PixelDecoderOutput:
        """s2: (B,C,H/4,W/4); pyramid: [S3,S4,S5,S6] each (B,C,h,w), S3 possibly factored; text
        tokens (B,T,C)."""
        if self.multi_scale_memory:   # the decoder attends to S3 itself: form it
            pyramid = _formed(pyramid)
        batch, dim, height, width = pyramid[self.bottleneck_level].shape
        level_shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in pyramid]
        device, dtype = pyramid[self.bottleneck_level].device, pyramid[self.bottleneck_level].dtype
        # Values carry their level embedding so the cross-attention can tell scales apart.
        embed = level_position_embeddings(level_shapes, dim, self.level_embed, device, dtype).transpose(0, 1)
        values: Tensor | deform_conv.ValueCanvas | deform_conv.SplitCanvas
        if deform_conv.is_lowered(height * width):
            # export: each level map gets its embedding and goes into one canvas that every block's
            # DeformConv reads (never flattened, concatenated and split again); a factored S3 is
            # projected from its input statistics and never formed (deform_conv.SplitCanvas)
            parts = embed.split([h * w for h, w in level_shapes], dim=1)
            levels = [f if isinstance(f, NormedProjection) else f + e.view(dim, h, w)
                      for f, e, (h, w) in zip(pyramid, parts, level_shapes)]
            if isinstance(levels[0], NormedProjection):
                values = deform_conv.SplitCanvas.from_levels(levels[0], parts[0], levels[1:])
            else:
                values = deform_conv.ValueCanvas.from_levels(levels)
        else:
            values = torch.cat([f.flatten(2) for f in _formed(pyramid)], dim=2) + embed        # (B, C, S)
        pos = sine_position_embedding(height, width, dim, device, dtype)
        pos = (pos + self.level_embed[self.bottleneck_level]).t()                     # (C, N)
        ref_points = reference_grid([(height, width)], device, dtype)
        bottleneck = pyramid[self.bottleneck_level].flatten(2)                        # (B, C, N)
        projected = project_many([block.cross_attn for block in self.blocks], values)
        for block, block_values in zip(self.blocks, projected):
            bottleneck, text = block(bottleneck, pos, text, (height, width), block_values, level_shapes, ref_points)
        enhanced = bottleneck.reshape(batch, dim, height, width)                      # B^
        memory = [enhanced]
        if self.multi_scale_memory:
            memory = [enhanced if i == self.bottleneck_level else f for i, f in enumerate(pyramid)]
        return PixelDecoderOutput(
            memory=memory,
            selection_tokens=bottleneck.transpose(1, 2),                              # (B, N, C)
            selection_anchors=token_anchors([(height, width)], [self.stride], device, dtype),
            mask_features=self.mask_head(enhanced, s2),
            text=text,
        )


def _formed(levels: list[Tensor | NormedProjection]) -> list[Tensor]:
    """The level maps, a factored one (NormedProjection) formed."""
    return [f.dense() if isinstance(f, NormedProjection) else f for f in levels]
