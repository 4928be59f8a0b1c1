"""Types and heads shared by all pixel decoders (ours and the baselines)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import MultiHeadAttention
from .neck import NormedProjection


class TextContext(NamedTuple):
    """Projected text tokens E_text of all prompts, flattened: tokens (B, P*T, C), padding (1, P*T) bool
    (True = padding token, ignored as attention key)."""
    tokens: Tensor
    padding: Tensor


class PixelDecoderOutput(NamedTuple):
    memory: list[Tensor]          # maps the transformer decoder attends to, each (B, C, h, w)
    selection_tokens: Tensor      # (B, S, C) candidate tokens for language-guided query selection
    selection_anchors: Tensor     # (S, 4) cxcywh in [0, 1], the anchor box of each candidate token
    mask_features: MaskFeatures   # the embedding map M (B, C, H/4, W/4), factored
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


class MaskFeatures(NamedTuple):
    """The per-pixel embedding map M = W (upsample(coarse) + fine) + b of Sec. 3.1, kept factored.

    Mask logits q . M are linear in M, and bilinear upsampling commutes with the 1x1 projection, so
    q . M = upsample((q W) . coarse) + (q W) . fine + q . b exactly: `read` never forms M. At stride 4
    that skips a C x C projection of every pixel (for mobius_nano at 384 px, 0.30 GFLOPs) and
    upsamples one channel per query instead of C. `dense` is M itself, for the training graph,
    where masks of every layer are read and M is formed once."""
    coarse: Tensor      # (B, C, h, w) the decoder's output scale
    fine: Tensor | NormedProjection  # (B, C, H, W) S2 at stride 4, dense or factored
    proj: nn.Conv2d     # the 1x1 projection W, b (a module, so no parameter is a graph output)

    @property
    def weight(self) -> Tensor:
        return self.proj.weight[:, :, 0, 0]          # (C, C)

    @property
    def bias(self) -> Tensor:
        return self.proj.bias

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of M: (B, C, H, W)."""
        return tuple(self.fine.shape)

    def dense(self) -> Tensor:
        fine = self.fine.dense() if isinstance(self.fine, NormedProjection) else self.fine
        up = F.interpolate(self.coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return F.conv2d(up + fine, self.weight[:, :, None, None], self.bias)

    def read(self, kernels: Tensor) -> Tensor:
        """(B, N, C) mask kernels -> (B, N, H, W) mask logits kernels . M."""
        batch, queries, _ = kernels.shape
        height, width = self.coarse.shape[-2:]
        projected = torch.matmul(kernels, self.weight)                                   # (B, N, C)
        low = torch.matmul(projected, self.coarse.flatten(2)).view(batch, queries, height, width)
        up = F.interpolate(low, size=self.fine.shape[-2:], mode="bilinear", align_corners=False)
        if isinstance(self.fine, NormedProjection):
            high = self.fine.read(projected)
        else:
            high = torch.matmul(projected, self.fine.flatten(2)).view_as(up)
        # (B, N, C) @ (C, 1): a matrix, not a vector, so onnxruntime also takes N = 0 (all pruned)
        return up + high + torch.matmul(kernels, self.bias[:, None])[..., None]


class MaskFeatureHead(nn.Module):
    """M = proj(upsample(coarse) + S2): the per-pixel embedding map masks are read from (Sec. 3.1),
    returned factored (`MaskFeatures`)."""

    def __init__(self, dim: int, upsample: int):
        super().__init__()
        self.upsample = upsample
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, coarse: Tensor, s2: Tensor | NormedProjection) -> MaskFeatures:
        return MaskFeatures(coarse, s2, self.proj)


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
