"""Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2021) in pure PyTorch.

`ms_deform_attn_core` is the reference implementation and the ONNX export path: bilinear sampling
with `grid_sample` followed by an attention-weighted sum written as a batched matmul (so FLOP
counters see it and onnxruntime runs it as one MatMul). `ms_deform_attn_naive` is a slow, loop-based
implementation used only by the float64 parity test.

Coordinates: reference points and sampling locations are normalized to [0, 1] in (x, y) order over
the *valid* extent of each level; (0, 0) is the top-left corner of the top-left pixel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn_core(value: Tensor, spatial_shapes: list[tuple[int, int]],
                        sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Deformable attention over several feature levels.

    Args:
        value: (B, S, heads, C_h) values of all levels flattened and concatenated, S = sum(H_l*W_l).
        spatial_shapes: [(H_l, W_l)] per level, python ints (static for export).
        sampling_locations: (B, Q, heads, L, P, 2) in [0, 1], xy.
        attention_weights: (B, Q, heads, L, P), softmax-normalized over L*P.
    Returns:
        (B, Q, heads * C_h)
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    value_levels = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, heads, C_h) -> (B*heads, C_h, H, W)
        value_l = value_levels[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # -> (B*heads, C_h, Q, P)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    # (B*heads, C_h, Q, L*P) -> (B*heads, Q, C_h, L*P)
    stacked = torch.cat(sampled, dim=-1).permute(0, 2, 1, 3)
    # (B, Q, heads, L, P) -> (B*heads, Q, L*P, 1)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, queries, levels * points, 1)
    output = torch.matmul(stacked, weights)  # (B*heads, Q, C_h, 1)
    # (B*heads, Q, C_h) -> (B, Q, heads*C_h)
    return output.reshape(batch, heads, queries, head_dim).transpose(1, 2).reshape(batch, queries, heads * head_dim)


def ms_deform_attn_naive(value: Tensor, spatial_shapes: list[tuple[int, int]],
                         sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Loop-based bilinear sampling with zero padding; same contract as `ms_deform_attn_core`."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    output = value.new_zeros(batch, queries, heads, head_dim)
    starts = [0]
    for height, width in spatial_shapes:
        starts.append(starts[-1] + height * width)
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                for lvl, (height, width) in enumerate(spatial_shapes):
                    level_value = value[b, starts[lvl]:starts[lvl + 1], h].reshape(height, width, head_dim)
                    for p in range(points):
                        x, y = sampling_locations[b, q, h, lvl, p].tolist()
                        sample = _bilinear(level_value, x * width - 0.5, y * height - 0.5)
                        output[b, q, h] += attention_weights[b, q, h, lvl, p] * sample
    return output.reshape(batch, queries, heads * head_dim)


def _bilinear(feature: Tensor, x: float, y: float) -> Tensor:
    height, width, _ = feature.shape
    x0, y0 = math.floor(x), math.floor(y)
    result = feature.new_zeros(feature.shape[-1])
    for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                result = result + wy * wx * feature[yi, xi]
    return result


class MSDeformAttn(nn.Module):
    """Deformable attention module: queries attend to `points` learned offsets per head and level.

    With one level it is the deformable self-attention of Eq. 1c and the single-scale decoder;
    with four levels it is the multi-scale cross-attention of Eq. 1d.
    """

    def __init__(self, dim: int, levels: int, heads: int = 8, points: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        # Initial offsets point in `heads` evenly spaced directions, growing with the point index.
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: list[tuple[int, int]]) -> Tensor:
        """
        Args:
            query: (B, Q, dim) with position embedding already added.
            reference_points: (B, Q, L, 2) points in [0, 1] xy, or (B, Q, L, 4) boxes cxcywh in [0, 1]
                (offsets are then scaled by half the box size, as in Deformable-DETR's 2-stage mode).
            value: (B, S, dim) flattened features of all levels, S = sum(H_l * W_l).
            spatial_shapes: [(H_l, W_l)] python ints.
        Returns:
            (B, Q, dim)
        """
        batch, queries, _ = query.shape
        head_dim = self.dim // self.heads
        value = self.value_proj(value).view(batch, -1, self.heads, head_dim)
        offsets = self.sampling_offsets(query).view(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            # (B, Q, L, 2) -> (B, Q, 1, L, 1, 2)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            centers = reference_points[:, :, None, :, None, :2]
            half_sizes = reference_points[:, :, None, :, None, 2:] * 0.5
            locations = centers + offsets / self.points * half_sizes
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights))
