"""`mobius bag make-sample | eval`: rosbag2 sample recordings and offline evaluation on them.

    mobius bag make-sample --out sample_bag [--storage mcap] [--frames 24] [--seed 3]
    mobius bag eval sample_bag --topic /camera/image_raw --out result_bag [--gt sample_bag_gt.json]
    mobius bag eval recording --topic /cam/image/compressed --gt-topic /labels --out res --onnx m.onnx

eval prints video AP, HOTA, IDF1, ID switches and the processor's latency percentiles, writes the
result bag (--out), the YouTube-VIS results (--results, default <out>_results.json) and everything
it printed as json (<out>_metrics.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime.stream_options import add_stream_arguments, reuse_settings, stream_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="bag_command", metavar="ACTION", required=True)
    sample = actions.add_parser("make-sample", help="record a generated clip with ground truth as a rosbag2")
    sample.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    sample.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"), help="rosbag2 storage")
    sample.add_argument("--frames", type=int, default=12, help="clip length")
    sample.add_argument("--seed", type=int, default=0, help="clip seed")
    sample.add_argument("--size", type=int, nargs=2, default=(144, 192), metavar=("H", "W"), help="frame size")
    sample.add_argument("--difficulty", default="easy", choices=("easy", "normal", "hard"), help="synth preset")
    sample.add_argument("--fps", type=float, default=10.0, help="frame rate of the stamps")

    evaluate = actions.add_parser("eval", help="segment a bag's camera topic and score it")
    evaluate.add_argument("bag", help="input bag folder (.db3 or .mcap inside)")
    evaluate.add_argument("--topic", default="/camera/image_raw", help="sensor_msgs/Image or CompressedImage topic")
    evaluate.add_argument("--gt", help="YouTube-VIS ground-truth json (one video)")
    evaluate.add_argument("--gt-topic", help="GroundTruthFrame topic (default: the bag's own, if any)")
    evaluate.add_argument("--out", required=True, help="result bag folder to create")
    evaluate.add_argument("--storage", choices=("sqlite3", "mcap"), help="result bag storage (default: the input's)")
    evaluate.add_argument("--results", help="YouTube-VIS results json (default: <out>_results.json)")
    evaluate.add_argument("--prompts", nargs="+", help="prompts, comma-separated and/or separate words "
                                                       "(default: the ground-truth categories present)")
    evaluate.add_argument("--onnx", help="ONNX model (default: the shipped model)")
    evaluate.add_argument("--backend", default="onnx", choices=("onnx", "torch"), help="inference backend")
    evaluate.add_argument("--weights", help="torch backend: weights (.safetensors)")
    evaluate.add_argument("--preset", default="mobius_nano", help="model preset name or YAML (torch backend)")
    evaluate.add_argument("--size", type=int, default=384, help="torch backend: network input side")
    evaluate.add_argument("--threads", type=int, default=2, help="inference threads")
    evaluate.add_argument("--threshold", type=float, default=0.4, help="score threshold")
    add_stream_arguments(evaluate)


def _make_sample(args: argparse.Namespace) -> int:
    from .sample import SampleConfig, make_sample

    config = SampleConfig(frames=args.frames, seed=args.seed, size=tuple(args.size), difficulty=args.difficulty,
                          storage=args.storage, fps=args.fps)
    bag, truth = make_sample(args.out, config)
    print(f"[bag] wrote {bag} ({args.storage}, {args.frames} frames {args.size[1]}x{args.size[0]}: "
          f"/camera/image_raw, /camera/image_raw/compressed, /ground_truth)\n[bag] ground truth json: {truth}")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def report_lines(report) -> list[str]:
    """The printed summary of a BagEvalReport."""
    lines = [f"[bag] {report.frames} of {report.messages} frames segmented, {report.skipped.total} messages "
             f"skipped as undecodable, {report.unmatched} frames without ground truth"]
    lines += [f"[bag]   skipped {example}" for example in report.skipped.examples]
    latency = report.latency_ms
    if latency:
        lines.append(f"[bag] latency per frame: p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms, "
                     f"p99 {latency['p99']:.1f} ms")
    if report.metrics is None:
        lines.append("[bag] no ground truth (or no prompt names a ground-truth category): no metrics")
    else:
        ap, tracking = report.metrics["video_ap"], report.metrics["tracking"]
        lines.append(f"[bag] video AP {_fmt(ap['AP'])}  AP50 {_fmt(ap['AP50'])}  AP75 {_fmt(ap['AP75'])}  "
                     f"HOTA {_fmt(tracking['HOTA'])}  IDF1 {_fmt(tracking['IDF1'])}  ID switches {tracking['IDSW']}")
    return lines


def _processor_config(args: argparse.Namespace):
    from ..runtime.processor import ProcessorConfig

    model = args.weights if args.backend == "torch" else args.onnx
    return ProcessorConfig(backend=args.backend, model=model, preset=args.preset, size=args.size,
                           threads=args.threads, score_threshold=args.threshold, **stream_settings(args))


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import BagEvalConfig, evaluate_bag

    out = Path(args.out)
    prompts = tuple(p.strip() for value in args.prompts or () for p in value.split(",") if p.strip()) or None
    config = BagEvalConfig(topic=args.topic, gt_json=args.gt, gt_topic=args.gt_topic, storage=args.storage,
                           prompts=prompts)
    if out.exists():
        raise FileExistsError(f"output bag '{out}' exists already; remove it or choose another --out")
    report = evaluate_bag(args.bag, out, config, _processor_config(args))
    results = Path(args.results) if args.results else out.with_name(out.name + "_results.json")
    results.write_text(json.dumps(report.results))
    summary = {"bag": str(args.bag), "topic": args.topic, "out": str(out), "results": str(results),
               "messages": report.messages, "frames": report.frames, "unmatched": report.unmatched,
               "skipped": dict(report.skipped.counts), "skipped_examples": report.skipped.examples,
               "prompts": report.prompts, "settings": {"score_threshold": args.threshold, **reuse_settings(args)},
               "latency_ms": report.latency_ms, "metrics": report.metrics}
    metrics_path = out.with_name(out.name + "_metrics.json")
    metrics_path.write_text(json.dumps(summary, indent=1, default=str))
    print("\n".join(report_lines(report)))
    print(f"[bag] result bag: {out}\n[bag] results: {results}\n[bag] metrics: {metrics_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _make_sample(args) if args.bag_command == "make-sample" else _eval(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"mobius bag {args.bag_command}: {error}", file=sys.stderr)
        return 1
