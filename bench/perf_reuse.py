"""Frames between keyframes: kernel reuse vs kernel + bottleneck reuse, what each costs and how well
its masks follow the objects.

Cost: the three graphs a reuse schedule runs, each its own onnxruntime session as in the runtime,
timed in round-robin blocks on one clip frame: the model (keyframes), the mask graph (kernel reuse:
backbone + pixel decoder + the keyframe's kernels) and the lateral graph (bottleneck reuse: the
backbone's first stage and the stride-4 lateral map; the coarse mask features are the keyframe's).

Accuracy, against ground truth on generated clips, with the queries matched by an oracle so that the
score threshold and the tracker play no part: on each keyframe every visible object gets the query
whose mask overlaps it best; on each of the next OFFSETS frames that query's kernel is applied
  - full decode: that frame decoded by the model, its best-overlapping query (decoding every frame),
  - kernel reuse: the mask graph on that frame,
  - kernel + bottleneck reuse: the lateral graph on that frame with the keyframe's coarse map, the
    coarse part moved after the object as the runtime does (runtime/motion.py, its shift carried
    from frame to frame),
  - bottleneck reuse without motion compensation: the same two parts simply added,
  - frozen keyframe mask: the keyframe's mask unchanged (no computation: how far the objects moved),
and the mask IoU with the object's true mask is averaged over objects, frames and clips.
"""
from __future__ import annotations

import os

import numpy as np

from perf_common import (BLOCK, Section, Settings, clip_frames, clip_prompts, machine_line, model_pruning,
                         time_interleaved)

OFFSETS = 4            # frames after each keyframe (T = 5): T=3 reads offsets 1-2
MIN_AREA = 64          # ground-truth pixels for an object to be matched on a keyframe
CLIP_SEED = 200
METHODS = ("full decode", "kernel reuse", "kernel + bottleneck reuse", "bottleneck reuse without motion compensation",
           "frozen keyframe mask")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def clip_ious(backend, frames: list[np.ndarray], tracks: list[dict],
              prompts: list[str]) -> dict[str, list[list[float]]]:
    """{method: per offset (1..OFFSETS) the IoUs of every matched object} for one clip."""
    from perception_core.runtime.motion import align, mask_centroids
    from perception_core.runtime.postprocess import mask_to_frame
    from perception_core.runtime.preprocess import preprocess
    from perception_core.runtime.prompts import encode_prompts

    _, text = encode_prompts(prompts)
    feeds, decoded = [], {}
    for frame in frames:
        image, letterbox = preprocess(frame, backend.size)
        feeds.append((decode_feed(backend, image, text), letterbox))

    def decode(t: int) -> tuple[dict, list[np.ndarray]]:
        if t not in decoded:
            out = backend.decode(feeds[t][0])
            decoded[t] = out, [mask_to_frame(m, feeds[t][1]) for m in out["pred_masks"][0]]
        return decoded[t]

    ious = {method: [[] for _ in range(OFFSETS)] for method in METHODS}
    for key in range(0, len(frames) - OFFSETS, OFFSETS + 1):
        out, masks = decode(key)
        matched = []                                    # (track, query row) per visible object
        for track in tracks:
            truth = track["masks"][key]
            if truth is None or truth.sum() < MIN_AREA or not masks:
                continue
            matched.append((track, int(np.argmax([mask_iou(m, truth) for m in masks]))))
        if not matched:
            continue
        rows = [row for _, row in matched]
        kernels = out["query_embed"][:, rows]
        centroids = mask_centroids(out["pred_masks"][0, rows])
        shifts = None
        for offset in range(1, OFFSETS + 1):
            t = key + offset
            feed, letterbox = feeds[t]
            coarse, fine = backend.lateral_masks(feed["images"], out["mask_coarse"], kernels)
            aligned, shifts = align(coarse[0], fine[0], centroids, shifts)
            reused = {"kernel reuse": backend.masks(feed, kernels)[0], "kernel + bottleneck reuse": aligned,
                      "bottleneck reuse without motion compensation": coarse[0] + fine[0]}
            _, frame_masks = decode(t)
            for index, (track, row) in enumerate(matched):
                truth = track["masks"][t]
                if truth is None:
                    continue
                got = {"full decode": max((mask_iou(m, truth) for m in frame_masks), default=0.0),
                       "frozen keyframe mask": mask_iou(masks[row], truth)}
                for method, logits in reused.items():
                    got[method] = mask_iou(mask_to_frame(logits[index], letterbox), truth)
                for method, value in got.items():
                    ious[method][offset - 1].append(value)
    return ious


