"""Input projection from backbone channels to the model width, shared by every pixel decoder.

Produces the lateral S2 map (for mask features) and the DINO-style pyramid {S3, S4, S5, S6}, where
S6 is S5 downsampled by a stride-2 convolution (MOBIUS Sec. 3.1).
"""
from __future__ import annotations

from torch import Tensor, nn

from .layers import conv_norm


class InputProjection(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int, int], dim: int):
        super().__init__()
        c2, c3, c4, c5 = in_channels
        self.s2 = conv_norm(c2, dim)
        self.levels = nn.ModuleList([conv_norm(c3, dim), conv_norm(c4, dim), conv_norm(c5, dim)])
        self.s6 = conv_norm(c5, dim, kernel=3, stride=2)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """[S2..S5] backbone maps -> (S2 projected (B,C,H/4,W/4), [S3, S4, S5, S6] each (B,C,h,w))."""
        s2, s3, s4, s5 = features
        pyramid = [proj(f) for proj, f in zip(self.levels, (s3, s4, s5))]
        pyramid.append(self.s6(s5))
        return self.s2(s2), pyramid
