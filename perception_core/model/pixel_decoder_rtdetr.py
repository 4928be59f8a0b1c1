"""Baseline: RT-DETR hybrid encoder (Zhao et al. 2024) with GLEE-style text fusion (Tab. 1 row c).

AIFI: full self-attention only on the coarsest scale S5, preceded by bidirectional image-text
cross-attention on the S5 tokens. CCFM: a convolutional top-down then bottom-up fusion of
{S3, S4, S5} with CSP-RepVGG blocks. The decoder reads {P3, N4, N5} (multi-scale) or N4 (single).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import FFN, MultiHeadAttention, sine_position_embedding
from .neck import NormedProjection
from .pixel_decoder_common import MaskFeatureHead, PixelDecoderOutput, TextContext, TextFusion, token_anchors


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch)]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RepVggBlock(nn.Module):
    """3x3 and 1x1 conv branches summed (training form; both are plain convs, so export is direct)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv3 = _conv_bn_act(dim, dim, 3, act=False)
        self.conv1 = _conv_bn_act(dim, dim, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.conv3(x) + self.conv1(x))


class CspRepLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, depth: int = 1):
        super().__init__()
        self.branch_a = _conv_bn_act(in_ch, out_ch)
        self.branch_b = _conv_bn_act(in_ch, out_ch)
        self.blocks = nn.Sequential(*[RepVggBlock(out_ch) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.branch_a(x)) + self.branch_b(x)


class AifiLayer(nn.Module):
    """Text fusion + one post-norm transformer encoder layer on the S5 tokens."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, text_fusion: bool, update_text: bool):
        super().__init__()
        self.fusion = TextFusion(dim, heads, nn.LayerNorm(dim), update_text) if text_fusion else None
        self.self_attn = MultiHeadAttention(dim, heads)
        self.norm_self, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)

    def forward(self, tokens: Tensor, pos: Tensor, text: TextContext) -> tuple[Tensor, TextContext]:
        if self.fusion is not None:
            tokens, text = self.fusion(tokens, pos, text)
        tokens = self.norm_self(tokens + self.self_attn(tokens + pos, tokens + pos, tokens))
        return self.norm_ffn(tokens + self.ffn(tokens)), text


class RtDetrPixelDecoder(nn.Module):
    def __init__(self, dim: int, num_blocks: int, heads: int, ffn_dim: int, text_fusion: bool = True,
                 multi_scale_memory: bool = True, csp_depth: int = 1):
        super().__init__()
        self.multi_scale_memory = multi_scale_memory
        self.aifi = nn.ModuleList(AifiLayer(dim, heads, ffn_dim, text_fusion, update_text=i < num_blocks - 1)
                                  for i in range(num_blocks))
        self.lateral = nn.ModuleList([_conv_bn_act(dim, dim), _conv_bn_act(dim, dim)])  # for P5, P4
        self.top_down = nn.ModuleList([CspRepLayer(2 * dim, dim, csp_depth), CspRepLayer(2 * dim, dim, csp_depth)])
        self.downsample = nn.ModuleList([_conv_bn_act(dim, dim, 3, 2), _conv_bn_act(dim, dim, 3, 2)])
        self.bottom_up = nn.ModuleList([CspRepLayer(2 * dim, dim, csp_depth), CspRepLayer(2 * dim, dim, csp_depth)])
        self.mask_head = MaskFeatureHead(dim, upsample=2)

    def forward(self, s2: Tensor | NormedProjection, pyramid: list[Tensor], text: TextContext) -> PixelDecoderOutput:
        s3, s4, s5 = pyramid[:3]  # S6 is not used by RT-DETR
        batch, dim, h5, w5 = s5.shape
        tokens = s5.flatten(2).transpose(1, 2)
        pos = sine_position_embedding(h5, w5, dim, s5.device, s5.dtype)
        for layer in self.aifi:
            tokens, text = layer(tokens, pos, text)
        p5 = self.lateral[0](tokens.transpose(1, 2).reshape(batch, dim, h5, w5))
        up = F.interpolate(p5, size=s4.shape[-2:], mode="nearest")
        p4 = self.lateral[1](self.top_down[0](torch.cat([up, s4], dim=1)))
        up = F.interpolate(p4, size=s3.shape[-2:], mode="nearest")
        p3 = self.top_down[1](torch.cat([up, s3], dim=1))
        n4 = self.bottom_up[0](torch.cat([self.downsample[0](p3), p4], dim=1))
        n5 = self.bottom_up[1](torch.cat([self.downsample[1](n4), p5], dim=1))
        outputs = [p3, n4, n5]
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in outputs]
        return PixelDecoderOutput(
            memory=outputs if self.multi_scale_memory else [n4],
            selection_tokens=torch.cat([f.flatten(2).transpose(1, 2) for f in outputs], dim=1),
            selection_anchors=token_anchors(shapes, [8, 16, 32], s5.device, s5.dtype),
            mask_features=self.mask_head(p3, s2),
            text=text,
        )
