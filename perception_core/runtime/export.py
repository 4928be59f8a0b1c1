"""`mobius export`: the deployment graph to ONNX with torch's dynamo exporter (opset 19).

Deformable attention over a fixed set of queries (the pixel decoder's tokens) is exported as one
ONNX DeformConv per attention (`--sampler deform_conv`, the default; model/deform_conv.py); runtimes
without DeformConv (opset 19) take `--sampler grid_sample`, the same result through GridSample.

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

from ..model import deform_conv
from ..model.decoder import PruneSettings
from ..model.layers import export_form
from .io_names import INPUT_NAMES, OUTPUT_NAMES

OPSET = 19
SAMPLERS = ("deform_conv", "grid_sample")
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


def dynamo_export(graph: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic: dict, sampler: str = "deform_conv") -> Path:
    """torch.onnx.export (dynamo, OPSET) of `graph` to `path`, deformable sampling as `sampler`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}; choose one of {SAMPLERS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with (warnings.catch_warnings(), torch.no_grad(), deform_conv.lowered_sampling(sampler == "deform_conv"),
          export_form()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic, verbose=False,
                                    custom_translation_table=deform_conv.onnx_translations())
    program.save(str(path))
    return path


def export_onnx(model: nn.Module, path: str | Path, size: int | tuple[int, int] = 384,
                sampler: str = "deform_conv") -> Path:
    """Exports `model` (any ModelConfig) for a fixed input size; returns the written path."""
    graph = DeployGraph(model)
    args = example_inputs(model, size)
    prompts, tokens, tracks = torch.export.Dim("prompts", max=1024), torch.export.Dim("tokens", max=512), \
        torch.export.Dim("tracks", max=4096)
    dynamic = {"images": None, "text_tokens": {0: prompts, 1: tokens}, "text_mask": {0: prompts, 1: tokens},
               "text_pooled": {0: prompts}, "track_queries": {1: tracks}, "track_boxes": {1: tracks},
               "prune_thresholds": None, "prune_min_kept": None}
    return dynamo_export(graph, args, Path(path), list(INPUT_NAMES), list(OUTPUT_NAMES), dynamic, sampler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="mobius_nano", help="model preset name or YAML path")
    parser.add_argument("--weights", help="trained weights (.safetensors or weights-only .pt)")
    parser.add_argument("--size", type=int, default=384, help="square input size in pixels")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--sampler", choices=SAMPLERS, default="deform_conv",
                        help="deformable sampling of the pixel decoder: one DeformConv per attention (faster "
                             "on onnxruntime) or GridSample per level (for runtimes without DeformConv)")
    parser.add_argument("--reuse-graphs", action="store_true",
                        help="also write the companion graphs for reuse between keyframes next to --out: "
                             "<name>.masks.onnx (kernel reuse) and <name>.lateral.onnx (bottleneck reuse)")
    parser.add_argument("overrides", nargs="*", help="model config overrides key=value")


def run(args: argparse.Namespace) -> int:
    from ..model.build import build_from_name, load_weights
    from .score_calibration import read_calibration, write_calibration

    if args.size % 32:
        raise SystemExit(f"--size {args.size} must be a multiple of 32")
    model = build_from_name(args.config, args.overrides)
    if args.weights:
        load_weights(model, args.weights)
    path = export_onnx(model, args.out, args.size, args.sampler)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {OPSET}, sampler {args.sampler}, "
          f"inputs {list(INPUT_NAMES)})")
    calibration = read_calibration(args.weights) if args.weights else None
    if calibration is not None:   # the weights' score calibration (mobius calibrate) goes with the graph
        write_calibration(path, calibration)
        print(f"copied the score calibration of {args.weights} (a={calibration.a:.3f}, b={calibration.b:.3f})")
    if args.reuse_graphs:
        from .export_kernels import export_reuse_graphs

        for companion in export_reuse_graphs(model, path, args.size, args.sampler):
            print(f"wrote {companion} ({companion.stat().st_size / 1e6:.1f} MB)")
    return 0
