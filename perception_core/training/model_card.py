"""docs/MODEL_CARD.md from what is recorded, never typed by hand.

    python -m perception_core.training.model_card [--run runs/mobius_nano_synth_cpu] [--out docs/MODEL_CARD.md]

Sources: the shipped model.json (recipe, step, the training summary ship.py took from the run's
metrics.csv, the metrics `mobius eval --record` and `mobius eval-video --record` stored), the score
calibration stored in the shipped ONNX (`mobius calibrate`), the training run's metrics.csv when
model.json has no training summary (time per step, loss curve),
count_flops of the shipped preset, and an onnxruntime latency measurement of the shipped ONNX at
its input size on 1 and 2 threads (median of repeats, the load average noted). A reliability diagram
next to the card (CALIBRATION_PLOT, written by `mobius eval ... --calibration-plot docs/model_card_calibration.png`)
is linked when present.
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import time
from pathlib import Path

import numpy as np

from .. import assets

CALIBRATION_PLOT = "model_card_calibration.png"  # beside the card
NODE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "segment.yaml"   # the node's defaults


def training_summary(run_dir: Path, upto: int | None = None) -> dict:
    """Steps, wall time and the last logged loss from metrics.csv up to step `upto` (the shipped
    checkpoint's); {} without the file."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    rows = [row for row in csv.DictReader(path.open()) if upto is None or int(row["step"]) <= upto]
    if not rows:
        return {}
    steps, seconds, previous = [], 0.0, 0
    for row in rows:
        step = int(row["step"])
        seconds += float(row["seconds_per_step"] or 0) * (step - previous)
        previous = step
        steps.append((step, float(row["loss"]) if row["loss"] else float("nan")))
    return {"steps": previous, "hours": seconds / 3600, "first_loss": steps[0][1], "last_loss": steps[-1][1]}


def onnx_latency(path: Path, size: int, prompts: int, threads: int, repeats: int = 20) -> float:
    """Median ms of one forward pass of the shipped graph (random image, the default prompts)."""
    from ..model.text_encoder import load_prompt_embeddings
    from ..runtime.onnx_engine import OnnxEngine

    engine = OnnxEngine(path, threads=threads)
    _, text = load_prompt_embeddings(assets.PROMPT_EMBEDDINGS)
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32),
            "text_tokens": text.tokens.numpy(), "text_mask": text.mask.numpy(), "text_pooled": text.pooled.numpy(),
            "track_queries": np.zeros((1, 0, engine.hidden_dim), np.float32),
            "track_boxes": np.zeros((1, 0, 4), np.float32),
            "prune_thresholds": _model_thresholds(engine.num_layers),
            "prune_min_kept": np.array(_model_min_kept(), np.int64)}
    for _ in range(3):
        engine(feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine(feed)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


@functools.lru_cache(maxsize=1)
def _model():
    """The shipped model (its weights set the pruned decoder's kept counts; random ones varied them run
    to run), built and loaded once for the FLOPs table and the pruning inputs."""
    from ..model.build import build_from_name, load_weights

    model = build_from_name(assets.PRESET)
    return load_weights(model, assets.WEIGHTS) if assets.WEIGHTS.is_file() else model


def _model_thresholds(layers: int) -> np.ndarray:
    """The preset's pruning thresholds, as the runtime feeds them."""
    from ..runtime.export import prune_inputs

    return prune_inputs(_model())[0].numpy()[:layers]


def _model_min_kept() -> int:
    from ..runtime.export import prune_inputs

    return int(prune_inputs(_model())[1])


def flops_rows(size: int, prompts: int) -> dict:
    from ..model.flops import count_flops

    report = count_flops(_model(), size, num_prompts=prompts, tokens=8)
    names = ("vision_encoder", "pixel_decoder", "modality_fusion", "decoder", "decoder_pruned", "total", "text_encoder")
    return {name: getattr(report, name) for name in names}


def _lineage(info: dict) -> str:
    """How a fine-tuned model's steps split: those of the model it started from, then its own run; for a
    soup, its checkpoints (training/soup.py)."""
    soup = info.get("soup")
    if soup:
        parts = ", ".join(f"`{part['checkpoint']}` ({part['step']} steps behind it)" for part in soup)
        return (f", all runs counted once: the uniform average of the weights of {len(soup)} checkpoints "
                f"(a model soup, `training/soup.py`): {parts}")
    before = info.get("init_step")
    if not before:
        return ""
    return (f": {before} before, then {info['step'] - before} in a run started from those weights "
            f"(`model.init_weights={info.get('init_weights')}`)")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def node_score_threshold(path: Path = NODE_CONFIG) -> float | None:
    """The node's default score_threshold (config/segment.yaml), None when the file is not there."""
    import yaml

    if not path.is_file():
        return None
    return float(yaml.safe_load(path.read_text(encoding="utf-8"))["/**"]["ros__parameters"]["score_threshold"])


def stored_calibration() -> dict | None:
    """The shipped ONNX's score calibration as a plain dict (a, b, fit record), None without one."""
    from ..runtime.score_calibration import read_calibration

    calibration = read_calibration(assets.ONNX) if assets.ONNX.is_file() else None
    return None if calibration is None else {"a": calibration.a, "b": calibration.b, **calibration.fit_info}


def score_sentences(image: dict, node_threshold: float | None) -> str:
    """What the recorded calibration gap and recall at score thresholds say about choosing a threshold."""
    gap = image.get("confidence_minus_mask_iou")
    recorded = image.get("recall_at_score") or {}
    recall = {t: r for t, r in (recorded.get("recall") or {}).items() if r is not None}
    text = "A calibrated score estimates the mask IoU"
    if gap is not None:
        side = "below" if gap < 0 else "above"
        text += (f"; this model scores {abs(gap):.2f} {side} the IoU it reaches, on average over its top-k "
                 "detections (the reliability diagram above)")
    text += "."
    if recall:
        found = ", ".join(f"{_pct(r)}% at {t}" for t, r in recall.items())
        text += (f" Share of the evaluated objects found ({recorded.get('iou')} IoU >= {recorded.get('hit_iou'):g}) "
                 f"above a score threshold: {found}")
        node = None if node_threshold is None else recall.get(f"{node_threshold:g}")
        if node is not None:
            text += (f"; the node's default threshold of {node_threshold:g} (config/segment.yaml, also used by "
                     f"`make demo`) keeps {_pct(node)}%")
        text += "."
    return text


def calibration_sentence(record: dict | None, scores: str | None) -> str:
    """What the reported scores are: the stored score calibration (`record`: a, b and its fit_info) or raw;
    `scores`: what the recorded evaluation used ('raw' or 'calibrated (...)')."""
    if record is None:
        return "- Scores are the model's own confidence: no `mobius calibrate` fit is stored in the model files."
    text = (f"- Scores are calibrated after training (`mobius calibrate`, stored in the model files): "
            f"s' = sigmoid({record['a']:.3f} logit(s) + {record['b']:.3f}), fitted on `{record.get('fit_on')}` "
            f"({record.get('images')} images, {record.get('detections')} detections), where the ECE went from "
            f"{record.get('ece_raw', float('nan')):.4f} (raw) to {record.get('ece_calibrated', float('nan')):.4f}. "
            "Being increasing, the map leaves AP unchanged; it changes what a score threshold keeps.")
    if scores and scores.startswith("raw"):
        text += " The numbers above were recorded with raw scores (`--raw-scores`)."
    return text


def render(info: dict, training: dict, latency: dict, flops: dict, calibration_plot: str | None = None,
           node_threshold: float | None = None, score_calibration: dict | None = None) -> str:
    """The card's markdown; `calibration_plot`: a reliability diagram's path relative to the card, linked
    under the calibration error when given; `node_threshold`: the node's default score threshold;
    `score_calibration`: the stored calibration (a, b and its fit record), None when there is none."""
    metrics = info.get("metrics", {})
    image = next((v for k, v in metrics.items() if k.startswith("eval ") and "test" in k), None) or \
        next((v for k, v in metrics.items() if k.startswith("eval ")), {})
    video = next((v for k, v in metrics.items() if k.startswith("eval-video")), {})
    recipe = info.get("recipe", {})
    lines = [
        "# Model card: mobius_nano (the shipped default model)", "",
        "Written by `python -m perception_core.training.model_card` from `perception_core/assets/model.json` "
        "(numbers recorded by `mobius eval --record` / `mobius eval-video --record`) and the training run's "
        "`metrics.csv`. Do not edit by hand: re-run it.", "",
        "## What it is", "",
        f"- Architecture: `{info.get('preset')}` (config/models/{info.get('preset')}.yaml): MobileNetV4-conv-S at half "
        "width, bottleneck pixel decoder (MOBIUS Eq. 1), language-guided query selection, 4-layer decoder with "
        "calibrated query pruning, MiniLM text encoder (frozen).",
        f"- Files: `mobius_nano.safetensors` (weights), `mobius_nano.onnx` ({info.get('size')} px, opset 19, "
        "pixel-decoder sampling as DeformConv), "
        "`mobius_nano.masks.onnx` (kernel reuse), `mobius_nano.lateral.onnx` (bottleneck reuse), "
        "`default_prompts.safetensors` "
        f"({', '.join(info.get('default_prompts', []))}).",
        f"- Trained for {info.get('step')} steps ({info.get('skipped_steps', 0)} skipped)" + _lineage(info) + ".", "",
        "## Data and recipe", "",
        "The procedural benchmark (`mobius data synth`, normal difficulty): 8 shapes x 8 colours, textured and "
        "photo backgrounds, occlusion, blur, JPEG artifacts. Held out of training (never shown, not even as "
        f"negatives): {', '.join(image.get('holdout_compositions', [])) or 'see the recipe'}.",
        f"Recipe: `training/recipes/mobius_nano_synth_cpu.yaml` (its phases are listed in its header; the "
        f"last run: batch {recipe.get('batch_size')}, lr {recipe.get('optim', {}).get('lr')}, "
        f"sizes {recipe.get('data', {}).get('train_sizes')}, "
        f"denoising groups {recipe.get('queries', {}).get('denoising_groups')}, "
        f"classification loss {recipe.get('loss', {}).get('classification')}).", "",
        "## Training time and hardware", "",
    ]
    if training:
        lines.append(f"{training['steps']} steps in {training['hours']:.1f} h on a shared 2-core x86_64 CPU, no GPU "
                     f"(1-2 threads, development work running beside it; the recipe file lists the training phases). "
                     f"Loss {training['first_loss']:.1f} -> "
                     f"{training['last_loss']:.1f} (weighted sum of all layers' losses).")
    else:
        lines.append("The training run's metrics.csv was not available when this card was written.")
    lines += ["", "## Quality", ""]
    if image:
        lines += [f"`mobius eval` on `{image.get('data')}` ({image.get('images')} images, {image.get('prompts')} "
                  f"prompts, {image.get('model')}, {image.get('size')} px):", "",
                  "| | AP | AP50 | AP75 |", "|---|---|---|---|",
                  f"| box | {_pct(image.get('box_AP'))} | {_pct(image.get('box_AP50'))} | {_pct(image.get('box_AP75'))} |",
                  f"| mask | {_pct(image.get('mask_AP'))} | {_pct(image.get('mask_AP50'))} | {_pct(image.get('mask_AP75'))} |",
                  "",
                  f"- Held-out compositions: mask AP {_pct(image.get('holdout_mask_AP'))}, box AP "
                  f"{_pct(image.get('holdout_box_AP'))}; seen: mask AP {_pct(image.get('seen_mask_AP'))}.",
                  f"- Expected calibration error of confidence vs mask IoU: {image.get('ece_mask_iou', float('nan')):.4f} "
                  f"(box IoU: {image.get('ece_box_iou', float('nan')):.4f}); 15 bins, all top-k detections." +
                  (f" Reliability diagram (`mobius eval --calibration-plot`): ![calibration]({calibration_plot})"
                   if calibration_plot else ""),
                  f"- Kept queries per decoder layer (mean over the images): {image.get('kept_per_layer_mean', 'n/a')}.",
                  calibration_sentence(score_calibration, image.get("scores")),
                  "- Target (issue 4): mask AP >= 70 on a fresh normal-difficulty test split."]
    else:
        lines.append("No `mobius eval --record` result is stored yet.")
    if video:
        tracker = video.get("tracker") or {}
        named = [f"{name} {value:g}" for name, value in tracker.items() if isinstance(value, (int, float))]
        tracked = f", tracker {', '.join(named)}" if named else ""
        lines += ["", f"`mobius eval-video` on `{video.get('data')}` ({video.get('videos')} clips, score threshold "
                  f"{video.get('score_threshold', 'default')}{tracked}): video AP {_pct(video.get('video_AP'))}, HOTA "
                  f"{_pct(video.get('HOTA'))}, IDF1 {_pct(video.get('IDF1'))}, ID switches {video.get('IDSW')}."]
    steps = int(info.get("step") or 0)
    lines += ["", "## What limits it", "",
              f"The schedule: {steps} steps of {recipe.get('batch_size', 8)} images ({steps * recipe.get('batch_size', 8) / 1000:.0f}k "
              f"images seen) on a 2-core CPU, {100 * steps / 24000:.0f}% of the 24k steps the GPU recipe "
              "(`training/recipes/mobius_nano_synth.yaml`) plans, with a backbone trained from scratch (no "
              "pretrained weights can be downloaded here). The loss was still falling. "
              + score_sentences(image, node_threshold) + " Continue the run with `mobius train --config "
              "training/recipes/mobius_nano_synth_cpu.yaml --resume auto optim.max_steps=N "
              "\"optim.milestones=[...]\"` (the lr is a function of the step, so new "
              "milestones restart the schedule), or train the GPU recipe where a GPU is available."]
    lines += ["", "## Cost", "", f"GFLOPs at {info.get('size')} px with {len(info.get('default_prompts', []))} prompts "
              "x 8 tokens (`mobius flops`):", "", "| component | GFLOPs |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {value:.2f} |" for name, value in flops.items()]
    lines += ["", f"onnxruntime latency of the shipped graph at {info.get('size')} px, default prompts, median of 20 "
              f"(load average {latency.get('load', 'n/a')}): " +
              ", ".join(f"{threads} thread(s) {ms:.1f} ms" for threads, ms in latency.get("ms", {}).items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/mobius_nano_synth_cpu", help="training run folder (metrics.csv)")
    parser.add_argument("--out", default="docs/MODEL_CARD.md")
    args = parser.parse_args(argv)
    info = assets.info()
    if not info:
        raise SystemExit(f"no shipped model.json at {assets.INFO}; ship a model first")
    size, prompts = int(info["size"]), len(info.get("default_prompts", [])) or 4
    latency = {"load": f"{os.getloadavg()[0]:.1f}",
               "ms": {threads: onnx_latency(assets.require(assets.ONNX), size, prompts, threads) for threads in (1, 2)}}
    plot = Path(args.out).parent / CALIBRATION_PLOT
    training = info.get("training") or training_summary(Path(args.run), info.get("step"))
    text = render(info, training, latency, flops_rows(size, prompts), CALIBRATION_PLOT if plot.is_file() else None,
                  node_score_threshold(), stored_calibration())
    text += f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
