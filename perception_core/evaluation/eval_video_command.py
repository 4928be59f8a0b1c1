"""`mobius eval-video`: video AP (YouTube-VIS protocol) and HOTA, DetA, AssA, IDF1, ID switches.

    mobius eval-video --data data/synth/val/videos.json --results results.json   # score results
    mobius eval-video --data data/synth/val/videos.json                          # run the shipped model
    mobius eval-video --data val/videos.json --weights w.safetensors --kernel-reuse 3 --json

Without --results every video runs through the runtime FrameProcessor (the same engine as the
ROS node and `mobius infer`: query-propagation tracking, score threshold, optional kernel reuse),
frames read from the json's file_names; tracks become YouTube-VIS results exactly as
`mobius infer --json` writes them (runtime/ytvis_results.py: one entry per track and label, score =
its mean confidence), so `mobius infer` + `mobius eval-video --results` gives the same numbers.
Prompts are the json's category names (all, --prompts NAMES or --prompts seen); only the prompted
categories are evaluated. Tracking metrics are per category by default (trackeval's YouTube-VIS
way), or --tracking-mode class_agnostic.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..runtime.stream_options import add_stream_arguments, reuse_settings, stream_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="VIDEOS.json", help="YouTube-VIS ground-truth json")
    parser.add_argument("--results", metavar="RESULTS.json", help="YouTube-VIS results to score (no inference)")
    parser.add_argument("--images", metavar="DIR", help="frame folder (default: the json's info.video_root, "
                                                        "else its folder/videos if it exists, else its folder)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--onnx", metavar="MODEL.onnx", help="exported model (onnxruntime); default: the shipped one")
    model.add_argument("--weights", help="torch weights (.safetensors or .pt) run with the torch backend")
    parser.add_argument("--preset", help="model config name or YAML path (default: the shipped model's)")
    parser.add_argument("--size", type=int, default=384, help="input size for the torch backend (default 384)")
    parser.add_argument("--prompts", help="comma-separated category names, or 'seen' (default: all categories)")
    parser.add_argument("--score-threshold", type=float, default=0.4, help="processor score threshold (default 0.4)")
    add_stream_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--limit", type=int, help="run only the first N videos")
    parser.add_argument("--tracking-mode", choices=("per_category", "class_agnostic"), default="per_category")
    parser.add_argument("--track-score-threshold", type=float, default=0.0,
                        help="results below this score are left out of the tracking metrics (default 0)")
    parser.add_argument("--save-results", metavar="JSON", help="write the YouTube-VIS results of the run")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--record", action="store_true",
                        help="store the numbers in the shipped model's model.json (shipped model, no --results)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def default_frame_root(annotation_file: str | Path, data: dict) -> Path:
    folder = Path(annotation_file).resolve().parent
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    for name in (info.get("video_root"), "videos"):
        if name and (folder / name).is_dir():
            return folder / name
    return folder


def make_processor(args: argparse.Namespace, prompts: list[str]):
    """FrameProcessor for --onnx / --weights / the shipped model (FileNotFoundError, ValueError)."""
    from .. import assets
    from ..runtime.processor import FrameProcessor, ProcessorConfig

    backend = "torch" if args.weights else "onnx"
    preset = args.preset or assets.info().get("preset", assets.PRESET)
    config = ProcessorConfig(backend=backend, model=args.weights or args.onnx, preset=preset, threads=args.threads,
                             score_threshold=args.score_threshold, size=args.size, **stream_settings(args))
    return FrameProcessor(config, prompts)


def run_videos(processor, data: dict, frame_root: Path, label_to_category: dict[str, int],
               limit: int | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """YouTube-VIS results of every video (processor reset per video) and speed statistics."""
    from tqdm import tqdm

    from ..runtime.ytvis_results import YtvisResults
    from ..training.annotations import read_image

    videos = data["videos"][:limit] if limit else data["videos"]
    results, per_frame_ms = [], []
    bar = tqdm(total=sum(len(v["file_names"]) for v in videos), desc="eval-video frames", unit="frame",
               disable=not progress)
    with bar:
        for video in videos:
            processor.reset()
            collector = YtvisResults(int(video["id"]), label_to_category)
            for index, name in enumerate(video["file_names"]):
                frame = read_image(frame_root / name)
                start = time.perf_counter()
                result = processor.process(frame, stamp=float(index))
                per_frame_ms.append((time.perf_counter() - start) * 1000)
                collector.add(result)
                bar.update()
            results.extend(collector.to_list())
    stats = {"videos_run": len(videos), "frames": len(per_frame_ms),
             "ms_per_frame_mean": float(sum(per_frame_ms) / max(len(per_frame_ms), 1))}
    return results, stats


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def format_table(metrics: dict) -> str:
    ap, tracking = metrics["video_ap"], metrics["tracking"]
    lines = [f"{metrics['videos']} videos, {metrics['results']} result tracks"
             + (f", {metrics['ms_per_frame_mean']:.1f} ms/frame" if "ms_per_frame_mean" in metrics else ""),
             "video AP (YouTube-VIS): " + "  ".join(f"{name} {_fmt(ap[name])}"
                                                   for name in ("AP", "AP50", "AP75", "AR1", "AR10")),
             f"tracking ({tracking['mode']}, mask IoU, results with score >= {tracking['score_threshold']:g}): "
             + "  ".join(f"{name} {_fmt(tracking[name])}" for name in ("HOTA", "DetA", "AssA", "IDF1", "MOTA"))
             + f"  IDSW {tracking['IDSW']}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..training.annotations import check_image_files
    from .eval_command import choose_categories
    from .record import is_shipped_model
    from .video_eval import evaluate_video, load_ground_truth, load_results

    try:
        data = load_ground_truth(args.data)
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be >= 1")
        categories = choose_categories(data, args.prompts)
        category_ids = [int(c["id"]) for c in categories]
        stats = {}
        if args.record and (args.results or not is_shipped_model(args.weights, args.onnx)):
            raise ValueError("--record stores numbers in the shipped model's model.json; it needs a run of the "
                             "shipped model (no --results, --weights or --onnx)")
        if args.results:
            results = load_results(args.results)
        else:
            frame_root = Path(args.images) if args.images else default_frame_root(args.data, data)
            videos = data["videos"][:args.limit] if args.limit else data["videos"]
            check_image_files(frame_root, [name for v in videos for name in v["file_names"]], args.data)
            processor = make_processor(args, [c["name"] for c in categories])
    except (FileNotFoundError, ValueError) as error:  # DatasetError/ConfigError are ValueErrors
        print(f"mobius eval-video: error: {error}", file=sys.stderr)
        return 2
    if not args.results:
        label_to_category = {c["name"]: int(c["id"]) for c in categories}
        results, stats = run_videos(processor, data, frame_root, label_to_category, args.limit, not args.quiet)
        if args.limit:
            data = {**data, "videos": videos,
                    "annotations": [a for a in data.get("annotations", [])
                                    if int(a["video_id"]) in {int(v["id"]) for v in videos}]}
    if args.save_results:
        Path(args.save_results).write_text(json.dumps(results))
    try:
        metrics = {**evaluate_video(data, results, category_ids, args.tracking_mode, args.track_score_threshold),
                   "prompts": len(categories), **stats}
    except ValueError as error:  # malformed results file
        print(f"mobius eval-video: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics))
    if args.record:
        from .record import record_metrics, split_name, video_summary

        tracker = processor.config.tracker
        settings = {"score_threshold": args.score_threshold, **reuse_settings(args), "threads": args.threads,
                    "tracker": {name: getattr(tracker, name) for name in ("keep_score", "match_threshold",
                                                                          "embedding_weight", "confirm_hits")}}
        path = record_metrics(f"eval-video {split_name(data, args.data)}", video_summary(metrics, args.data, settings))
        print(f"recorded in {path}", file=sys.stderr)
    return 0
