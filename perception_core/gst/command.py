"""`mobius gst SOURCE [--sink SINK]`: any GStreamer source -> frame processor -> overlay -> any sink.

    mobius gst "videotestsrc num-buffers=100" --prompts "red circle,blue square"
    mobius gst "filesrc location=clip.mkv ! decodebin" --out overlay.mp4 --onnx model.onnx
    mobius gst "v4l2src device=/dev/video0" --sink autovideosink --prompts person
    mobius gst "rtspsrc location=rtsp://cam/stream latency=0 ! decodebin" --sink fakesink --json run.json

Without --sink the overlay goes to a video file (--out; by default outputs/gst/overlay.mp4, or the
.mkv/.avi this installation can write). The per-frame records (tracked instances with scores and
boxes, timings) and a summary go to a json file next to it (--json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.stream_options import add_stream_arguments, stream_settings
from .pipeline import PipelineConfig, PipelineError, PipelineStats, check_descriptions, run_pipeline
from .sinks import default_output, file_sink

DEFAULT_OUT = Path("outputs/gst/overlay")


def parse_prompts(values: list[str] | None) -> list[str]:
    """--prompts "a,b" "c" -> ["a", "b", "c"]; None -> the shipped model's default prompts."""
    if not values:
        from ..assets import DEFAULT_PROMPTS

        return list(DEFAULT_PROMPTS)
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="GStreamer source description, e.g. 'videotestsrc' or "
                                       "'filesrc location=x.mkv ! decodebin' (quote it)")
    parser.add_argument("--sink", help="GStreamer sink description (e.g. 'autovideosink', 'fakesink'); "
                                       "default: encode to the --out video file")
    parser.add_argument("--out", help="overlay video file when no --sink is given (.mp4 .mkv .avi .webm "
                                      ".mov); default outputs/gst/overlay.mp4 (or what can be written)")
    parser.add_argument("--json", help="results json; default: next to --out, else outputs/gst/results.json")
    parser.add_argument("--prompts", nargs="+", help="text prompts, comma-separated and/or separate words "
                                                     "(default: the shipped model's prompts)")
    parser.add_argument("--onnx", help="ONNX model (default: the shipped model)")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch"),
                        help="inference backend; with torch, --weights gives the .safetensors")
    parser.add_argument("--weights", help="torch backend: model weights (.safetensors)")
    parser.add_argument("--preset", default="mobius_nano", help="torch backend: model preset name or YAML path")
    parser.add_argument("--size", type=int, default=384, help="torch backend: network input side (multiple of 32)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads")
    parser.add_argument("--threshold", type=float, default=0.4, help="score threshold")
    add_stream_arguments(parser)
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--live", choices=("auto", "yes", "no"), default="auto",
                        help="drop stale frames (yes) or read every frame (no); auto asks the source")


class OverlayRecorder:
    """The frame callback: processor.process -> overlay, keeping json-ready records per frame."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.frames: list[dict] = []
        self.latencies_ms: list[float] = []

    def __call__(self, frame: np.ndarray, stamp: float) -> np.ndarray:
        from mobius_ros.messages import instance_record

        from ..runtime.overlay import draw_result

        start = time.perf_counter()
        result = self.processor.process(frame, stamp)
        shown = draw_result(frame, result)
        self.latencies_ms.append((time.perf_counter() - start) * 1000)
        self.frames.append({"frame": len(self.frames), "stamp": float(stamp),
                            "instances": [instance_record(inst) for inst in result.instances],
                            "timings_ms": {k: round(float(v), 3) for k, v in result.timings_ms.items()},
                            "kept_per_layer": [int(k) for k in result.kept_per_layer]})
        return shown


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max of per-frame latencies in ms ({} when there are none)."""
    if not latencies_ms:
        return {}
    values = np.asarray(latencies_ms, dtype=np.float64)
    summary = {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}
    return {**summary, "mean": float(values.mean()), "max": float(values.max())}


def _outputs(args: argparse.Namespace) -> tuple[str, Path | None, Path]:
    """(sink description, video file or None, json path)."""
    if args.sink:
        video = None
        sink = args.sink
    else:
        video = Path(args.out) if args.out else default_output(DEFAULT_OUT)
        video.parent.mkdir(parents=True, exist_ok=True)
        sink = file_sink(video)
    if args.json:
        results = Path(args.json)
    else:
        results = video.with_suffix(".json") if video else DEFAULT_OUT.parent / "results.json"
    return sink, video, results


def _processor(args: argparse.Namespace, prompts: list[str]):
    from ..runtime.processor import FrameProcessor, ProcessorConfig

    model = args.weights if args.backend == "torch" else args.onnx
    processor = FrameProcessor(ProcessorConfig(backend=args.backend, model=model, threads=args.threads,
                                               score_threshold=args.threshold, size=args.size, preset=args.preset,
                                               **stream_settings(args)), prompts)
    processor.warm_up()                 # before the pipeline plays: a live source's first frame is not late
    return processor


def _summary(args, prompts, sink: str, stats: PipelineStats, recorder: OverlayRecorder, wall_s: float) -> dict:
    return {"source": args.source, "sink": sink, "prompts": prompts, "frames": stats.frames,
            "width": stats.width, "height": stats.height, "framerate": list(stats.framerate),
            "live": stats.live, "ended_by": stats.ended_by, "wall_s": wall_s,
            "fps": stats.frames / wall_s if wall_s > 0 else 0.0,
            "latency_ms": latency_summary(recorder.latencies_ms), "per_frame": recorder.frames}


def run(args: argparse.Namespace) -> int:
    try:
        prompts = parse_prompts(args.prompts)
        sink, video, results = _outputs(args)
        config = PipelineConfig(args.source, sink, args.max_frames, {"auto": None, "yes": True, "no": False}[args.live])
        check_descriptions(config)  # a typo fails now, not after the model has loaded
        recorder = OverlayRecorder(_processor(args, prompts))
        start = time.perf_counter()
        stats = run_pipeline(config, recorder)
        wall_s = time.perf_counter() - start
    except (PipelineError, ValueError, FileNotFoundError) as error:
        print(f"mobius gst: {error}", file=sys.stderr)
        return 1
    summary = _summary(args, prompts, sink, stats, recorder, wall_s)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=1))
    latency = summary["latency_ms"]
    print(f"[gst] {stats.frames} frames {stats.width}x{stats.height} ({stats.ended_by}), "
          f"{summary['fps']:.1f} FPS end to end, frame latency p50 {latency['p50']:.1f} ms "
          f"p90 {latency['p90']:.1f} ms")
    print(f"[gst] {'video: ' + str(video) if video else 'sink: ' + sink}\n[gst] results: {results}")
    return 0
