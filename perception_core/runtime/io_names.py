"""ONNX graph input and output names, defined once and shared by the exporter and the runtime, and
the file names of the companion graphs (here, not beside the exporter, so that the onnxruntime backend
finds them without importing it)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

# images (1, 3, H, W) float32 normalized; text_tokens (P, T, 384) float32; text_mask (P, T) bool
# (True = real token); text_pooled (P, 384) float32; track_queries (1, Nt, C) float32 and
# track_boxes (1, Nt, 4) cxcywh in [0, 1]: refined queries carried over from the previous frame
# (Nt may be 0).
# prune_thresholds (L,) float32: tau(l) after each decoder layer (a value > 1 drops everything that
# min_kept does not protect; 0 disables pruning); prune_min_kept () int64.
INPUT_NAMES = ("images", "text_tokens", "text_mask", "text_pooled", "track_queries", "track_boxes",
               "prune_thresholds", "prune_min_kept")

# pred_logits (1, N, P); pred_boxes (1, N, 4) cxcywh in [0, 1] of the network input; pred_masks
# (1, N, H/4, W/4) logits; query_embed (1, N, C) refined queries; kept_indices (N,) int64 into
# [track queries, selected queries]; kept_per_layer (L,) int64. N varies with pruning. mask_coarse
# (1, C, H/s, W/s): the coarse part of the mask features (the enhanced bottleneck, s its stride), for
# bottleneck reuse; graphs exported before it was added lack it (OPTIONAL_OUTPUTS).
OUTPUT_NAMES = ("pred_logits", "pred_boxes", "pred_masks", "query_embed", "kept_indices", "kept_per_layer",
                "mask_coarse")
OPTIONAL_OUTPUTS = ("mask_coarse",)

# The kernel-reuse mask graph (runtime/export_kernels.py), a companion file `<model>.masks.onnx`:
# images, text_tokens, text_mask as above; query_embed (1, N, C) refined queries of a keyframe.
# Output pred_masks (1, N, H/4, W/4) logits: the keyframe's mask kernels applied to this frame's
# mask features (backbone + pixel decoder only, no query selection and no transformer decoder).
MASK_INPUT_NAMES = ("images", "text_tokens", "text_mask", "query_embed")
MASK_OUTPUT_NAMES = ("pred_masks",)

# The bottleneck-reuse lateral graph (runtime/export_kernels.py), a companion file `<model>.lateral.onnx`:
# images as above, mask_coarse (1, C, H/s, W/s) and query_embed (1, N, C) of a keyframe. Outputs
# coarse_logits and fine_logits (1, N, H/4, W/4), whose sum is the mask logits: the keyframe's kernels
# read from the keyframe's coarse map (upsampled, with the per-kernel constants) and from this frame's
# stride-4 map (backbone first stage only: no pixel decoder, no text). runtime/motion.py aligns them.
LATERAL_INPUT_NAMES = ("images", "mask_coarse", "query_embed")
LATERAL_OUTPUT_NAMES = ("coarse_logits", "fine_logits")


class Companion(NamedTuple):
    """A graph run between keyframes, in a file beside the main model: '<model><suffix>'."""
    kind: str                    # "mask" | "lateral"
    purpose: str                 # what it serves, for messages
    suffix: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


MASK_GRAPH = Companion("mask", "kernel reuse", ".masks.onnx", MASK_INPUT_NAMES, MASK_OUTPUT_NAMES)
LATERAL_GRAPH = Companion("lateral", "bottleneck reuse", ".lateral.onnx", LATERAL_INPUT_NAMES, LATERAL_OUTPUT_NAMES)
MASK_SUFFIX, LATERAL_SUFFIX = MASK_GRAPH.suffix, LATERAL_GRAPH.suffix


def mask_graph_path(onnx_path: str | Path, suffix: str = MASK_SUFFIX) -> Path:
    """Companion file of a main ONNX model: 'dir/model.onnx' -> 'dir/model.masks.onnx' (or the
    lateral graph's 'dir/model.lateral.onnx' with suffix=LATERAL_SUFFIX)."""
    path = Path(onnx_path)
    return path.with_name(path.name[:-len(".onnx")] + suffix if path.name.endswith(".onnx")
                          else path.name + suffix)
