"""`mobius quantize`: an int8 version of an exported model for boards with fast int8 kernels.

    mobius quantize --out model.int8.onnx --calibration my_scenes/ --prompts "forklift,person"
    mobius quantize --onnx model.onnx --out model.int8.onnx --mode dynamic
    mobius eval --onnx model.int8.onnx --data my_val.json        # what it costs in AP

Static (the default) calibrates activation ranges on frames of your own scenes (a video file, an image
folder or one image; `--frames` of them, evenly spread) with the prompts you deploy, and keeps the
cosine classifiers float (runtime/quantize.py says why). Whether int8 is faster depends on the board:
on the x86 CPU of docs/BENCHMARKS.md it is not; measure on yours (`mobius bench --onnx`).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import assets

    parser.add_argument("--onnx", default=str(assets.ONNX), metavar="MODEL.onnx",
                        help="exported float model (default: the shipped one)")
    parser.add_argument("--out", required=True, metavar="OUT.onnx", help="int8 model to write")
    parser.add_argument("--mode", choices=("static", "dynamic"), default="static",
                        help="static: QDQ with calibrated activation ranges (default); dynamic: int8 MatMul "
                             "weights, activations quantized at run time (no calibration frames)")
    parser.add_argument("--calibration", metavar="INPUT",
                        help="video file, image folder or image of the scenes you deploy in (static mode)")
    parser.add_argument("--frames", type=int, default=32, help="calibration frames, evenly spread (default 32)")
    parser.add_argument("--prompts", help="comma-separated prompts to calibrate with (default: the shipped "
                                          "default prompts)")
    parser.add_argument("--prompt-embeddings", metavar="FILE", help="prompt embeddings file ('mobius prompts')")
    parser.add_argument("--preset", default="mobius_nano",
                        help="model config whose pruning and text length the graph runs with (default mobius_nano)")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"mobius quantize: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:     # onnx: the export extra
        print(f"mobius quantize: missing dependency '{error.name}'; pip install '.[export]' (or run 'make setup')",
              file=sys.stderr)
        return 2


def _check(args: argparse.Namespace) -> tuple[Path, Path]:
    source, target = Path(args.onnx), Path(args.out)
    if not source.is_file():
        raise FileNotFoundError(f"model '{source}' not found; pass an exported .onnx with --onnx")
    if target.suffix != ".onnx":
        raise ValueError(f"--out '{target}' must end in .onnx")
    if target.resolve() == source.resolve():
        raise ValueError(f"--out '{target}' is the float model itself; write the int8 model elsewhere")
    if not target.parent.is_dir():
        raise ValueError(f"--out folder '{target.parent}' does not exist")
    if args.mode == "static":
        if not args.calibration:
            raise ValueError("static quantization needs --calibration INPUT (frames of your scenes); "
                             "or use --mode dynamic")
        if args.frames < 1:
            raise ValueError(f"--frames {args.frames} must be >= 1")
    elif args.calibration:
        raise ValueError("--calibration is for --mode static; dynamic quantization reads no frames")
    return source, target


def sampled_frames(source, count: int) -> Iterator[np.ndarray]:
    """`count` frames of an infer.FrameSource evenly spread over it (the first `count` when its
    length is unknown)."""
    total = source.count
    wanted = (set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
              if total else set(range(count)))
    for index, frame in enumerate(source):
        if index in wanted:
            yield frame
        if index >= max(wanted):
            return


def _run(args: argparse.Namespace) -> int:
    from .. import assets
    from ..infer import FrameSource, parse_prompts
    from . import quantize
    from .onnx_engine import OnnxEngine

    source, target = _check(args)
    frames = FrameSource(args.calibration) if args.mode == "static" else None   # a bad input fails first
    engine = OnnxEngine(source, threads=1)      # a graph the runtime cannot run is refused here
    with tempfile.TemporaryDirectory(prefix="mobius_quantize_", dir=target.parent) as work:
        prepared, ok = quantize.prepare(source, Path(work))
        written = Path(work) / "int8.onnx"      # moved to --out once it loads: a failure leaves --out as it was
        if args.mode == "dynamic":
            quantize.quantize_dynamic_model(prepared, written)
            kept = None
        else:
            kept = quantize.float_nodes(source, prepared)
            prompts = parse_prompts(args.prompts) if args.prompts else list(assets.DEFAULT_PROMPTS)
            feeds = quantize.CalibrationFeeds.for_model(engine, sampled_frames(frames, args.frames), prompts,
                                                        args.preset, args.prompt_embeddings)
            print(f"[quantize] calibrating on {feeds.count} frame(s) of '{args.calibration}' with {len(prompts)} "
                  f"prompt(s) ...", flush=True)
            quantize.quantize_static_model(prepared, written, feeds, keep_float=kept.classifiers)
        OnnxEngine(written, threads=1)          # the result must load where the float model did
        os.replace(written, target)
    counts = quantize.quantized_op_counts(target)
    print(f"[quantize] {args.mode} int8 -> {target} ({target.stat().st_size / 1e6:.1f} MB; float "
          f"{source.stat().st_size / 1e6:.1f} MB); quantized nodes: "
          + ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
          + ("" if ok else "; quant_pre_process failed, graph quantized as exported"))
    if kept is not None:
        print(f"[quantize] kept float: {len(kept.classifiers)} cosine-classifier node(s), {len(kept.unsupported)} "
              f"MatMul(s) per-channel int8 cannot take")
    print(f"[quantize] check the AP it costs: mobius eval --onnx {target} --data YOUR_VAL.json")
    return 0
