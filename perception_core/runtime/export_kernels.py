"""Graphs for frames between keyframes: a keyframe's mask kernels applied to a later frame.

Kernel reuse (MobileInst Sec. 3.5), the mask graph:

Between keyframes the runtime runs only the image encoder, the input projections and the pixel
decoder (with its text fusion, so the same prompts must be fed) to get this frame's mask features M,
and reads masks as kernel . M, where the kernels are the mask embeddings of the keyframe's refined
queries: kernel = mask_embed(norm(query_embed)), exactly what the transformer decoder's last layer
uses. Query selection and the transformer decoder are skipped.

Bottleneck reuse (opt-in, on top of kernel reuse), the lateral graph: between keyframes only the
backbone's first stage and the stride-4 lateral projection run; the coarse part of the mask features
(the enhanced bottleneck) is the keyframe's (`LateralGraph`). About a fifteenth of the mask graph's
cost; the stride-4 detail is this frame's and the runtime moves the keyframe's coarse part after each
object (runtime/motion.py; docs/BENCHMARKS.md measures both reuse modes against ground truth).

For the onnxruntime backend these are ONNX files next to the main one, `<model>.masks.onnx` and
`<model>.lateral.onnx` (inputs/outputs in io_names); the torch backend calls the modules directly.

    python -m perception_core.runtime.export_kernels --weights W.safetensors --out m.masks.onnx
    python -m perception_core.runtime.export_kernels --weights W.safetensors --lateral --out m.lateral.onnx
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from ..model.pixel_decoder_common import MaskFeatures
from .export import SAMPLERS, dynamo_export
from .io_names import (LATERAL_INPUT_NAMES, LATERAL_OUTPUT_NAMES, LATERAL_SUFFIX, MASK_INPUT_NAMES,
                       MASK_OUTPUT_NAMES, mask_graph_path)


class MaskGraph(nn.Module):
    """images (1, 3, S, S), text (P, T, Dt) / (P, T) bool, query_embed (1, N, C) -> (1, N, S/4, S/4)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.deploy()

    def mask_features(self, images: Tensor, text_tokens: Tensor, text_mask: Tensor) -> MaskFeatures:
        """Mask features M (B, C, S/4, S/4), factored, of these images under these prompts."""
        pooled = torch.zeros(text_tokens.shape[0], text_tokens.shape[2], dtype=text_tokens.dtype)
        text, _ = self.model.encode_prompts(text_tokens, text_mask, pooled, images.shape[0])
        s2, pyramid = self.model.image_features(images)
        return self.model.pixel_decoder(s2, pyramid, text).mask_features

    def kernels(self, query_embed: Tensor) -> Tensor:
        """(B, N, C) refined queries -> (B, N, C) mask kernels (as in TransformerDecoder.predict)."""
        decoder = self.model.decoder
        return decoder.mask_embed(decoder.norm(query_embed))

    def forward(self, images: Tensor, text_tokens: Tensor, text_mask: Tensor, query_embed: Tensor) -> Tensor:
        return self.mask_features(images, text_tokens, text_mask).read(self.kernels(query_embed))


