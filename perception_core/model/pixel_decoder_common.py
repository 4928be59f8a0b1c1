"""Types and heads shared by all pixel decoders (ours and the baselines)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import MultiHeadAttention


class TextContext(NamedTuple):
    """Projected text tokens E_text of all prompts, flattened: tokens (B, P*T, C), padding (1, P*T) bool
    (True = padding token, ignored as attention key)."""
    tokens: Tensor
    padding: Tensor


class PixelDecoderOutput(NamedTuple):
    memory: list[Tensor]          # maps the transformer decoder attends to, each (B, C, h, w)
    selection_tokens: Tensor      # (B, S, C) candidate tokens for language-guided query selection
    selection_anchors: Tensor     # (S, 4) cxcywh in [0, 1], the anchor box of each candidate token
    mask_features: Tensor         # (B, C, H/4, W/4) embedding map M
    text: TextContext             # text tokens after image-text fusion


class TextFusion(nn.Module):
    """Bidirectional image-text cross-attention (Eq. 1a-1b), shared by every pixel decoder:
    image tokens attend to the text tokens (residual + `image_norm`), then, if `update_text`, the
    text tokens attend to the image tokens (residual + LayerNorm). A decoder's last block passes
    update_text=False: text updated there would never be read."""

    def __init__(self, dim: int, heads: int, image_norm: nn.Module, update_text: bool):
        super().__init__()
        self.image_to_text = MultiHeadAttention(dim, heads)
        self.norm_image_text = image_norm
        self.update_text = update_text
        if update_text:
            self.text_to_image = MultiHeadAttention(dim, heads)
            self.norm_text = nn.LayerNorm(dim)

    def forward(self, image: Tensor, pos: Tensor, text: TextContext) -> tuple[Tensor, TextContext]:
        """image (B, N, C) with position embedding pos (N, C); text tokens (B, T, C)."""
        attended = self.image_to_text(image + pos, text.tokens, text.tokens, key_padding_mask=text.padding)
        fused = self.norm_image_text(image + attended)                                       # Eq. 1a
        if not self.update_text:
            return fused, text
        tokens = self.norm_text(text.tokens + self.text_to_image(text.tokens, image + pos, image))  # Eq. 1b
        return fused, TextContext(tokens, text.padding)


class MaskFeatureHead(nn.Module):
    """M = proj(upsample(coarse) + S2): the per-pixel embedding map masks are read from (Sec. 3.1)."""

    def __init__(self, dim: int, upsample: int):
        super().__init__()
        self.upsample = upsample
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, coarse: Tensor, s2: Tensor) -> Tensor:
        up = F.interpolate(coarse, size=s2.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj(up + s2)


def token_anchors(shapes: list[tuple[int, int]], strides: list[int], device=None,
                  dtype=torch.float32) -> Tensor:
    """DINO-style anchor per token: the cell centre with side 0.05 * stride / 8: (S, 4) cxcywh."""
    anchors = []
    for (height, width), stride in zip(shapes, strides):
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        side = torch.full_like(grid_x, 0.05 * stride / 8)
        anchors.append(torch.stack([grid_x, grid_y, side, side], dim=-1).reshape(-1, 4))
    return torch.cat(anchors, dim=0)
