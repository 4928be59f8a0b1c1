"""The kernel-reuse mask graph: a keyframe's mask kernels applied to a later frame (MobileInst Sec. 3.5).

Between keyframes the runtime runs only the image encoder, the input projections and the pixel
decoder (with its text fusion, so the same prompts must be fed) to get this frame's mask features M,
and reads masks as kernel . M, where the kernels are the mask embeddings of the keyframe's refined
queries: kernel = mask_embed(norm(query_embed)), exactly what the transformer decoder's last layer
uses. Query selection and the transformer decoder are skipped.

For the onnxruntime backend this is a second ONNX file next to the main one,
`<model>.masks.onnx` (inputs/outputs in io_names.MASK_INPUT_NAMES / MASK_OUTPUT_NAMES); the torch
backend calls `MaskGraph` directly.

    python -m perception_core.runtime.export_kernels --weights W.safetensors --out m.masks.onnx
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from ..model.pixel_decoder_common import MaskFeatures
from .export import SAMPLERS, dynamo_export
from .io_names import MASK_INPUT_NAMES, MASK_OUTPUT_NAMES

MASK_SUFFIX = ".masks.onnx"


def mask_graph_path(onnx_path: str | Path) -> Path:
    """Companion file of a main ONNX model: 'dir/model.onnx' -> 'dir/model.masks.onnx'."""
    path = Path(onnx_path)
    return path.with_name(path.name[:-len(".onnx")] + MASK_SUFFIX if path.name.endswith(".onnx")
                          else path.name + MASK_SUFFIX)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="export the kernel-reuse mask graph of a model to ONNX")
    parser.add_argument("--config", default="mobius_nano", help="model preset name or YAML path")
    parser.add_argument("--weights", help="trained weights (.safetensors or weights-only .pt)")
    parser.add_argument("--size", type=int, default=384, help="square input size (as the main graph)")
    parser.add_argument("--out", required=True, help="output path, by convention <model>.masks.onnx")
    parser.add_argument("--sampler", choices=SAMPLERS, default="deform_conv",
                        help="deformable sampling, as for the main graph (mobius export --sampler)")
    parser.add_argument("overrides", nargs="*", help="model config overrides key=value")
    args = parser.parse_args(argv)
    from ..model.build import build_from_name, load_weights

    model = build_from_name(args.config, args.overrides)
    if args.weights:
        load_weights(model, args.weights)
    path = export_mask_graph(model, args.out, args.size, args.sampler)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, inputs {list(MASK_INPUT_NAMES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