class LateralGraph(nn.Module):
    """Bottleneck reuse: images (1, 3, S, S), a keyframe's mask_coarse (1, C, S/s, S/s) and
    query_embed (1, N, C) -> coarse and fine mask logits (1, N, S/4, S/4) each, whose sum is the
    mask (MaskFeatures.read_split; runtime/motion.py moves the coarse part after the object).

    The mask features are M = W (upsample(coarse) + S2) + b (pixel_decoder_common.MaskFeatures). This
    graph recomputes only this frame's S2 (the backbone's first stage and the lateral projection)
    and takes the coarse part, the enhanced bottleneck, from the keyframe: the pixel decoder, the
    deeper backbone stages and the text are skipped. The coarse map lags by up to T-1 frames, the
    stride-4 detail does not."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.deploy()
        self.mask_graph = MaskGraph(model)

    def mask_features(self, images: Tensor, mask_coarse: Tensor) -> MaskFeatures:
        return MaskFeatures(mask_coarse, self.model.lateral_features(images), self.model.pixel_decoder.mask_head.proj)

    def forward(self, images: Tensor, mask_coarse: Tensor, query_embed: Tensor) -> tuple[Tensor, Tensor]:
        return self.mask_features(images, mask_coarse).read_split(self.mask_graph.kernels(query_embed))


def export_mask_graph(model: nn.Module, path: str | Path, size: int = 384, sampler: str = "deform_conv") -> Path:
    """Exports the mask graph of `model` for a square `size` input; returns the written path."""
    graph = MaskGraph(model)
    generator = torch.Generator().manual_seed(0)
    cfg = model.config
    text_mask = torch.ones(3, 6, dtype=torch.bool)
    text_mask[0, 3:] = False
    args = (torch.randn(1, 3, size, size, generator=generator),
            torch.randn(3, 6, cfg.text.dim, generator=generator), text_mask,
            torch.randn(1, 4, cfg.hidden_dim, generator=generator))
    prompts, tokens, queries = (torch.export.Dim("prompts", max=1024), torch.export.Dim("tokens", max=512),
                                torch.export.Dim("queries", max=4096))
    dynamic = {"images": None, "text_tokens": {0: prompts, 1: tokens}, "text_mask": {0: prompts, 1: tokens},
               "query_embed": {1: queries}}
    return dynamo_export(graph, args, Path(path), list(MASK_INPUT_NAMES), list(MASK_OUTPUT_NAMES), dynamic, sampler)


def export_lateral_graph(model: nn.Module, path: str | Path, size: int = 384) -> Path:
    """Exports the bottleneck-reuse lateral graph of `model` for a square `size` input."""
    graph = LateralGraph(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, size, size, generator=generator)
    text_mask = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():  # the coarse map's shape (the bottleneck's stride differs between pixel decoders)
        coarse = graph.mask_graph.mask_features(images, torch.zeros(1, 2, model.config.text.dim), text_mask).coarse
    args = (images, torch.randn(coarse.shape, generator=generator),
            torch.randn(1, 4, model.config.hidden_dim, generator=generator))
    dynamic = {"images": None, "mask_coarse": None, "query_embed": {1: torch.export.Dim("queries", max=4096)}}
    return dynamo_export(graph, args, Path(path), list(LATERAL_INPUT_NAMES), list(LATERAL_OUTPUT_NAMES), dynamic)


def export_reuse_graphs(model: nn.Module, onnx_path: str | Path, size: int = 384,
                        sampler: str = "deform_conv") -> list[Path]:
    """Both companion graphs of the main graph at `onnx_path`, written beside it: the mask graph
    (kernel reuse) and the lateral graph (bottleneck reuse). Returns their paths."""
    return [export_mask_graph(model, mask_graph_path(onnx_path), size, sampler),
            export_lateral_graph(model, mask_graph_path(onnx_path, LATERAL_SUFFIX), size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="export the kernel-reuse mask graph of a model to ONNX")
    parser.add_argument("--config", default="mobius_nano", help="model preset name or YAML path")
    parser.add_argument("--weights", help="trained weights (.safetensors or weights-only .pt)")
    parser.add_argument("--size", type=int, default=384, help="square input size (as the main graph)")
    parser.add_argument("--out", required=True,
                        help="output path, by convention <model>.masks.onnx (<model>.lateral.onnx with --lateral)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="deform_conv",
                        help="deformable sampling, as for the main graph (mobius export --sampler)")
    parser.add_argument("--lateral", action="store_true",
                        help="export the bottleneck-reuse lateral graph instead of the mask graph")
    parser.add_argument("overrides", nargs="*", help="model config overrides key=value")
    args = parser.parse_args(argv)
    from ..model.build import build_from_name, load_weights

    model = build_from_name(args.config, args.overrides)
    if args.weights:
        load_weights(model, args.weights)
    if args.lateral:
        path, names = export_lateral_graph(model, args.out, args.size), LATERAL_INPUT_NAMES
    else:
        path, names = export_mask_graph(model, args.out, args.size, args.sampler), MASK_INPUT_NAMES
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, inputs {list(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