def decode_feed(backend, image: np.ndarray, text: dict) -> dict:
    """The model's inputs for one letterboxed image: the prompts' text, no track queries and the
    shipped preset's pruning."""
    from perception_core import assets

    thresholds, min_kept = model_pruning(assets.PRESET, backend.num_layers)
    return {"images": image, **text, "track_queries": np.zeros((1, 0, backend.hidden_dim), np.float32),
            "track_boxes": np.zeros((1, 0, 4), np.float32), "prune_thresholds": thresholds, "prune_min_kept": min_kept}


def graph_costs(settings: Settings, backend, frame: np.ndarray, prompts: list[str], kernels: int = 3) -> dict:
    """Median ms of the model, the mask graph and the lateral graph on one frame (round-robin blocks)."""
    from perception_core.runtime.preprocess import preprocess
    from perception_core.runtime.prompts import encode_prompts

    _, text = encode_prompts(prompts)
    image, _ = preprocess(frame, backend.size)
    feed = decode_feed(backend, image, text)
    out = backend.decode(feed)
    queries = np.random.default_rng(0).standard_normal((1, kernels, backend.hidden_dim)).astype(np.float32)
    timings = time_interleaved({"model": lambda: backend.decode(feed),
                                "mask graph": lambda: backend.masks(feed, queries),
                                "lateral graph": lambda: backend.lateral_masks(image, out["mask_coarse"], queries)},
                               settings.repeats * 2, settings.warmup, BLOCK)
    return {name: timing.median for name, timing in timings.items()}


