"""Latency at 384x384 on onnxruntime (paper Tab. 1 analogue) and the runtime goals of issue 9.

1. The three architectures (mobius_mini_m, glee_maskdino_mini_m, glee_rtdetr_mini_m), random
   weights, each exported once (cached), the same random image and 80 prompts x 8 tokens as the FLOPs
   table, timed in round-robin so their ratios share the machine's load.
2. The default (shipped) model, model only: one real letterboxed frame, the default prompts, the
   configured in-graph pruning. Goal: >= 60 FPS.
3. End to end through `FrameProcessor` (preprocess, model, postprocess, tracker, id image) over a
   generated clip, every frame decoded (T=1) and with kernel reuse (T=3), the two processors
   alternating clip by clip. Goals: >= 30 FPS at T=1, per-frame p99 <= 2 x median, T=3 >= 1.5x T=1.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from perf_common import (Section, Settings, cached_onnx, fmt_ms, goal, machine_line, model_pruning, onnx_session,
                         random_feed, time_interleaved)

CONFIGS = ("mobius_mini_m", "glee_maskdino_mini_m", "glee_rtdetr_mini_m")
SIZE = 384


def config_latency(settings: Settings, prompts: int = 80, tokens: int = 8) -> dict[str, dict]:
    """Median ms / FPS of each config's ONNX graph (random weights, configured pruning)."""
    sessions, feeds = {}, {}
    for name in CONFIGS:
        session = onnx_session(cached_onnx(name, SIZE, settings.cache), settings.threads)
        layers = session.get_inputs()[6].shape[0]
        sessions[name] = session
        feeds[name] = random_feed(session, prompts, tokens, prune=model_pruning(name, layers))
    timings = time_interleaved({n: (lambda n=n: sessions[n].run(None, feeds[n])) for n in CONFIGS},
                               max(2, settings.repeats // 2), settings.warmup)
    return {n: {"median_ms": t.median, "p90_ms": t.percentile(90), "fps": 1000.0 / t.median}
            for n, t in timings.items()}


def default_model(settings: Settings, frame: np.ndarray):
    """The shipped model (bench_command.BenchModel), or mobius_nano with random weights whose
    classifier is shifted so that a few queries pass the score threshold."""
    from perception_core import assets
    from perception_core.bench_command import bench_model

    folder = settings.cache / "random_nano"
    folder.mkdir(parents=True, exist_ok=True)
    return bench_model(folder, SIZE, frame, list(assets.DEFAULT_PROMPTS))


def model_only(settings: Settings, onnx_path, frame: np.ndarray) -> dict:
    """Model-only latency of one real frame with the default prompts and configured pruning."""
    from perception_core import assets
    from perception_core.runtime.preprocess import preprocess
    from perception_core.runtime.prompts import encode_prompts

    session = onnx_session(onnx_path, settings.threads)
    layers = session.get_inputs()[6].shape[0]
    hidden = session.get_inputs()[4].shape[2]
    thresholds, min_kept = model_pruning(assets.PRESET, layers)
    _, text = encode_prompts(list(assets.DEFAULT_PROMPTS))
    image, _ = preprocess(frame, session.get_inputs()[0].shape[2])
    feed = {"images": image, **text, "track_queries": np.zeros((1, 0, hidden), np.float32),
            "track_boxes": np.zeros((1, 0, 4), np.float32), "prune_thresholds": thresholds,
            "prune_min_kept": min_kept}
    timing = time_interleaved({"model": lambda: session.run(None, feed)}, settings.repeats * 2, settings.warmup)["model"]
    return {"median_ms": timing.median, "p99_ms": timing.p99, "fps": 1000.0 / timing.median,
            "kept_per_layer": [int(k) for k in session.run(None, feed)[5]]}


def end_to_end(settings: Settings, model, frames: list[np.ndarray]) -> dict[int, dict]:
    """FrameProcessor over the clip, T=1 and T=3 alternating clip by clip; per-frame totals."""
    from perception_core import assets
    from perception_core.runtime.processor import FrameProcessor, ProcessorConfig

    processors = {}
    for reuse in (1, 3):
        config = ProcessorConfig(backend="onnx", model=str(model.onnx), preset=model.preset,
                                 threads=settings.threads, kernel_reuse=reuse, size=SIZE)
        processors[reuse] = FrameProcessor(config, list(assets.DEFAULT_PROMPTS))
        for frame in frames[:settings.warmup + 2]:
            processors[reuse].process(frame)
    totals = {reuse: [] for reuse in processors}
    clip_ms = {reuse: [] for reuse in processors}
    instances = {reuse: [] for reuse in processors}
    for _ in range(2 if settings.quick else 5):
        for reuse, processor in processors.items():
            processor.reset()
            start = time.perf_counter()
            for frame in frames:
                result = processor.process(frame)
                totals[reuse].append(result.timings_ms["total"])
                instances[reuse].append(len(result.instances))
            clip_ms[reuse].append((time.perf_counter() - start) * 1000.0 / len(frames))
    return {reuse: {"frame_ms": statistics.median(clip_ms[reuse]), "fps": 1000.0 / statistics.median(clip_ms[reuse]),
                    "median_ms": statistics.median(totals[reuse]), "p99_ms": float(np.percentile(totals[reuse], 99)),
                    "instances": float(np.mean(instances[reuse]))} for reuse in processors}


def run(settings: Settings) -> Section:
    import os

    from perf_common import clip_frames

    load = os.getloadavg()
    frames, _ = clip_frames(12 if settings.quick else 48)
    configs = config_latency(settings)
    model = default_model(settings, frames[0])
    single = model_only(settings, model.onnx, frames[len(frames) // 2])
    e2e = end_to_end(settings, model, frames)
    data = {"configs": configs, "model_only": single, "end_to_end": e2e, "trained": model.trained}
    return Section("latency", "Latency at 384x384, onnxruntime", render(data, settings, len(frames), load), data=data)


def render(data: dict, settings: Settings, frames: int, load) -> str:
    configs, single, e2e = data["configs"], data["model_only"], data["end_to_end"]
    base = configs["glee_maskdino_mini_m"]["median_ms"]
    model = "the shipped mobius_nano" if data["trained"] else "mobius_nano with RANDOM weights (no shipped model)"
    speedup = e2e[1]["frame_ms"] / e2e[3]["frame_ms"]
    lines = [f"Conditions: onnxruntime CPU, {settings.threads} intra-op threads, {machine_line(load)}; "
             f"{'QUICK mode (few repeats): indicative only' if settings.quick else 'full mode'}.", "",
             "### Architectures (paper Tab. 1 analogue)", "",
             f"Random weights, configured pruning (random weights keep `min_kept`), one random 384x384 image, "
             f"80 prompts x 8 tokens; {max(2, settings.repeats // 2)} interleaved runs each, median.", "",
             "| Model | median ms | p90 ms | FPS | time vs glee_maskdino_mini_m |", "|---|---|---|---|---|"]
    for name, row in configs.items():
        lines.append(f"| {name} | {fmt_ms(row['median_ms'])} | {fmt_ms(row['p90_ms'])} | {row['fps']:.1f} "
                     f"| {row['median_ms'] / base:.2f} |")
    p99_ratio = e2e[1]["p99_ms"] / e2e[1]["median_ms"]
    lines += ["", f"### Default model: {model}", "",
              f"Model only (one letterboxed clip frame, the 4 default prompts, configured pruning, kept per layer "
              f"{single['kept_per_layer']}): median {single['median_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms = "
              f"**{single['fps']:.1f} FPS** (goal >= 60: {goal(single['fps'] >= 60)}).", "",
              f"End to end through FrameProcessor (preprocess, model, postprocess, tracking, id image) on a generated "
              f"{frames}-frame 288x384 clip; T=1 and T=3 processors alternate clip by clip:", "",
              "| kernel reuse T | FPS (clip mean) | frame ms (mean) | per-frame median ms | p99 ms | p99 / median "
              "| instances/frame |", "|---|---|---|---|---|---|---|"]
    for reuse, row in e2e.items():
        lines.append(f"| {reuse} | {row['fps']:.1f} | {row['frame_ms']:.1f} | {row['median_ms']:.1f} "
                     f"| {row['p99_ms']:.1f} | {row['p99_ms'] / row['median_ms']:.2f} | {row['instances']:.1f} |")
    lines += ["", "Goals:",
              f"- end-to-end FPS with tracking (T=1) >= 30: {e2e[1]['fps']:.1f} FPS, {goal(e2e[1]['fps'] >= 30)}",
              f"- p99 <= 2 x median (T=1): {p99_ratio:.2f}x, {goal(p99_ratio <= 2.0)}",
              f"- kernel reuse T=3 speed-up >= 1.5x: {speedup:.2f}x, {goal(speedup >= 1.5)}", ""]
    return "\n".join(lines)
