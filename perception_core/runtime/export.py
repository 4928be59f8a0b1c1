"""`mobius export`: the deployment graph to ONNX with torch's dynamo exporter (opset 18).

Text embeddings are graph inputs (prompts can change without re-export, any number of prompts and
tokens), query pruning runs inside the graph (data-dependent query count, possibly zero), and the
refined queries of tracked objects from the previous frame enter as `track_queries`.
"""
from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..model.decoder import PruneSettings
from .io_names import INPUT_NAMES, OUTPUT_NAMES

OPSET = 18
log = logging.getLogger(__name__)


class DeployGraph(nn.Module):
    """Positional inputs/outputs in the order of io_names, for export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.deploy()

    def forward(self, images: Tensor, text_tokens: Tensor, text_mask: Tensor, text_pooled: Tensor,
                track_queries: Tensor, track_boxes: Tensor, prune_thresholds: Tensor,
                prune_min_kept: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images, text_tokens, text_mask, text_pooled, track_queries, track_boxes,
                         prune=PruneSettings(prune_thresholds, prune_min_kept))
        return tuple(out[name] for name in OUTPUT_NAMES)


def prune_inputs(model: nn.Module) -> tuple[Tensor, Tensor]:
    """The model's configured pruning as graph inputs (thresholds 0 and min_kept 0 = no pruning)."""
    layers = model.config.decoder.num_layers
    if model.prune is None:
        return torch.zeros(layers), torch.tensor(0, dtype=torch.int64)
    return (torch.tensor(model.prune.taus, dtype=torch.float32),
            torch.tensor(model.prune.min_kept, dtype=torch.int64))


def example_inputs(model: nn.Module, size: int | tuple[int, int], prompts: int = 3, tokens: int = 6,
                   tracks: int = 2) -> tuple[Tensor, ...]:
    height, width = (size, size) if isinstance(size, int) else size
    cfg = model.config
    generator = torch.Generator().manual_seed(0)
    text_mask = torch.ones(prompts, tokens, dtype=torch.bool)
    text_mask[0, tokens // 2:] = False
    return (torch.randn(1, 3, height, width, generator=generator),
            torch.randn(prompts, tokens, cfg.text.dim, generator=generator), text_mask,
            torch.randn(prompts, cfg.text.dim, generator=generator),
            torch.randn(1, tracks, cfg.hidden_dim, generator=generator),
            torch.rand(1, tracks, 4, generator=generator) * 0.5 + 0.25, *prune_inputs(model))


def export_onnx(model: nn.Module, path: str | Path, size: int | tuple[int, int] = 384) -> Path:
    """Exports `model` (any ModelConfig) for a fixed input size; returns the written path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = DeployGraph(model)
    args = example_inputs(model, size)
    prompts, tokens, tracks = torch.export.Dim("prompts", max=1024), torch.export.Dim("tokens", max=512), \
        torch.export.Dim("tracks", max=4096)
    dynamic = {"images": None, "text_tokens": {0: prompts, 1: tokens}, "text_mask": {0: prompts, 1: tokens},
               "text_pooled": {0: prompts}, "track_queries": {1: tracks}, "track_boxes": {1: tracks},
               "prune_thresholds": None, "prune_min_kept": None}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, args, dynamo=True, opset_version=OPSET, input_names=list(INPUT_NAMES),
                                    output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic, verbose=False)
    program.save(str(path))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="mobius_nano", help="model preset name or YAML path")
    parser.add_argument("--weights", help="trained weights (.safetensors or weights-only .pt)")
    parser.add_argument("--size", type=int, default=384, help="square input size in pixels")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("overrides", nargs="*", help="model config overrides key=value")


def run(args: argparse.Namespace) -> int:
    from ..model.build import build_from_name, load_weights

    if args.size % 32:
        raise SystemExit(f"--size {args.size} must be a multiple of 32")
    model = build_from_name(args.config, args.overrides)
    if args.weights:
        load_weights(model, args.weights)
    path = export_onnx(model, args.out, args.size)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {OPSET}, inputs {list(INPUT_NAMES)})")
    return 0
