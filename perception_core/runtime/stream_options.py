"""Command-line options shared by every front end that runs a FrameProcessor over a stream (`mobius infer`,
`eval-video`, `gst`, `bag eval`); the ROS demo takes the reuse options alone (the node has parameters)."""
from __future__ import annotations

import argparse


def add_reuse_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel-reuse", type=int, default=1, metavar="T",
                        help="decode fully every T frames, reuse the keyframe's mask kernels in between (default 1)")
    parser.add_argument("--reuse-bottleneck", action="store_true",
                        help="with --kernel-reuse T >= 2: also reuse the keyframe's coarse mask features, moved after "
                             "each object, so only the stride-4 map is recomputed between keyframes (over 10x "
                             "cheaper than kernel reuse alone)")


def reuse_settings(args: argparse.Namespace) -> dict:
    """ProcessorConfig keyword arguments of the options above (ProcessorConfig validates them)."""
    return {"kernel_reuse": args.kernel_reuse, "reuse_bottleneck": args.reuse_bottleneck}


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    add_reuse_arguments(parser)
    parser.add_argument("--prompt-embeddings", metavar="FILE",
                        help="prompt embeddings file written by 'mobius prompts': prompts found in it need no text "
                             "model (torch) here; the shipped defaults need none either")
    parser.add_argument("--raw-scores", action="store_true",
                        help="score with the model's own confidence instead of the score calibration stored in the "
                             "model file ('mobius calibrate'); thresholds then apply to that confidence")
    parser.add_argument("--tracker", action="append", default=[], metavar="KEY=VALUE",
                        help="a tracker setting, as the node's tracker.* parameters (repeat for several), e.g. "
                             "--tracker keep_score=0.4; the others keep runtime/tracker.py's defaults")


def tracker_config(pairs: list[str]):
    """TrackerConfig from KEY=VALUE pairs over its defaults; ValueError names a bad key or value
    (TrackerConfig checks the ranges)."""
    from dataclasses import fields

    from .tracker import TrackerConfig

    kinds = {f.name: f.type for f in fields(TrackerConfig)}
    values: dict[str, float | int] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or key not in kinds:
            raise ValueError(f"--tracker {pair!r}: expected KEY=VALUE with KEY one of {', '.join(kinds)}")
        cast = int if kinds[key] in ("int", int) else float
        try:
            values[key] = cast(text)
        except ValueError:
            raise ValueError(f"--tracker {pair!r}: {key} takes {'an integer' if cast is int else 'a number'}") \
                from None
    return TrackerConfig(**values)


def stream_settings(args: argparse.Namespace) -> dict:
    """ProcessorConfig keyword arguments of add_stream_arguments."""
    return {**reuse_settings(args), "prompt_embeddings": args.prompt_embeddings,
            "calibrated_scores": not args.raw_scores, "tracker": tracker_config(args.tracker)}
