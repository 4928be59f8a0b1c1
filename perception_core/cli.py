"""One `mobius` command with subcommands.

Each subcommand lives in its own module exposing
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int
The modules are imported only when their subcommand runs, so `mobius --help` stays fast and a
missing optional dependency of one subcommand never breaks another.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). The names are a public contract: keep them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "flops": ("perception_core.model.flops_command", "count FLOPs per model component"),
    "export": ("perception_core.runtime.export", "export a model to ONNX (opset 19)"),
    "data": ("perception_core.training.synth.command", "procedural benchmark data"),
    "train": ("perception_core.training.train_command", "train a model from a recipe"),
    "eval": ("perception_core.evaluation.eval_command", "COCO box/mask AP and calibration"),
    "calibrate": ("perception_core.evaluation.calibrate_command",
                  "fit the score calibration on a held-out split and store it in the model file"),
    "eval-video": ("perception_core.evaluation.eval_video_command", "video AP, HOTA, IDF1, ID switches"),
    "demo": ("perception_core.demo", "end-to-end demo on a generated sample clip"),
    "infer": ("perception_core.infer", "segment and track a video, image folder or image; overlay + results json"),
    "prompts": ("perception_core.runtime.prompts_command",
                "encode prompts into a file the runtime reads without a text model (torch-free boards)"),
    "quantize": ("perception_core.runtime.quantize_command",
                 "int8 version of an exported model (static with your calibration frames, or dynamic)"),
    "bench": ("perception_core.bench_command", "runtime latency per stage: onnxruntime vs torch, threads, kernel reuse"),
    "gst": ("perception_core.gst.command", "GStreamer pipeline: any source -> model -> overlay -> any sink"),
    "bag": ("perception_core.bag.command", "rosbag2 tools: record a sample clip, evaluate on a bag"),
    "ablate": ("perception_core.ablation.command", "paper ablations: pixel decoders, calibration, pruning schedules"),
}


class _LazyHelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


def _module_for(name: str):
    module_name = SUBCOMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "perception_core":
            raise SystemExit(f"mobius {name}: this installation lacks module '{error.name}'; "
                             f"reinstall the package ('make setup' or 'pip install -e .')") from error
        raise SystemExit(
            f"mobius {name}: missing dependency '{error.name}'; run 'make setup' "
            f"(or pip install the project) and try again"
        ) from error


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    """Builds the parser; only the selected subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="mobius", formatter_class=_LazyHelpFormatter,
                                     description="MOBIUS instance segmentation toolkit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            _module_for(name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected not in SUBCOMMANDS:
        selected = None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(_module_for(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
