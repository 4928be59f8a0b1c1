"""Types and heads shared by all pixel decoders (ours and the baselines)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import MultiHeadAttention, in_export_form
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

    def forward(self, image: Tensor, pos: Tensor, text: TextContext,
                channels_first: bool = False) -> tuple[Tensor, TextContext]:
        """image (B, N, C) with position embedding pos (N, C), or with `channels_first` image (B, C, N)
        and pos (C, N) (the bottleneck's layout: no transpose, `image_norm` must take `channels_first`);
        text tokens (B, T, C). The image comes back in its own layout."""
        cf = {"channels_first": True} if channels_first else {}
        attended = self.image_to_text(image, text.tokens, text.tokens, key_padding_mask=text.padding,
                                      query_channels_first=channels_first, query_pos=pos)
        fused = self.norm_image_text(image + attended, **cf)                                  # Eq. 1a
        if not self.update_text:
            return fused, text
        tokens = self.norm_text(text.tokens + self.text_to_image(text.tokens, image, image, key_pos=pos,
                                                                 kv_channels_first=channels_first))  # Eq. 1b
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
        """(B, N, C) kernels -> (B, N, H, W) mask logits kernels . M."""
        coarse, fine = self.read_split(kernels)
        return coarse + fine

    def read_split(self, kernels: Tensor) -> tuple[Tensor, Tensor]:
        """`read` as its two parts, (B, N, H, W) each, whose sum it is: the upsampled coarse part
        up((k W) . coarse) with every per-kernel constant, and the fine part (k W) . fine at each pixel
        (bottleneck reuse shifts the first to follow an object, runtime/motion.py).

        The per-kernel constants (q . b, and the factored S2's) are added at the coarse scale: the
        bilinear weights of every output pixel sum to 1, so upsampling carries them over unchanged,
        and a full-resolution add is saved. In the export form (layers.export_form) the upsampling is two
        small matmuls with `linear_resize_matrix` (onnxruntime's Resize took 0.34 ms for 20 masks of
        24 -> 96 px); eagerly, and so for count_flops, which counts no interpolation, F.interpolate."""
        batch, queries, _ = kernels.shape
        height, width = self.coarse.shape[-2:]
        out_height, out_width = self.fine.shape[-2:]
        projected = torch.matmul(kernels, self.weight)                                   # (B, N, C)
        # (B, N, C) @ (C, 1): a matrix, not a vector, so onnxruntime also takes N = 0 (all pruned)
        constant = torch.matmul(kernels, self.bias[:, None])                             # (B, N, 1)
        if isinstance(self.fine, NormedProjection):
            high, fine_constant = self.fine.read_parts(projected)                         # (B, N, H*W)
            constant = constant + fine_constant
        else:
            high = torch.matmul(projected, self.fine.flatten(2))
        low = (torch.matmul(projected, self.coarse.flatten(2)) + constant).view(batch, queries, height, width)
        if in_export_form():
            # rows expanded to (B, N, H, h): onnxruntime's MatMul will not broadcast a matrix over N = 0
            rows = linear_resize_matrix(height, out_height, low).expand(batch, queries, -1, -1)
            cols = linear_resize_matrix(width, out_width, low)                          # (W, w)
            up = torch.matmul(rows, torch.matmul(low, cols.t()))                        # (B, N, H, W)
        elif queries:
            up = F.interpolate(low, size=(out_height, out_width), mode="bilinear", align_corners=False)
        else:  # every query pruned: F.interpolate refuses zero channels
            up = low.new_zeros(batch, 0, out_height, out_width)
        return up, high.view(batch, queries, out_height, out_width)


def linear_resize_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """(size_out, size_in) U with U @ x the 1-D linear resize F.interpolate(align_corners=False) computes,
    so bilinear resizing of (..., h, w) maps is U_h @ x @ U_w^T. Each row holds the two weights of one
    output pixel (one at the clamped borders) and sums to 1. A constant of the exported graph."""
    eye = torch.eye(size_in, dtype=like.dtype, device=like.device)[:, None]             # (in, 1, in)
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[:, 0].t()


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
