"""Deformable-attention sampling exported as one ONNX DeformConv (opset 19).

The attention-weighted sum of bilinear samples that `deform_attn.deform_sample` takes over all
levels and points is a modulated deformable convolution (DCNv2) with depthwise all-ones weights:
taps = levels x points, offset groups = heads, modulation mask = attention weights. The levels are
packed into one canvas with zero rows and columns between neighbours, and every sampling
location is clamped to [-1, size] of its own level, where bilinear sampling with zero padding
already gives 0; so no sample reads a neighbouring level and the result is exact.

onnxruntime's DeformConv kernel plans each tap's bilinear corners once per offset group and reuses
the plan for every channel of the group; per deformable attention it replaces L grid_sample,
L multiply and L reduce nodes (bench/perf_profile.sampler_ab times the default model both ways).

The output of a convolution has a size fixed by its input and attributes, so this path needs a
static query count: the pixel decoders' queries (every token of a fixed-size image). The transformer
decoder's pruned, data-dependent queries keep grid_sample. `lowered_sampling()` switches it on for
an export (MSDeformAttn.forward asks `is_lowered`); training and eager inference never take it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import affine_channels_first

_STATE = {"lowered": False}


@dataclass(frozen=True)
class CanvasLayout:
    """Where the levels sit in the canvas. The first level (the largest, in the models) is the top-left
    block; the others sit side by side in a band below it, one zero row under the first level and one
    zero column between neighbours. Level 0 is thus copied in whole channel planes, and the band is
    small."""
    shapes: tuple[tuple[int, int], ...]
    origins: tuple[tuple[int, int], ...]   # (row, col) of each level's top-left pixel
    height: int
    width: int
    band_height: int                       # rows of the band, its top zero row included (0: one level)


@dataclass(frozen=True)
class ConvGeometry:
    """The convolution over the canvas whose output grid holds the queries."""
    out_hw: tuple[int, int]                # rows * cols = queries, row-major
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]        # ONNX order: top, left, bottom, right (only bottom/right used)


def canvas_layout(spatial_shapes: Sequence[tuple[int, int]]) -> CanvasLayout:
    (first_h, first_w), rest = spatial_shapes[0], spatial_shapes[1:]
    origins, column = [(0, 0)], 0
    for _, width in rest:
        origins.append((first_h + 1, column))
        column += width + 1
    band_height = max((h for h, _ in rest), default=-1) + 1
    return CanvasLayout(tuple((int(h), int(w)) for h, w in spatial_shapes), tuple(origins), first_h + band_height,
                        max(first_w, column - 1), band_height)


def _factor(queries: int) -> tuple[int, int]:
    """queries = rows * cols with rows the largest divisor <= sqrt(queries): small base positions keep
    the float32 offsets (location - base) precise."""
    rows = max(d for d in range(1, math.isqrt(queries) + 1) if queries % d == 0)
    return rows, queries // rows


def _fit(size: int, kernel: int, out: int) -> tuple[int, int]:
    """(stride, end pad) with floor((size + pad - kernel) / stride) + 1 == out, pad >= 0."""
    stride = max(1, -(-(size - kernel + 1) // out))
    pad = max(0, stride * (out - 1) - (size - kernel))
    assert (size + pad - kernel) // stride + 1 == out, (size, kernel, out, stride, pad)
    return stride, pad


def conv_geometry(layout: CanvasLayout, queries: int, taps: int) -> ConvGeometry:
    rows, cols = _factor(queries)
    stride_h, pad_h = _fit(layout.height, 1, rows)
    stride_w, pad_w = _fit(layout.width, taps, cols)
    return ConvGeometry((rows, cols), (stride_h, stride_w), (0, 0, pad_h, pad_w))


def to_canvas(value: Tensor, layout: CanvasLayout) -> Tensor:
    """(B, C, S) channels-first values of all levels -> (B, C, height, width) zero-gapped canvas."""
    batch, channels, _ = value.shape
    return levels_to_canvas([level.reshape(batch, channels, h, w) for level, (h, w)
                             in zip(value.split([h * w for h, w in layout.shapes], 2), layout.shapes)], layout)


def levels_to_canvas(levels: Sequence[Tensor], layout: CanvasLayout) -> Tensor:
    """[(B, C, H_l, W_l)] level maps -> (B, C, height, width) zero-gapped canvas."""
    first = levels[0]
    if first.shape[-1] < layout.width:
        first = F.pad(first, (0, layout.width - first.shape[-1]))
    if len(levels) == 1:
        return first
    return torch.cat([first, band_to_canvas(levels[1:], layout)], dim=2)


def band_to_canvas(levels: Sequence[Tensor], layout: CanvasLayout) -> Tensor:
    """[(B, C, H_l, W_l)] maps of levels 1.. -> (B, C, band_height, width): the canvas below level 0."""
    band = []
    for index, level in enumerate(levels, start=1):
        _, column = layout.origins[index]
        # the zero column after each level; the last one's pad fills the band to the canvas width
        right = 1 if index < len(levels) else layout.width - column - level.shape[-1]
        band.append(F.pad(level, (0, right, 1, layout.band_height - 1 - level.shape[-2])))
    return torch.cat(band, dim=3)


def _with_validity(canvas: Tensor, valid: Tensor) -> Tensor:
    """(B, C, h, w) canvas + its (1, 1, h, w) validity -> (B, C + 1, h * w)."""
    return torch.cat([canvas, valid.expand(canvas.shape[0], -1, -1, -1)], dim=1).flatten(2)


class ValueCanvas(NamedTuple):
    """Unprojected values of all levels in canvas layout, built once and read by several attentions
    (the bottleneck pixel decoder's blocks all cross-attend to the same levels). The last channel is
    1 on level pixels and 0 in the gaps, so `deform_attn.project_many` applies the value projections'
    biases as one more weight column and the gaps stay exactly zero: no per-attention canvas copy,
    no bias add."""
    tensor: Tensor                         # (B, C + 1, height * width)
    layout: CanvasLayout

    @staticmethod
    def from_levels(levels: Sequence[Tensor]) -> "ValueCanvas":
        """[(B, C, H_l, W_l)] unprojected level maps -> canvas with the validity channel."""
        layout = canvas_layout([(int(f.shape[-2]), int(f.shape[-1])) for f in levels])
        valid = to_canvas(levels[0].new_ones(1, 1, sum(h * w for h, w in layout.shapes)), layout)
        return ValueCanvas(_with_validity(levels_to_canvas(levels, layout), valid), layout)

    @staticmethod
    def build(value: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> "ValueCanvas":
        """(B, C, S) channels-first unprojected values -> canvas with the validity channel."""
        batch, channels, _ = value.shape
        sizes = [h * w for h, w in spatial_shapes]
        return ValueCanvas.from_levels([level.reshape(batch, channels, h, w) for level, (h, w)
                                        in zip(value.split(sizes, 2), spatial_shapes)])


class SplitCanvas(NamedTuple):
    """A ValueCanvas whose first level is not formed: it is a `neck.NormedProjection` GN(W x) plus a
    constant (C, H_0 * W_0) embedding, which each attention's value projection V reads as
    V GN(W x) + V e + b through the input statistics (C x Cin instead of C x C multiply-adds per
    pixel, and no GroupNorm pass); the band below it is a ValueCanvas-like (B, C + 1, band) tensor
    with its validity channel. `deform_attn.project_many` assembles each projected canvas."""
    first: object                          # neck.NormedProjection of level 0
    first_embedding: Tensor                # (C, H_0 * W_0)
    band: Tensor | None                    # (B, C + 1, band_height * width); None with one level
    layout: CanvasLayout

    @staticmethod
    def from_levels(first, first_embedding: Tensor, levels: Sequence[Tensor]) -> "SplitCanvas":
        """first: level 0 factored (B, C, H_0, W_0 by its .shape); levels: the other levels' maps,
        their embeddings added."""
        shapes = [tuple(int(d) for d in first.shape[-2:])] + [(int(f.shape[-2]), int(f.shape[-1])) for f in levels]
        layout = canvas_layout(shapes)
        if not levels:
            return SplitCanvas(first, first_embedding, None, layout)
        valid = band_to_canvas([first_embedding.new_ones(1, 1, h, w) for h, w in shapes[1:]], layout)
        return SplitCanvas(first, first_embedding, _with_validity(band_to_canvas(levels, layout), valid), layout)


def lowered_sample(query: Tensor, sampling_offsets: nn.Linear, attention_weights: nn.Linear, canvas: Tensor,
                   layout: CanvasLayout, reference_points: Tensor, heads: int, points: int,
                   query_channels_first: bool = False, query_pos: Tensor | None = None) -> Tensor:
    """MSDeformAttn's sampling with 2-d reference points through `mobius::deform_conv_sum`.

    Args:
        query: (B, Q, dim) with position embedding, or (B, dim, Q) with `query_channels_first` (no
            transpose then); query_pos: a position embedding to add to it, (Q, dim) or (dim, Q), folded
            into the linears' constants in the export form; sampling_offsets / attention_weights: the module's
            linears (offsets in pixels per (head, level, point, xy); weight logits per (head, level, point)).
        canvas: (B, heads * C_h, height, width) projected values in `layout` (`to_canvas`,
            `deform_attn.project_many`); reference_points: (B, Q, L, 2) xy in [0, 1].
    Returns:
        (B, heads * C_h, Q), what `deform_attn.deform_sample` returns.

    Offsets and weights are computed transposed, (B, heads, taps [x 2], Q), which is DeformConv's
    (group, tap, [y, x], rows, cols) order with the queries on the output grid: a free reshape, no
    transpose of either. The offset linear is applied with its rows reordered to (y, x) and the
    reference's canvas position minus DeformConv's base position folded into its bias, so it yields
    DeformConv offsets directly; the clamp to each level is two same-layout elementwise ops.
    """
    batch = query.shape[0]
    queries = query.shape[2] if query_channels_first else query.shape[1]
    levels = len(layout.shapes)
    taps = levels * points
    geometry = conv_geometry(layout, queries, taps)
    dtype, device = query.dtype, query.device
    columns = query if query_channels_first else query.transpose(1, 2)                      # (B, dim, Q)
    if query_pos is not None and not query_channels_first:
        query_pos = query_pos.t()                                                           # (dim, Q)
    # Each linear is one 2-D GEMM with the heads stacked in its rows (per-head batched GEMMs of 16 rows
    # ran at half the rate in onnxruntime); (B, heads * K [x 2], Q) views as (B, heads, K [x 2], Q).
    logits = affine_channels_first(attention_weights.weight, attention_weights.bias[:, None], columns, query_pos)
    weights = logits.view(batch, heads, taps, queries).softmax(2)                            # (B, heads, K, Q)
    size = torch.tensor(layout.shapes, dtype=dtype, device=device)                           # (L, 2) yx
    origin = torch.tensor(layout.origins, dtype=dtype, device=device)
    weight = sampling_offsets.weight.view(heads, levels, points, 2, -1).flip(3).reshape(heads * taps * 2, -1)
    bias = sampling_offsets.bias.view(heads, levels, points, 2).flip(3).reshape(heads * taps * 2, 1)
    rows, cols = geometry.out_hw
    base_y = torch.arange(rows, dtype=dtype, device=device) * geometry.strides[0] - geometry.pads[0]
    base_x = torch.arange(cols, dtype=dtype, device=device) * geometry.strides[1] - geometry.pads[1]
    base = torch.stack([base_y[:, None, None].expand(-1, cols, taps),
                        (base_x[:, None] + torch.arange(taps, dtype=dtype, device=device)).expand(rows, -1, -1)],
                       dim=-1)                                                                   # (rows, cols, K, yx)
    base = base.reshape(queries, taps * 2).t().repeat(heads, 1)                              # (heads*K*2, Q)
    start = reference_points.flip(-1) * size - 0.5 + origin                                  # (B, Q, L, yx)
    start = start[:, :, :, None].expand(-1, -1, -1, points, -1).reshape(batch, queries, taps * 2)
    # DeformConv's offsets from the output grid's base positions: the canvas position minus base, with
    # bias, reference and base in one constant, so the product gets one add
    constant = bias + start.transpose(1, 2).repeat(1, heads, 1) - base
    offset = affine_channels_first(weight, constant, columns, query_pos)
    if levels > 1:                                   # stay inside the level and its zero border
        per_row = lambda t: t[:, None].expand(-1, points, -1).reshape(-1, 1).repeat(heads, 1)   # noqa: E731
        offset = torch.minimum(torch.maximum(offset, per_row(origin - 1) - base), per_row(origin + size) - base)
    offset = offset.reshape(batch, heads * taps * 2, rows, cols)
    mask = weights.reshape(batch, heads * taps, rows, cols)
    out = torch.ops.mobius.deform_conv_sum(canvas, offset, mask, [1, taps], list(geometry.strides),
                                            list(geometry.pads), heads)
    return out.reshape(batch, canvas.shape[1], queries)


@torch.library.custom_op("mobius::deform_conv_sum", mutates_args=())
def deform_conv_sum(x: Tensor, offset: Tensor, mask: Tensor, kernel: list[int], strides: list[int],
                    pads: list[int], offset_group: int) -> Tensor:
    """ONNX DeformConv with depthwise all-ones weights, no bias, dilation 1: for every output position
    and channel, the mask-weighted sum over taps of bilinear samples (zero outside x) at
    base + offset, base = (row * stride_h - pad_top + ky, col * stride_w - pad_left + kx).
    x (B, C, H, W), offset (B, G*kh*kw*2, oh, ow) in (y, x) pairs, mask (B, G*kh*kw, oh, ow)."""
    batch, channels, height, width = x.shape
    _, _, rows, cols = offset.shape
    kh, kw = kernel
    taps, groups = kh * kw, offset_group
    offset = offset.reshape(batch, groups, taps, 2, rows, cols)
    ky = torch.arange(kh, dtype=x.dtype, device=x.device).repeat_interleave(kw)[:, None, None]
    kx = torch.arange(kw, dtype=x.dtype, device=x.device).repeat(kh)[:, None, None]
    y = offset[:, :, :, 0] + (torch.arange(rows, dtype=x.dtype, device=x.device)[:, None] * strides[0] - pads[0] + ky)
    x_ = offset[:, :, :, 1] + (torch.arange(cols, dtype=x.dtype, device=x.device) * strides[1] - pads[1] + kx)
    grid = torch.stack([(2 * x_ + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)   # (B, G, K, oh, ow, 2)
    sampled = F.grid_sample(x.reshape(batch * groups, channels // groups, height, width),
                            grid.reshape(batch * groups, taps, rows * cols, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=False)                    # (BG, C/G, K, oh*ow)
    out = (sampled * mask.reshape(batch * groups, 1, taps, rows * cols)).sum(2)
    return out.reshape(batch, channels, rows, cols)


@deform_conv_sum.register_fake
def _(x, offset, mask, kernel, strides, pads, offset_group):
    return x.new_empty(x.shape[0], x.shape[1], offset.shape[2], offset.shape[3])


def _onnx_deform_conv_sum(x, offset, mask, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                          offset_group: int):
    from onnxscript import opset19 as op

    channels = x.shape[1]
    ones = op.Expand(op.Constant(value_float=1.0), op.Constant(value_ints=[channels, 1, *kernel]))
    return op.DeformConv(x, ones, offset, None, mask, kernel_shape=list(kernel), strides=list(strides),
                           pads=list(pads), group=channels, offset_group=offset_group)


def onnx_translations() -> dict:
    """custom_translation_table entries for torch.onnx.export (opset >= 19)."""
    return {torch.ops.mobius.deform_conv_sum.default: _onnx_deform_conv_sum}


@contextlib.contextmanager
def lowered_sampling(enabled: bool = True) -> Iterator[None]:
    """Within this context MSDeformAttn samples through DeformConv wherever its query count is static."""
    previous = _STATE["lowered"]
    _STATE["lowered"] = enabled
    try:
        yield
    finally:
        _STATE["lowered"] = previous


def is_lowered(queries) -> bool:
    """True when MSDeformAttn should sample through DeformConv for this (possibly symbolic) query count."""
    return _STATE["lowered"] and isinstance(queries, int) and queries > 0