def run(settings: Settings) -> Section:
    from tqdm import tqdm

    from perf_latency import default_model
    from perception_core.runtime.backends import OnnxBackend

    load = os.getloadavg()
    clips, length = (2, 2 * (OFFSETS + 1) + 1) if settings.quick else (16, 5 * (OFFSETS + 1) + 1)
    first, first_tracks = clip_frames(length, seed=CLIP_SEED)
    model = default_model(settings, first[0])
    backend = OnnxBackend(model.onnx, settings.threads, model.preset)
    costs = graph_costs(settings, backend, first[length // 2], clip_prompts(first_tracks))
    ious = {method: [[] for _ in range(OFFSETS)] for method in METHODS}
    for clip in tqdm(range(clips), desc="reuse accuracy clips", unit="clip"):
        frames, tracks = (first, first_tracks) if clip == 0 else clip_frames(length, seed=CLIP_SEED + clip)
        for method, per_offset in clip_ious(backend, frames, tracks, clip_prompts(tracks)).items():
            for offset, values in enumerate(per_offset):
                ious[method][offset].extend(values)
    data = {"costs": costs, "ious": ious, "clips": clips, "length": length, "trained": model.trained}
    plot(data, settings.docs / "bench_reuse.png")
    return Section("reuse", "Between keyframes: kernel reuse vs bottleneck reuse", render(data, settings, load),
                   ["bench_reuse.png"], data)


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def paired_difference(a: list[float], b: list[float], resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a over paired samples and its 95% bootstrap interval."""
    diff = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, diff.size, (resamples, diff.size))
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def speedup(costs: dict, between: str, interval: int = 3) -> float:
    """Model-time speed-up of decoding every `interval`-th frame and running `between` in between."""
    return interval * costs["model"] / (costs["model"] + (interval - 1) * costs[between])


def render(data: dict, settings: Settings, load) -> str:
    costs, ious = data["costs"], data["ious"]
    model = "the shipped mobius_nano" if data["trained"] else "mobius_nano with RANDOM weights (no shipped model)"
    lines = [f"Conditions: {model}, onnxruntime CPU, {settings.threads} threads, {machine_line(load)}; "
             f"{'QUICK mode: indicative only' if settings.quick else 'full mode'}.", "",
             "Cost per run (one clip frame, 3 kernels; median of round-robin blocks):", "",
             "| graph | what it runs | median ms | vs model |", "|---|---|---|---|"]
    what = {"model": "everything (keyframes)", "mask graph": "backbone, pixel decoder, kernels (kernel reuse)",
            "lateral graph": "backbone stage 1, stride-4 lateral map, kernels (bottleneck reuse)"}
    for name, ms in costs.items():
        lines.append(f"| {name} | {what[name]} | {ms:.2f} | {ms / costs['model']:.2f} |")
    kernel, bottleneck = speedup(costs, "mask graph"), speedup(costs, "lateral graph")
    lines += ["", f"Model-time speed-up at T=3 from these costs: kernel reuse {kernel:.2f}x, kernel + bottleneck "
                  f"reuse {bottleneck:.2f}x (end to end, with pre/postprocessing and tracking: the latency section).",
              "", f"Mask IoU with ground truth, oracle-matched queries ({data['clips']} generated 'normal' clips of "
                  f"{data['length']} frames, a keyframe every {OFFSETS + 1} frames; objects of at least {MIN_AREA} "
                  f"pixels on the keyframe):", "",
              "| method | " + " | ".join(f"frame +{o}" for o in range(1, OFFSETS + 1)) + " | T=3 (+1, +2) |",
              "|---|" + "---|" * (OFFSETS + 1)]
    for method in METHODS:
        per = ious[method]
        lines.append(f"| {method} | " + " | ".join(f"{mean(v):.3f}" for v in per)
                     + f" | {mean(per[0] + per[1]):.3f} |")
    count = len(ious["full decode"][0])
    full, kern, both, plain = (mean(ious[m][0] + ious[m][1]) for m in METHODS[:4])
    gap, low, high = paired_difference(ious["kernel reuse"][0] + ious["kernel reuse"][1],
                                       ious["kernel + bottleneck reuse"][0] + ious["kernel + bottleneck reuse"][1])
    lines += ["", f"{count} objects at frame +1. At T=3, kernel reuse keeps {kern / full:.1%} of the full decode's "
                  f"IoU and kernel + bottleneck reuse {both / full:.1%} ({plain / full:.1%} without moving the "
                  f"keyframe's coarse part after the object); the frozen keyframe mask shows how far the objects "
                  f"move. Paired over the same objects and frames, bottleneck minus kernel reuse at T=3: "
                  f"{gap:+.3f} IoU (95% bootstrap interval {low:+.3f} to {high:+.3f}). Bottleneck reuse is opt-in "
                  f"(`reuse_bottleneck`, `--reuse-bottleneck`).", "",
              "![reuse](bench_reuse.png)", ""]
    return "\n".join(lines)


def plot(data: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.2))
    offsets = list(range(1, OFFSETS + 1))
    for method in METHODS:
        axis.plot(offsets, [mean(v) for v in data["ious"][method]], marker="o", label=method)
    axis.set_xticks(offsets)
    axis.set_xlabel("frames after the keyframe")
    axis.set_ylabel("mask IoU with ground truth")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    costs = data["costs"]
    axis.set_title(f"ms per frame: model {costs['model']:.1f}, mask graph {costs['mask graph']:.1f}, "
                   f"lateral graph {costs['lateral graph']:.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
