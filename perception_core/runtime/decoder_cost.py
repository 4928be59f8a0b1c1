"""Analytic FLOPs of the transformer decoder for one frame, from the queries each layer processed.

Counts what `model/flops.py` counts (matmuls, linear layers, grid_sample taps; 2 FLOPs per MAC) for
the deployment graph: per layer the query MLP of the position embedding, self-attention, deformable
cross-attention (offsets, weights, sampling, value projection, output projection), FFN, box
refinement and class logits; masks after the last layer: the mask embedding MLP and the
factored read of q . M (pixel_decoder_common.MaskFeatures.read, neck.NormedProjection.read).
Query selection is not included. Accuracy against FlopCounterMode is tested in tests/test_processor.py.

The value projection follows the deployment graph: with one memory level (MOBIUS) the layers after
the first sample the memory and project the samples (MSDeformAttn.sample_first: C + 1 channels per
head and tap, then C x (C + 1) per query); the first layer, and every layer of a multi-level decoder
(the MaskDINO-style baseline), project the whole memory first (S x C x C, whatever the query count).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

GIGA = 1e9


@dataclass(frozen=True)
class DecoderShape:
    dim: int              # C
    ffn_dim: int          # FFN hidden width
    heads: int
    points: int           # sampling points per head and level
    levels: int           # memory levels the decoder attends to (1 for MOBIUS)
    memory_tokens: int    # S: tokens of the memory (bottleneck at stride 16: (size/16)^2)
    mask_pixels: int      # (size/4)^2
    coarse_pixels: int = 0   # pixels of the map upsampled into M (the bottleneck B^)
    fine_channels: int = 0   # channels of the backbone's stride-4 map x (S2 = GroupNorm(W x))

    @staticmethod
    def from_config(cfg, size: int) -> "DecoderShape":
        from ..model.backbone_specs import stage_channels

        stride = cfg.pixel_decoder.bottleneck_stride
        levels = cfg.memory_levels
        tokens = sum((size // s) ** 2 for s in ((8, 16, 32, 64)[:levels] if levels > 1 else (stride,)))
        dec = cfg.decoder
        # the map each pixel decoder's MaskFeatureHead upsamples: B^ for ours, the stride-8 level for the baselines
        coarse = {"bottleneck": stride, "maskdino": 8, "rtdetr": 8}.get(cfg.pixel_decoder.type, stride)
        fine = stage_channels(cfg.backbone.variant, cfg.backbone.width_multiplier)[0]
        return DecoderShape(cfg.hidden_dim, dec.ffn_dim, dec.heads, dec.points, levels, tokens, (size // 4) ** 2,
                            (size // coarse) ** 2, fine)


def layer_flops(shape: DecoderShape, queries: int, prompts: int, sample_first: bool = False) -> float:
    """One decoder layer step on `queries` queries (class logits against `prompts` prompts);
    `sample_first`: the layer samples the memory before projecting it (a ones channel per level
    carries the biases: C + 1 channels per tap, C x (C + levels) per query and head block)."""
    n, c = queries, shape.dim
    samples = shape.heads * shape.levels * shape.points
    macs = n * (2 * c * c + c * c)                     # ref_point_head MLP(2C, C, C)
    macs += 4 * n * c * c + 2 * n * n * c              # self-attention projections, QK^T and AV
    macs += n * c * samples * 3 + n * c * c            # offsets (x, y), weights, output projection
    if sample_first:                                   # sample, then project (MSDeformAttn.sample_first)
        macs += 5 * n * (c + 1) * samples              # taps of C + 1 channels per head, weighted sum
        macs += n * c * (c + shape.levels)             # value projection of the pooled samples
    else:
        macs += shape.memory_tokens * c * c            # value projection of the memory
        macs += 5 * n * c * shape.levels * shape.points  # bilinear taps (grid_sample), weighted sum
    macs += 2 * n * c * shape.ffn_dim                  # FFN
    macs += n * (2 * c * c + 4 * c)                    # box head MLP(C, C, 4)
    macs += n * (c * c + prompts * c)                  # classifier projection and cosine logits
    return 2.0 * macs


def mask_flops(shape: DecoderShape, queries: int) -> float:
    """Mask embedding MLP(C, C, C) and the factored read of q . M on `queries` queries: k W (C x C),
    k' . B^ at the coarse scale, k' . GroupNorm(W_2 x) through x's statistics (x: Cin channels at
    stride 4): the Cin x Cin covariance, the C group statistics, (k' gamma / sigma) W_2 and a Cin-channel
    dot product per pixel. Upsampling the per-query coarse logits is a resize (not counted)."""
    c, cin, pixels = shape.dim, shape.fine_channels, shape.mask_pixels
    per_query = 3 * c * c + c * c + c * shape.coarse_pixels + c * cin + cin * pixels + 2 * c
    shared = cin * cin * pixels + 2 * c * cin * cin + c * cin    # covariance, y variance, y mean
    return 2.0 * (queries * per_query + shared)


def decoder_gflops(shape: DecoderShape, kept_per_layer: Sequence[int], prompts: int,
                   sample_first: bool | None = None) -> float:
    """GFLOPs of one decoded frame; masks are computed for the queries leaving the last layer.
    `sample_first`: whether the layers after the first sample the memory before projecting it; by
    default as the deployed graph does (single-level memories only)."""
    kept = [int(k) for k in kept_per_layer]
    if not kept:
        return 0.0
    later = shape.levels == 1 if sample_first is None else sample_first
    total = sum(layer_flops(shape, n, prompts, sample_first=later and layer > 0)
                for layer, n in enumerate(kept))
    return (total + mask_flops(shape, kept[-1])) / GIGA
