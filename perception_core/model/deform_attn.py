"""Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2021) in pure PyTorch.

`deform_sample` is the export path, laid out for onnxruntime's CPU kernels: values stay channels-first
(B*heads, C_h, H_l, W_l) so each level is a free reshape of the projected (B, C, S) values; the
per-head sampling offsets and attention weights come from one batched matmul each, already in
(B, heads, Q, ...) order; and the attention-weighted sum is taken level by level in grid_sample's own
(B*heads, C_h, Q, P) layout (multiply, sum over P), so no (B*heads, Q, C_h, L*P) tensor is ever
concatenated or permuted (bench/perf_profile.deform_layout measured that concat + permute at a
quarter of the sampling time). `ms_deform_attn_core` keeps Deformable-DETR's reference contract
(values (B, S, heads, C_h), locations in [0, 1]) on top of it; `ms_deform_attn_naive` is a slow,
loop-based implementation used only by the float64 parity test.

Coordinates: reference points and sampling locations are normalized to [0, 1] in (x, y) order over
the *valid* extent of each level; (0, 0) is the top-left corner of the top-left pixel.

For ONNX export with a static query count, `MSDeformAttn` can instead sample through one DeformConv
(model/deform_conv.py, inside `deform_conv.lowered_sampling()`): same result, fewer and faster nodes.
`MSDeformAttn.sample_first` samples a single-level memory before value_proj (with a ones channel for
the bias): the deployed decoder's pruned layers, whose projection cost then follows the kept queries.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import deform_conv
from .layers import in_export_form, linear_channels_first


def deform_sample(value: Tensor, spatial_shapes: list[tuple[int, int]], grids: Tensor, weights: Tensor) -> Tensor:
    """Bilinear samples of every level, weighted and summed.

    Args:
        value: (B, heads * C_h, S) values of all levels, channels first, S = sum(H_l * W_l).
        spatial_shapes: [(H_l, W_l)] per level, python ints (static for export).
        grids: (B, heads, Q, L, P, 2) sampling locations in grid_sample's [-1, 1] (x, y).
        weights: (B, heads, Q, L * P) attention weights (softmax over L * P).
    Returns:
        (B, heads * C_h, Q)
    """
    batch, heads, queries, levels, points, _ = grids.shape
    head_dim = value.shape[1] // heads
    # one level (the decoder's single memory): no split, which onnxruntime would copy
    value_levels = value.split([h * w for h, w in spatial_shapes], dim=2) if levels > 1 else [value]
    grids = grids.reshape(batch * heads, queries, levels, points, 2)
    weights = weights.reshape(batch * heads, 1, queries, levels, points)
    total = None
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, heads * C_h, H*W) -> (B*heads, C_h, H, W): a view, heads are whole channel blocks
        value_l = value_levels[level].reshape(batch * heads, head_dim, height, width)
        sampled = F.grid_sample(value_l, grids[:, :, level], mode="bilinear", padding_mode="zeros",
                                align_corners=False)                          # (B*heads, C_h, Q, P)
        part = (sampled * weights[:, :, :, level]).sum(-1)                    # (B*heads, C_h, Q)
        total = part if total is None else total + part
    return total.reshape(batch, heads * head_dim, queries)


def ms_deform_attn_core(value: Tensor, spatial_shapes: list[tuple[int, int]],
                        sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Deformable-DETR's reference contract on top of `deform_sample`.

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
    grids = (2 * sampling_locations - 1).transpose(1, 2)
    weights = attention_weights.transpose(1, 2).reshape(batch, heads, queries, levels * points)
    out = deform_sample(value.flatten(2).transpose(1, 2), spatial_shapes, grids, weights)
    return out.transpose(1, 2)


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


def _per_head(query: Tensor, linear: nn.Linear, heads: int, scale: Tensor | None = None,
              shift: Tensor | None = None) -> Tensor:
    """`linear(query)` split into heads, as one batched matmul: (B, Q, C) -> (B, heads, Q, K / heads).
    `scale` (K,) multiplies the output columns, folded into the weights; `shift` (B, 1, Q, K / heads)
    is added to the bias first (with constant reference points the export folds both into constants,
    leaving one matmul and one same-shape add)."""
    weight, bias = linear.weight, linear.bias
    if scale is not None:
        weight, bias = weight * scale[:, None], bias * scale
    per_head = weight.shape[0] // heads
    weight = weight.reshape(heads, per_head, weight.shape[1]).transpose(1, 2)        # (heads, C, K/heads)
    bias = bias.reshape(heads, 1, per_head)
    return torch.matmul(query[:, None], weight) + (bias if shift is None else bias + shift)


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

    def project_values(self, value: Tensor, channels_first: bool = False) -> Tensor:
        """value_proj of (B, S, dim) tokens, or of (B, dim, S) channels-first maps (a 1x1 convolution
        written as a matmul, so no transpose is needed): (B, dim, S) either way."""
        if channels_first:
            return linear_channels_first(self.value_proj, value)
        return self.value_proj(value).transpose(1, 2)

    def _projected(self, value: "Tensor | ProjectedValues", channels_first: bool) -> Tensor:
        if isinstance(value, ProjectedValues):
            if value.layout is not None:
                raise ValueError("a projected canvas is only read when sampling is lowered (deform_conv)")
            return value.tensor
        return self.project_values(value, channels_first)

    def forward(self, query: Tensor, reference_points: Tensor, value: "Tensor | ProjectedValues",
                spatial_shapes: list[tuple[int, int]], channels_first: bool = False,
                query_channels_first: bool = False, query_pos: Tensor | None = None) -> Tensor:
        """
        Args:
            query: (B, Q, dim) with position embedding already added, or `query_pos` (Q, dim) to add;
                with `query_channels_first`, (B, dim, Q) (the bottleneck's maps) and query_pos (dim, Q),
                and the result is (B, dim, Q) too. Lowered, query_pos folds into the offset and weight
                linears' constants in the export (layers.affine_channels_first).
            reference_points: (B, Q, L, 2) points in [0, 1] xy, or (B, Q, L, 4) boxes cxcywh in [0, 1]
                (offsets are then scaled by half the box size, as in Deformable-DETR's 2-stage mode).
            value: (B, S, dim) flattened features of all levels, S = sum(H_l * W_l); with
                `channels_first`, (B, dim, S) (the levels' (B, dim, H_l, W_l) maps flattened); or
                `ProjectedValues` from `project_many` (a canvas only when sampling is lowered).
            spatial_shapes: [(H_l, W_l)] python ints.
        Returns:
            (B, Q, dim), or (B, dim, Q) with `query_channels_first`.
        """
        out = self._sample(query, reference_points, value, spatial_shapes, channels_first, query_channels_first,
                           query_pos)
        if query_channels_first:
            return linear_channels_first(self.output_proj, out)
        return self.output_proj(out.transpose(1, 2))

    def _sample(self, query: Tensor, reference_points: Tensor, value: "Tensor | ProjectedValues",
                spatial_shapes: list[tuple[int, int]], channels_first: bool, query_channels_first: bool,
                query_pos: Tensor | None) -> Tensor:
        """The attention-weighted samples before output_proj: (B, dim, Q)."""
        queries = query.shape[2] if query_channels_first else query.shape[1]
        heads, levels, points = self.heads, self.levels, self.points
        if reference_points.shape[-1] == 2 and deform_conv.is_lowered(queries):
            if isinstance(value, ProjectedValues) and value.layout is not None:
                canvas, layout = value.tensor, value.layout
            else:
                layout = deform_conv.canvas_layout(spatial_shapes)
                canvas = deform_conv.to_canvas(self._projected(value, channels_first), layout)
            return deform_conv.lowered_sample(query, self.sampling_offsets, self.attention_weights, canvas, layout,
                                              reference_points, heads, points, query_channels_first, query_pos)
        if query_pos is not None:
            query = query + query_pos
        if query_channels_first:
            query = query.transpose(1, 2)
        batch = query.shape[0]
        weights = _per_head(query, self.attention_weights, heads).softmax(-1)   # (B, heads, Q, L*P)
        value = self._projected(value, channels_first)
        if reference_points.shape[-1] == 2:
            # grid = 2 * (reference + offset / (W_l, H_l)) - 1: the 2 / size factor goes into the weights
            scale = torch.tensor([[2.0 / w, 2.0 / h] for h, w in spatial_shapes], dtype=query.dtype,
                                 device=query.device)
            scale = scale[None, :, None, :].expand(heads, levels, points, 2).reshape(-1)
            base = (2 * reference_points - 1)[:, None, :, :, None]                  # (B, 1, Q, L, 1, 2)
            base = base.expand(-1, -1, -1, -1, points, -1).reshape(base.shape[0], 1, queries, -1)
            grids = _per_head(query, self.sampling_offsets, heads, scale, base)
            grids = grids.view(batch, heads, queries, levels, points, 2)
        elif reference_points.shape[-1] == 4:
            grids = self._box_grids(query, reference_points)
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")
        return deform_sample(value, spatial_shapes, grids, weights)             # (B, dim, Q)

    def _box_grids(self, query: Tensor, boxes: Tensor) -> Tensor:
        """Sampling locations around reference boxes (B, Q, L, 4) cxcywh in [0, 1], in grid_sample's
        [-1, 1]: 2 * (centre + offset / P * half size) - 1, (B, heads, Q, L, P, 2)."""
        batch, queries = query.shape[:2]
        offsets = _per_head(query, self.sampling_offsets, self.heads).view(batch, self.heads, queries, self.levels,
                                                                           self.points, 2)
        base = (2 * boxes[..., :2] - 1)[:, None, :, :, None]                        # (B, 1, Q, L, 1, 2)
        sizes = (boxes[..., 2:] / self.points)[:, None, :, :, None]
        return base + offsets * sizes

    def sample_first(self, query: Tensor, boxes: Tensor, memory: "SampledMemory") -> Tensor:
        """Single-level attention around reference boxes that samples the memory before value_proj:
        bilinear sampling (zero padding), the attention-weighted sum and value_proj are all linear, so
        value_proj(x) sampled = W (x sampled) + b (ones sampled), and the ones channel of
        `memory.maps` carries b (and W e for the level embedding e) exactly, also where taps fall
        outside the map. value_proj then costs Q * C * (C + 1) multiply-adds instead of S * C * C
        for the whole memory of S tokens, and pruning shrinks it with Q (docs/MODEL.md).

        query: (B, Q, dim) with the position embedding added; boxes: (B, Q, 4) cxcywh in [0, 1].
        Returns (B, Q, dim), equal to forward() on the memory with its level embedding."""
        if self.levels != 1:
            raise ValueError(f"sample_first reads one memory level; this attention has {self.levels}")
        batch, queries = query.shape[:2]
        heads, points = self.heads, self.points
        channels = memory.maps.shape[1]                                              # C + 1
        weights = _per_head(query, self.attention_weights, heads).softmax(-1)       # (B, heads, Q, P)
        grids = self._box_grids(query, boxes[:, :, None]).reshape(batch, heads, queries * points, 2)
        sampled = F.grid_sample(memory.maps, grids, mode="bilinear", padding_mode="zeros",
                                align_corners=False)                                # (B, C + 1, heads, Q * P)
        pooled = (sampled.view(batch, channels, heads, queries, points) * weights[:, None]).sum(-1)
        # (B, C + 1, heads, Q) -> (B, heads, Q, C + 1); merging heads and Q first also pins the rank
        # where no query is kept (onnxruntime's ReduceSum of an empty tensor keeps the summed axis)
        pooled = pooled.reshape(batch, channels, heads * queries).transpose(1, 2).reshape(batch, heads, queries,
                                                                                         channels)
        projection = memory.weight.view(heads, self.dim // heads, channels).transpose(1, 2)   # (heads, C+1, C_h)
        out = torch.matmul(pooled, projection)                                      # (B, heads, Q, C_h)
        return self.output_proj(out.transpose(1, 2).reshape(batch, queries, self.dim))


class ProjectedValues(NamedTuple):
    """Values already through an attention's value_proj (`project_many`): (B, dim, S) channels first,
    or a (B, dim, height, width) canvas in `layout` for the lowered (DeformConv) path."""
    tensor: Tensor
    layout: deform_conv.CanvasLayout | None = None


def project_many(attentions: Sequence[MSDeformAttn], value: "Tensor | deform_conv.ValueCanvas",
                 embedding: Tensor | None = None) -> list[ProjectedValues]:
    """Every attention's value_proj of the same values: the transformer decoder's layers all read the
    same memory, the bottleneck blocks the same levels. `value` is (B, C, S) channels first, plus an
    optional constant `embedding` (C, S) (folded into each projection's bias in the export's form,
    layers.affine_channels_first), or a ValueCanvas built once. One matmul per attention:
    onnxruntime's Split of a joint result would copy every projection once more."""
    if isinstance(value, deform_conv.SplitCanvas):
        return _project_split(attentions, value, embedding)
    if not isinstance(value, deform_conv.ValueCanvas):
        if in_export_form() and (embedding is None or embedding.shape[-1] == 1):
            # the same constant W e + b at every position: one more weight column, and a row of ones
            # under x built once for all attentions, instead of one bias add per attention
            ones = torch.cat([value, value.new_ones(value.shape[0], 1, value.shape[-1])], dim=1)
            return [ProjectedValues(torch.matmul(_with_bias_column(a, embedding), ones)) for a in attentions]
        return [ProjectedValues(linear_channels_first(a.value_proj, value, embedding)) for a in attentions]
    if embedding is not None:
        raise ValueError("a ValueCanvas carries its level embeddings already")
    layout, batch = value.layout, value.tensor.shape[0]
    return [ProjectedValues(torch.matmul(_with_bias_column(a), value.tensor).reshape(batch, -1, layout.height,
                                                                               layout.width), layout)
            for a in attentions]


class SampledMemory(NamedTuple):
    """A single-level memory for `MSDeformAttn.sample_first`: `maps` (B, C + 1, H, W) the memory with a
    channel of ones last, `weight` (C, C + 1) one attention's [W | W e + b] (`memory_for_sampling`)."""
    maps: Tensor
    weight: Tensor


def memory_for_sampling(attentions: Sequence[MSDeformAttn], memory: Tensor, embedding: Tensor
                        ) -> list[SampledMemory]:
    """The decoder's single memory map (B, C, H, W) with a channel of ones, shared by all attentions,
    and each attention's value projection with its level embedding (C, 1) as a bias column."""
    batch, _, height, width = memory.shape
    maps = torch.cat([memory, memory.new_ones(batch, 1, height, width)], dim=1)
    return [SampledMemory(maps, _with_bias_column(a, embedding)) for a in attentions]


def _with_bias_column(attention: MSDeformAttn, embedding: Tensor | None = None) -> Tensor:
    """(C, C + 1): the value projection's weight W with W e + b as one more column, for inputs with a
    row of ones (or a validity channel) under them; e a (C, 1) embedding, or none."""
    proj = attention.value_proj
    bias = proj.bias[:, None] if embedding is None else _embedded_bias(attention, embedding)
    return torch.cat([proj.weight, bias], dim=1)


def _embedded_bias(attention: MSDeformAttn, embedding: Tensor) -> Tensor:
    """W e + b: the value projection of a constant (C, S) or (C, 1) embedding, (C, S) or (C, 1)."""
    return torch.matmul(attention.value_proj.weight, embedding) + attention.value_proj.bias[:, None]


def _project_split(attentions: Sequence[MSDeformAttn], value: "deform_conv.SplitCanvas",
                   embedding: Tensor | None) -> list[ProjectedValues]:
    """project_many of a SplitCanvas: level 0 through its input statistics (NormedProjection.project,
    the embedding's projection V e + b a constant), the band as one matmul with the bias column, and
    the two stacked into each attention's canvas."""
    if embedding is not None:
        raise ValueError("a SplitCanvas carries its level embeddings already")
    layout, first = value.layout, value.first
    batch, _, height, width = first.shape
    weights = [a.value_proj.weight for a in attentions]
    biases = [_embedded_bias(a, value.first_embedding) for a in attentions]        # V e + b, constants
    firsts = first.project(weights, biases)
    out = []
    for attention, projected in zip(attentions, firsts):
        canvas = projected.view(batch, -1, height, width)
        if width < layout.width:
            canvas = F.pad(canvas, (0, layout.width - width))
        if value.band is not None:
            band = torch.matmul(_with_bias_column(attention), value.band)
            canvas = torch.cat([canvas, band.view(batch, -1, layout.band_height, layout.width)], dim=2)
        out.append(ProjectedValues(canvas, layout))
    return out
