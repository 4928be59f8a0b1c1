"""`mobius infer INPUT --prompts "red star,circle"`: segment and track a video, image folder or image.

Writes an overlay video (masks, track ids, labels; mp4v via OpenCV) and YouTube-VIS results json.

    mobius infer clip.mp4 --prompts "red star,circle" --out overlay.mp4 --json results.json
    mobius infer frames/ --prompts "red star" --onnx model.onnx --kernel-reuse 3
    mobius infer clip.mp4 --prompts "red star" --prompts-at "20:blue square,circle"   # switch at frame 20

For library use (and the end-to-end tests): `run_video(processor, frames)` and
`runtime.ytvis_results.to_ytvis_results(results)`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .runtime.stream_options import add_stream_arguments, stream_settings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class FrameSource:
    """Frames (uint8 RGB) of a video file, an image folder (sorted by name) or one image."""

    def __init__(self, path: str | Path):
        import cv2

        self.path = Path(path)
        self.fps: float | None = None
        if self.path.is_dir():
            self.images = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.images:
                raise ValueError(f"folder '{self.path}' has no images ({', '.join(IMAGE_SUFFIXES)})")
            self.count = len(self.images)
        elif not self.path.is_file():
            raise FileNotFoundError(f"input '{self.path}' not found; pass a video file, an image folder or an image")
        elif self.path.suffix.lower() in IMAGE_SUFFIXES:
            self.images, self.count = [self.path], 1
        else:
            self.images = None
            capture = cv2.VideoCapture(str(self.path))
            if not capture.isOpened():
                raise ValueError(f"'{self.path}' is neither an image nor a video OpenCV can open")
            self.fps = capture.get(cv2.CAP_PROP_FPS) or None
            self.count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            capture.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        if self.images is not None:
            for path in self.images:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise ValueError(f"could not read image '{path}'")
                yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            return
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


def run_video(processor, frames: Iterable[np.ndarray], prompt_changes: Mapping[int, Sequence[str]] | None = None,
              fps: float = 10.0, progress: bool = True, total: int | None = None, on_frame=None) -> list:
    """Runs every frame (uint8 RGB) through `processor` from a fresh tracker; returns the
    FrameResults in order. prompt_changes: {frame index: prompts} applied before that frame;
    on_frame(index, frame, result) is called after each frame (writers). stamps = index / fps."""
    return list(stream_video(processor, frames, prompt_changes, fps, progress, total, on_frame))


def stream_video(processor, frames: Iterable[np.ndarray], prompt_changes: Mapping[int, Sequence[str]] | None = None,
                 fps: float = 10.0, progress: bool = True, total: int | None = None, on_frame=None) -> Iterator:
    """Like run_video, but yields FrameResults one by one (long videos)."""
    from tqdm import tqdm

    processor.reset()
    changes = dict(prompt_changes or {})
    bar = tqdm(frames, total=total, desc="frames", unit="frame", disable=not progress)
    for index, frame in enumerate(bar):
        if index in changes:
            processor.set_prompts(changes[index])
        result = processor.process(frame, stamp=index / fps)
        if on_frame is not None:
            on_frame(index, frame, result)
        bar.set_postfix_str(f"{len(result.instances)} inst, {result.timings_ms['total']:.0f} ms", refresh=False)
        yield result


def parse_prompts(text: str) -> list[str]:
    from .model.prompt_io import validate_prompts

    return validate_prompts([p for p in text.split(",")])


def parse_prompt_changes(items: Sequence[str]) -> dict[int, list[str]]:
    """['20:blue square,circle'] -> {20: ['blue square', 'circle']}."""
    changes = {}
    for item in items:
        frame, sep, prompts = item.partition(":")
        if not sep or not frame.strip().isdigit():
            raise ValueError(f"--prompts-at {item!r} must look like FRAME:PROMPT,PROMPT (e.g. 20:red star,circle)")
        changes[int(frame)] = parse_prompts(prompts)
    return changes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="video file, image folder or single image")
    parser.add_argument("--prompts", required=True, help="comma-separated text prompts, e.g. 'red star,circle'")
    parser.add_argument("--prompts-at", action="append", default=[], metavar="FRAME:PROMPTS",
                        help="switch to these prompts from frame FRAME on (repeatable)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--weights", help="torch weights (.safetensors); selects the torch backend")
    model.add_argument("--onnx", help="exported .onnx model (onnxruntime backend)")
    parser.add_argument("--backend", choices=("onnx", "torch"), help="default: torch with --weights, else onnx")
    parser.add_argument("--config", default="mobius_nano", help="model preset of the weights (torch backend)")
    parser.add_argument("--size", type=int, default=384, help="network input size (torch backend)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads")
    parser.add_argument("--threshold", type=float, default=0.4, help="score threshold for new instances")
    add_stream_arguments(parser)
    parser.add_argument("--out", help="overlay video (.mp4)")
    parser.add_argument("--json", help="YouTube-VIS results json")
    parser.add_argument("--data", help="COCO/YouTube-VIS json whose category ids the prompts map to")
    parser.add_argument("--video-id", type=int, default=1, help="video_id written into the results")
    parser.add_argument("--fps", type=float, default=None, help="overlay frame rate (default: the video's, or 10)")


def processor_config(args: argparse.Namespace):
    from .runtime.processor import ProcessorConfig

    backend = args.backend or ("torch" if args.weights else "onnx")
    model = args.weights or args.onnx
    if backend == "onnx" and args.weights or backend == "torch" and args.onnx:
        raise ValueError(f"--backend {backend} does not run {'--weights' if args.weights else '--onnx'}; "
                         f"use --onnx with onnx and --weights with torch")
    return ProcessorConfig(backend=backend, model=model, preset=args.config, threads=args.threads,
                           score_threshold=args.threshold, size=args.size, **stream_settings(args))


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"mobius infer: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import cv2

    from .runtime.overlay import draw_result
    from .runtime.processor import FrameProcessor
    from .runtime.ytvis_results import YtvisResults, category_ids_from_dataset, write_json

    prompts = parse_prompts(args.prompts)
    changes = parse_prompt_changes(args.prompts_at)
    every_prompt = list(dict.fromkeys(prompts + [p for c in changes.values() for p in c]))
    category_ids = category_ids_from_dataset(args.data, every_prompt) if args.data else None
    source = FrameSource(args.input)
    processor = FrameProcessor(processor_config(args), prompts)
    fps = args.fps or source.fps or 10.0
    collector = YtvisResults(args.video_id, category_ids)
    writer, size = None, None
    latencies, counts = [], []

    def on_frame(index, frame, result):
        nonlocal writer, size
        collector.add(result)
        latencies.append(result.timings_ms["total"])
        counts.append(len(result.instances))
        if args.out:
            overlay = cv2.cvtColor(draw_result(frame, result), cv2.COLOR_RGB2BGR)
            if writer is None:
                size = (overlay.shape[1], overlay.shape[0])
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            writer.write(overlay if (overlay.shape[1], overlay.shape[0]) == size else cv2.resize(overlay, size))

    try:
        for _ in stream_video(processor, source, changes, fps, total=source.count, on_frame=on_frame):
            pass
    finally:
        if writer is not None:
            writer.release()
    entries = collector.to_list()
    if args.json:
        write_json(entries, args.json)
    print(f"[infer] {collector.num_frames} frames, {len(entries)} tracks, {np.mean(counts) if counts else 0:.1f} "
          f"instances/frame, {np.median(latencies) if latencies else 0:.1f} ms/frame median "
          f"({processor.backend.name}, {args.threads} threads, kernel reuse {args.kernel_reuse}"
          f"{' with bottleneck reuse' if args.reuse_bottleneck else ''})")
    for label, path in (("overlay", args.out), ("results", args.json)):
        if path:
            print(f"[infer] {label}: {path}")
    return 0
