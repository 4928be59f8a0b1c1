"""`mobius bench`: runtime latency per stage and frames per second of the FrameProcessor at 384 px.

Compares, in one run on one machine (so the ratios are meaningful even when absolute numbers drift
with machine load): onnxruntime vs torch, 1 vs 2 inference threads, decoding every frame vs kernel
reuse (T=3) vs kernel and bottleneck reuse (T=3, '3b' in --kernel-reuse). Each configuration runs
the same generated clip `--repeats` times after a warm-up; per-stage numbers are medians over
frames, the per-clip mean frame time is taken per repeat and the median over repeats is reported
(FPS = 1000 / that). Prints a Markdown section (`--out PATH` also writes it); `make bench` puts
the same table into docs/BENCHMARKS.md (bench/perf_runtime.py).

The clip's own categories are the prompts (unless --prompts names others). The shipped default model
is used when present, at the runtime's score threshold (its scores are calibrated, `mobius calibrate`;
frames between keyframes with nothing tracked skip inference, so kernel reuse measured where nothing
passes the threshold is an upper bound: the section warns when that happens); otherwise mobius_nano
with random weights is exported to a temporary folder, its classifier bias shifted so that about 8
queries of the first frame pass the runtime's threshold.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STAGES = ("preprocess", "inference", "postprocess", "tracking", "total")


@dataclass(frozen=True)
class BenchModel:
    onnx: Path
    weights: Path
    preset: str
    trained: bool


@dataclass
class BenchRow:
    backend: str
    threads: int
    kernel_reuse: int
    bottleneck: bool                  # bottleneck reuse on top of kernel reuse
    stage_ms: dict[str, float]        # median over frames of every repeat
    frame_ms: float                   # median over repeats of the mean frame time
    keyframe_ms: float                # median total of keyframes
    reuse_ms: float | None            # median total of frames between keyframes
    instances: float                  # mean instances per frame
    kept_last: float                  # mean queries entering the last decoder layer (keyframes)

    @property
    def fps(self) -> float:
        return 1000.0 / self.frame_ms

    @property
    def key(self) -> tuple[str, int, str]:
        return self.backend, self.threads, reuse_label(self.kernel_reuse, self.bottleneck)


def reuse_label(kernel_reuse: int, bottleneck: bool) -> str:
    """'3' for kernel reuse T=3, '3b' with bottleneck reuse too (the --kernel-reuse spelling)."""
    return f"{kernel_reuse}{'b' if bottleneck else ''}"


def parse_reuse(value: str) -> tuple[int, bool]:
    """--kernel-reuse entry -> (T, bottleneck): '3' -> (3, False), '3b' -> (3, True)."""
    text = value.strip().lower()
    bottleneck = text.endswith("b")
    digits = text[:-1] if bottleneck else text
    if not digits.isdigit() or int(digits) < 1 or (bottleneck and int(digits) < 2):
        raise ValueError(f"--kernel-reuse entry {value!r}: use T (>= 1) or Tb (T >= 2, with bottleneck reuse)")
    return int(digits), bottleneck


def calibrate_random_model(model, frame: np.ndarray, prompts: list[str], size: int, instances: int = 8,
                           threshold: float = 0.4) -> None:
    """Shifts the classifier bias of a random-weights model so that about `instances` queries of
    `frame` score above `threshold` (a trained model's typical count), instead of none."""
    import torch

    from .runtime.preprocess import preprocess
    from .runtime.prompts import encode_prompts

    _, text = encode_prompts(prompts)
    image, _ = preprocess(frame, size)
    model.deploy()
    with torch.no_grad():
        out = model(torch.from_numpy(image), *(torch.from_numpy(text[k]) for k in ("text_tokens", "text_mask",
                                                                                  "text_pooled")))
        best = out["pred_logits"][0].max(dim=1).values.sort(descending=True).values
        target = float(np.log(threshold / (1 - threshold))) + 0.05
        model.decoder.classifier.bias += target - float(best[min(instances, len(best)) - 1])


def bench_model(folder: Path, size: int, frame: np.ndarray, prompts: list[str]) -> BenchModel:
    from . import assets

    if assets.ONNX.is_file() and assets.WEIGHTS.is_file():
        return BenchModel(assets.ONNX, assets.WEIGHTS, assets.PRESET, True)
    import torch

    from .model.build import build_from_name, save_weights
    from .runtime.export import export_onnx
    from .runtime.export_kernels import export_reuse_graphs

    print("[bench] no shipped model: exporting mobius_nano with random weights ...", flush=True)
    torch.manual_seed(0)
    model = build_from_name("mobius_nano")
    calibrate_random_model(model, frame, prompts, size)
    save_weights(model, folder / "random.safetensors")
    onnx = export_onnx(model, folder / "random.onnx", size)
    export_reuse_graphs(model, onnx, size)
    return BenchModel(onnx, folder / "random.safetensors", "mobius_nano", False)


def run_config(model: BenchModel, frames: list, prompts: list[str], backend: str, threads: int,
               kernel_reuse: int, repeats: int, warmup: int, size: int, threshold: float | None = None,
               bottleneck: bool = False) -> BenchRow:
    """`threshold`: score_threshold and tracker keep_score (at most the tracker's default); None = the
    runtime's defaults."""
    from .runtime.processor import FrameProcessor, ProcessorConfig
    from .runtime.tracker import TrackerConfig

    extra = {}
    if threshold is not None:
        extra = {"score_threshold": threshold,
                 "tracker": TrackerConfig(keep_score=min(threshold, TrackerConfig().keep_score))}
    config = ProcessorConfig(backend=backend, model=str(model.onnx if backend == "onnx" else model.weights),
                             preset=model.preset, threads=threads, kernel_reuse=kernel_reuse,
                             reuse_bottleneck=bottleneck, size=size, **extra)
    processor = FrameProcessor(config, prompts)
    for frame in frames[:warmup]:
        processor.process(frame)
    stages = {name: [] for name in STAGES}
    per_repeat, keyframes, reused, counts, kept = [], [], [], [], []
    for _ in range(repeats):
        processor.reset()
        start = time.perf_counter()
        for frame in frames:
            result = processor.process(frame)
            for name in STAGES:
                stages[name].append(result.timings_ms[name])
            (keyframes if result.kept_per_layer else reused).append(result.timings_ms["total"])
            counts.append(len(result.instances))
            if result.kept_per_layer:
                kept.append(result.kept_per_layer[-1])
        per_repeat.append((time.perf_counter() - start) * 1000 / len(frames))
    return BenchRow(backend, threads, kernel_reuse, bottleneck, {n: statistics.median(v) for n, v in stages.items()},
                    statistics.median(per_repeat), statistics.median(keyframes),
                    statistics.median(reused) if reused else None, float(np.mean(counts)), float(np.mean(kept)))


def text_encoding_ms(prompts: list[str]) -> tuple[float, float]:
    """ms to encode a new prompt list (MiniLM already loaded) and the same list again (cached)."""
    from .runtime.prompts import encode_prompts

    encode_prompts(["load the text model"])
    start = time.perf_counter()
    encode_prompts(prompts + ["a prompt never seen"])
    new = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    encode_prompts(prompts + ["a prompt never seen"])
    return new, (time.perf_counter() - start) * 1000


def markdown(rows: list[BenchRow], model: BenchModel, frames: list, prompts: list[str], repeats: int,
             size: int, text_ms: tuple[float, float], load: tuple[float, ...], threshold: float | None = None) -> str:
    base = next((r for r in rows if r.key == ("onnx", 2, "1")), rows[0])
    height, width = frames[0].shape[:2]
    name = f"shipped {model.preset}" if model.trained else f"{model.preset} with RANDOM weights (no shipped model yet)"
    lines = [
        "## Runtime: FrameProcessor latency per stage (`mobius bench`)", "",
        f"Model: {name}, "
        f"input {size}x{size}; clip {len(frames)} frames {width}x{height} (procedural 'normal' scene), prompts "
        f"{prompts}; score threshold "
        f"{'the runtime default' if threshold is None else f'{threshold:g} (and tracker keep_score <= it)'}; "
        f"{repeats} repeats after warm-up. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, load average {load[0]:.1f} before / {os.getloadavg()[0]:.1f} after "
        f"(other jobs share the machine): compare rows of this table, not across runs.", "",
        "Stage columns: median ms over all frames. Frame ms: median over repeats of the mean time per frame "
        "(what sets throughput); FPS = 1000 / frame ms. Keyframe / reuse: median total ms of fully decoded "
        "frames / of kernel-reuse frames. T: full decode every T frames; Tb: with bottleneck reuse between "
        "keyframes (only the stride-4 lateral map is recomputed). vs base: frame-time ratio to "
        f"{base.backend}, {base.threads} threads, T={base.key[2]}.", "",
        "| backend | threads | T | preprocess | inference | postprocess | tracking | total | frame ms | FPS "
        "| keyframe | reuse | vs base | inst/frame | kept (last layer) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.stage_ms
        lines.append(f"| {r.backend} | {r.threads} | {r.key[2]} | {s['preprocess']:.1f} | {s['inference']:.1f} "
                     f"| {s['postprocess']:.1f} | {s['tracking']:.1f} | {s['total']:.1f} | {r.frame_ms:.1f} "
                     f"| {r.fps:.1f} | {r.keyframe_ms:.1f} | {'-' if r.reuse_ms is None else f'{r.reuse_ms:.1f}'} "
                     f"| {r.frame_ms / base.frame_ms:.2f} | {r.instances:.1f} | {r.kept_last:.0f} |")
    pick = {r.key: r for r in rows}

    def ratio(a, b) -> str:
        return f"{pick[a].frame_ms / pick[b].frame_ms:.2f}" if a in pick and b in pick else "n/a"
    lines += ["", "Ratios of frame time (same run):",
              f"- torch / onnxruntime (2 threads, T=1): {ratio(('torch', 2, '1'), ('onnx', 2, '1'))}; "
              f"(1 thread): {ratio(('torch', 1, '1'), ('onnx', 1, '1'))}",
              f"- 2 threads / 1 thread (onnxruntime, T=1): {ratio(('onnx', 2, '1'), ('onnx', 1, '1'))}; "
              f"(torch): {ratio(('torch', 2, '1'), ('torch', 1, '1'))}"]
    for label, name in (("3", "kernel reuse"), ("3b", "kernel + bottleneck reuse")):
        lines.append(f"- {name} T=3 / every frame (onnxruntime, 2 threads): "
                     f"{ratio(('onnx', 2, label), ('onnx', 2, '1'))}; (1 thread): "
                     f"{ratio(('onnx', 1, label), ('onnx', 1, '1'))}; (torch, 2 threads): "
                     f"{ratio(('torch', 2, label), ('torch', 2, '1'))}")
    lines += [f"- text encoding (MiniLM, {len(prompts) + 1} prompts) of a new prompt list: {text_ms[0]:.0f} ms; "
              f"the same list again (LRU cache): {text_ms[1]:.3f} ms", ""]
    empty = [r for r in rows if r.kernel_reuse > 1 and r.instances < 0.5]
    if empty:  # frames between keyframes with no kernels skip inference: not a measurement of kernel reuse
        lines += [f"Warning: {len(empty)} kernel-reuse row(s) found under 0.5 instances per frame, so most frames "
                  "between keyframes had no kernels to apply and skipped inference: their reuse ms and FPS are an "
                  "upper bound, not the cost of kernel reuse. Lower --score-threshold or prompt for what the clip "
                  "shows.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=24, help="clip length")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the clip per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="frames run before timing each configuration")
    parser.add_argument("--size", type=int, default=384, help="network input size (random-weights model only)")
    parser.add_argument("--prompts", default="", help="comma-separated prompts (default: the clip's own categories)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="score threshold and tracker keep_score (default: the runtime's own)")
    parser.add_argument("--backends", default="onnx,torch", help="comma-separated subset of onnx,torch")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--kernel-reuse", default="1,3,3b",
                        help="comma-separated T values; Tb = T with bottleneck reuse (default 1,3,3b)")
    parser.add_argument("--out", default="", help="also write the Markdown section to this file")


def run(args: argparse.Namespace) -> int:
    text = measure(args)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"[bench] wrote {args.out}")
    return 0


def measure(args: argparse.Namespace) -> str:
    """Runs every configuration; returns the Markdown section."""
    from tqdm import tqdm

    from .training.synth.config import make_config
    from .training.synth.video import generate_video
    from .training.synth.vocabulary import present_names

    frames, tracks = generate_video(7, make_config("normal", frames=(args.frames, args.frames)))
    prompts = [p.strip() for p in args.prompts.split(",")] if args.prompts else present_names(tracks)
    configs = [(b, int(t), *parse_reuse(k)) for b in args.backends.split(",") for t in args.threads.split(",")
               for k in args.kernel_reuse.split(",")]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        model = bench_model(Path(folder), args.size, frames[0], prompts)
        size = 384 if model.trained else args.size
        threshold = args.score_threshold
        rows = []
        for backend, threads, reuse, bottleneck in tqdm(configs, desc="bench configurations", unit="config"):
            rows.append(run_config(model, frames, prompts, backend, threads, reuse, args.repeats, args.warmup, size,
                                   threshold, bottleneck))
            tqdm.write(f"[bench] {backend} threads={threads} T={rows[-1].key[2]}: {rows[-1].frame_ms:.1f} ms/frame "
                       f"({rows[-1].fps:.1f} FPS)")
        return markdown(rows, model, frames, prompts, args.repeats, size, text_encoding_ms(prompts), load, threshold)
