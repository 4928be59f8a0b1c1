"""`mobius demo`: the end-to-end job on a generated sample clip.

Generates a procedural clip, exports the model to ONNX, encodes the prompts with MiniLM, runs every
frame through onnxruntime (letterbox -> model with in-graph pruning -> masks at frame resolution)
and writes an overlay video plus a JSON summary. Until a trained default model ships, the model has
random weights: the demo then shows the pipeline and its speed, not meaningful masks, and says so.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_PROMPTS = "red circle,blue square,green triangle,yellow star"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "assets" / "mobius_nano.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS, help="comma-separated text prompts")
    parser.add_argument("--config", default="mobius_nano", help="model preset")
    parser.add_argument("--weights", help="trained weights; default: the shipped model if present")
    parser.add_argument("--size", type=int, default=384, help="network input size (multiple of 32)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--frames", type=int, default=24, help="clip length")
    parser.add_argument("--seed", type=int, default=7, help="clip seed")
    parser.add_argument("--threshold", type=float, default=0.3, help="score threshold (trained model)")


def _export(args, out: Path) -> tuple[Path, bool, dict[str, np.ndarray]]:
    """Exports the model; returns the ONNX path, whether weights were trained, and its pruning inputs."""
    import torch

    from .model.build import build_from_name, load_weights
    from .runtime.export import export_onnx, prune_inputs

    torch.manual_seed(0)
    model = build_from_name(args.config)
    weights = Path(args.weights) if args.weights else (SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None)
    if weights is not None:
        load_weights(model, weights)
    print(f"[demo] exporting {args.config} ({'weights ' + str(weights) if weights else 'RANDOM weights'}) "
          f"to ONNX at {args.size}px ...", flush=True)
    thresholds, min_kept = prune_inputs(model)
    pruning = {"prune_thresholds": thresholds.numpy(), "prune_min_kept": min_kept.numpy()}
    return export_onnx(model, out / "model.onnx", args.size), weights is not None, pruning


def _feed(engine, frame, text, pruning):
    from .runtime.preprocess import preprocess

    image, box = preprocess(frame, engine.size)
    feed = {"images": image, "text_tokens": text.tokens.numpy(), "text_mask": text.mask.numpy(),
            "text_pooled": text.pooled.numpy(),
            "track_queries": np.zeros((1, 0, engine.hidden_dim), np.float32),
            "track_boxes": np.zeros((1, 0, 4), np.float32), **pruning}
    return feed, box


def run(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from .model.prompt_io import validate_prompts
    from .model.text_encoder import MiniLMTextEncoder
    from .runtime.onnx_engine import OnnxEngine
    from .runtime.overlay import draw
    from .runtime.postprocess import to_instances
    from .training.synth.config import make_config
    from .training.synth.video import generate_video

    prompts = validate_prompts([p for p in args.prompts.split(",")])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, trained, pruning = _export(args, out)
    engine = OnnxEngine(onnx_path, threads=args.threads)
    text = MiniLMTextEncoder().encode(prompts)
    frames, _ = generate_video(args.seed, make_config("normal", frames=(args.frames, args.frames)))
    height, width = frames[0].shape[:2]
    video_path = out / "overlay.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    latencies, kept, counts = [], [], []
    for frame in tqdm(frames, desc="frames", unit="frame"):
        feed, box = _feed(engine, frame, text, pruning)
        start = time.perf_counter()
        result = engine(feed)
        latencies.append((time.perf_counter() - start) * 1000)
        # an untrained model has no calibrated scores: show its 3 most confident queries instead
        instances = to_instances(result["pred_logits"][0], result["pred_boxes"][0], result["pred_masks"][0], box,
                                 args.threshold if trained else 0.0, None if trained else 3)
        ids = [int(result["kept_indices"][inst.query]) + 1 for inst in instances]
        writer.write(cv2.cvtColor(draw(frame, instances, ids, prompts), cv2.COLOR_RGB2BGR))
        kept.append(result["kept_per_layer"].tolist())
        counts.append(len(instances))
    writer.release()
    summary = {"frames": len(frames), "prompts": prompts, "trained_model": trained,
               "latency_ms_median": float(np.median(latencies)), "latency_ms_p90": float(np.percentile(latencies, 90)),
               "fps_model_only": float(1000 / np.median(latencies)), "kept_per_layer_mean": np.mean(kept, 0).tolist(),
               "instances_per_frame_mean": float(np.mean(counts)), "video": str(video_path)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] {len(frames)} frames {width}x{height}, model {summary['latency_ms_median']:.1f} ms median "
          f"({summary['fps_model_only']:.0f} FPS, {args.threads} threads), kept queries per layer "
          f"{[round(k) for k in summary['kept_per_layer_mean']]}, instances/frame {summary['instances_per_frame_mean']:.1f}")
    if not trained:
        print("[demo] NOTE: no trained default model is shipped yet; masks come from random weights.")
    print(f"[demo] overlay video: {video_path}\n[demo] summary: {out / 'summary.json'}")
    return 0
