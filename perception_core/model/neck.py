"""Input projection from backbone channels to the model width, shared by every pixel decoder.

Produces the lateral S2 map (for mask features) and the DINO-style pyramid {S3, S4, S5, S6}, where
S6 is S5 downsampled by a stride-2 convolution (MOBIUS Sec. 3.1).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv_norm


class NormedProjection(NamedTuple):
    """GroupNorm(W x) of a bias-free 1x1 convolution, kept factored (the S2 lateral map).

    S2 at stride 4 is only ever read through mask kernels k: k . GN(W x) at every pixel. Per group g,
    GN(y)_c = gamma_c (y_c - mu_g) / sigma_g + beta_c, and the group statistics of y = W x follow from
    the mean m and covariance K of x over the pixels (mu_g = mean over c in g of w_c . m, sigma_g^2 =
    mean over c in g of w_c^T K w_c + (w_c . m - mu_g)^2), so `read` is a (Cin)-channel dot product per
    pixel: (sum_c k_c gamma_c / sigma_g(c) w_c) . x + const, without forming the C-channel map."""
    inputs: Tensor          # x (B, Cin, H, W)
    conv: nn.Conv2d         # W, 1x1 without bias (modules, so no parameter is a graph output)
    norm: nn.GroupNorm

    @property
    def weight(self) -> Tensor:
        return self.conv.weight[:, :, 0, 0]          # (C, Cin)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        batch, _, height, width = self.inputs.shape
        return batch, self.weight.shape[0], height, width

    def dense(self) -> Tensor:
        """(B, C, H, W) GN(W x)."""
        return self.norm(F.conv2d(self.inputs, self.weight[:, :, None, None]))

    def read(self, kernels: Tensor) -> Tensor:
        """(B, N, C) kernels -> (B, N, H, W) kernels . GN(W x)."""
        pixel, constant = self.read_parts(kernels)
        return (pixel + constant).view(kernels.shape[0], -1, *self.inputs.shape[-2:])

    def read_parts(self, kernels: Tensor) -> tuple[Tensor, Tensor]:
        """`read` as its per-pixel part (B, N, H*W) and its per-kernel constant (B, N, 1), whose sum
        it is: a caller with another per-kernel constant adds both where it is cheapest."""
        scale, offset = self.group_affine()
        scaled = kernels * scale[:, None, :]                                       # (B, N, C)
        # k . (beta - gamma mu_g / sigma_g), as (B, N, 1) matmuls (onnxruntime also takes N = 0)
        constant = torch.matmul(kernels, offset[:, :, None])
        pixel = torch.matmul(torch.matmul(scaled, self.weight), self.inputs.flatten(2))  # (B, N, P)
        return pixel, constant

    def group_affine(self) -> tuple[Tensor, Tensor]:
        """GN(W x)_c = scale_c (w_c . x) + offset_c at every pixel: scale = gamma_c / sigma_g(c) and
        offset = beta_c - scale_c mu_g(c), (B, C) each, from the mean and covariance of x."""
        batch, channels, _, _ = self.shape
        groups = self.norm.num_groups
        x = self.inputs.flatten(2)                                                  # (B, Cin, P)
        mean = x.mean(-1)                                                           # (B, Cin)
        centered = x - mean[..., None]
        covariance = torch.matmul(centered, centered.transpose(1, 2)) / x.shape[-1]  # (B, Cin, Cin)
        y_mean = torch.matmul(mean, self.weight.t())                               # (B, C)
        y_var = (torch.matmul(self.weight, covariance) * self.weight).sum(-1)      # (B, C)
        group_mean = y_mean.view(batch, groups, -1).mean(-1, keepdim=True)         # (B, G, 1)
        spread = (y_mean.view(batch, groups, -1) - group_mean) ** 2
        group_var = (y_var.view(batch, groups, -1) + spread).mean(-1, keepdim=True)
        inverse = torch.rsqrt(group_var + self.norm.eps)                           # (B, G, 1)
        scale = (self.norm.weight.view(groups, -1) * inverse).view(batch, channels)  # gamma_c / sigma_g
        shift = group_mean.expand_as(spread).reshape(batch, channels)             # mu_g per channel
        return scale, self.norm.bias - scale * shift

    def project(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> list[Tensor]:
        """[V GN(W x) + b] for each (Cout, C) matrix V and (Cout, P) or (Cout, 1) bias b: (B, Cout, P)
        each, as one (Cout, Cin + 1) matmul per V on x with a row of ones, (V diag(scale) W | V offset),
        so the C-channel map is never formed (C x Cin instead of C x C multiply-adds per pixel and V).
        The statistics are taken once for all V."""
        scale, offset = self.group_affine()
        x = self.inputs.flatten(2)
        x = torch.cat([x, x.new_ones(x.shape[0], 1, x.shape[2])], dim=1)           # (B, Cin + 1, P)
        outs = []
        for weight, bias in zip(weights, biases):
            folded = torch.matmul(weight * scale[:, None, :], self.weight)         # (B, Cout, Cin)
            constant = torch.matmul(weight, offset[:, :, None])                    # (B, Cout, 1)
            outs.append(torch.matmul(torch.cat([folded, constant], dim=2), x) + bias)
        return outs


class InputProjection(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int, int], dim: int):
        super().__init__()
        c2, c3, c4, c5 = in_channels
        self.s2 = conv_norm(c2, dim)
        self.levels = nn.ModuleList([conv_norm(c3, dim), conv_norm(c4, dim), conv_norm(c5, dim)])
        self.s6 = conv_norm(c5, dim, kernel=3, stride=2)

    def forward(self, features: list[Tensor], factored_first: bool = False
                ) -> tuple[NormedProjection, list[Tensor | NormedProjection]]:
        """[S2..S5] backbone maps -> (S2 projected (B,C,H/4,W/4), factored, see `NormedProjection`;
        [S3, S4, S5, S6] each (B,C,h,w)). With `factored_first`, S3 is a `NormedProjection` too: for
        a pixel decoder that reads it only through linear maps (BottleneckPixelDecoder's value
        projections)."""
        s2, s3, s4, s5 = features
        s3_conv, s3_norm = self.levels[0]
        pyramid = [NormedProjection(s3, s3_conv, s3_norm) if factored_first else self.levels[0](s3),
                   self.levels[1](s4), self.levels[2](s5), self.s6(s5)]
        return self.lateral(s2), pyramid

    def lateral(self, s2: Tensor) -> NormedProjection:
        """The backbone's stride-4 map -> the projected S2, factored (all that mask features read at
        stride 4)."""
        conv, norm = self.s2
        return NormedProjection(s2, conv, norm)
