"""Turn a training checkpoint into the shipped default model (perception_core/assets).

    python -m perception_core.training.ship --checkpoint runs/mobius_nano_synth_cpu/checkpoints/last.pt

Several --checkpoint files of one model ship their uniform average instead (training/soup.py).

writes, next to each other:
    mobius_nano.safetensors      the weights (no pickle)
    mobius_nano.onnx             the deployment graph at assets.SIZE px (dynamo, opset 19)
    mobius_nano.masks.onnx       its kernel-reuse mask graph (runtime/export_kernels.py)
    mobius_nano.lateral.onnx     its bottleneck-reuse lateral graph (runtime/export_kernels.py)
    default_prompts.safetensors  MiniLM embeddings of assets.DEFAULT_PROMPTS
    model.json                   preset, size, training step, prompts trained on, recipe, the run's
                                 training summary (metrics.csv beside checkpoints/: steps, hours, loss);
                                 for a run started from a shipped model or another run's checkpoint
                                 (model.init_weights), the steps and hours behind those weights are added
                                 to the new model's (init_weights, init_step; training/lineage.py); a
                                 soup lists its checkpoints and the steps behind each (soup) and counts
                                 the steps behind all of them once;
                                 metrics are added later by `mobius eval ... --record` (docs/MODEL_CARD.md)

The files carry no score calibration: fit one for the new weights with `mobius calibrate --data
data/synth/val/instances.json` (it writes into the shipped .onnx and .safetensors).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import assets


def ship(checkpoint: str | Path | list, out: str | Path = assets.ASSETS, size: int = assets.SIZE) -> dict:
    """Writes the asset files from a training checkpoint, or from the average of a list of them (a soup);
    returns the model.json contents."""
    import torch

    from ..model.build import build_model, save_weights
    from ..model.text_encoder import MiniLMTextEncoder, save_prompt_embeddings
    from ..runtime.export import export_onnx
    from ..runtime.export_kernels import export_reuse_graphs
    from .recipe import ModelSection

    contents, steps, training, lineage = _weights_and_lineage(checkpoint)
    config = contents["config"]
    model_config = ModelSection(config["model"]["preset"], config["model"].get("overrides") or {}).build_config()
    model = build_model(model_config)
    model.load_state_dict(contents["model"])
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = model_config.name
    save_weights(model, out / f"{stem}.safetensors")
    with torch.no_grad():
        onnx_path = export_onnx(model, out / f"{stem}.onnx", size)
        export_reuse_graphs(model, onnx_path, size)  # kernel and bottleneck reuse between keyframes
    prompts = list(assets.DEFAULT_PROMPTS)
    encoder = MiniLMTextEncoder(max_tokens=model_config.text.max_tokens)
    save_prompt_embeddings(out / assets.PROMPT_EMBEDDINGS.name, prompts, encoder.encode(prompts))
    trained_on = _category_names(config["data"]["train_annotations"], config["data"].get("prompts"))
    info = {"preset": model_config.name, "size": size, "step": steps,
            "skipped_steps": int(contents["skipped_steps"]), "default_prompts": prompts,
            "trained_prompts": trained_on, "recipe": config, **lineage,
            "training": training, "metrics": {}}
    previous = out / assets.INFO.name
    if previous.is_file():  # keep metrics recorded for the same step
        old = json.loads(previous.read_text())
        if old.get("step") == info["step"]:
            info["metrics"] = old.get("metrics", {})
    previous.write_text(json.dumps(info, indent=1))
    for path in out.iterdir():  # safetensors writes 0600 files: installed assets must be readable by all
        if path.suffix in (".onnx", ".safetensors", ".json"):
            path.chmod(0o644)
    return info


def _weights_and_lineage(checkpoint: str | Path | list) -> tuple[dict, int, dict, dict]:
    """(checkpoint contents, with a soup's averaged weights; the steps behind them; their training
    summary; model.json's lineage fields). The runs' starts were recorded when they started
    (training/lineage.py)."""
    from .engine import load_checkpoint
    from .lineage import behind_checkpoint, union_behind
    from .soup import average_states, load_ingredients

    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if len(paths) == 1:
        contents = load_checkpoint(paths[0])
        before, steps, training = behind_checkpoint(paths[0], contents["config"], int(contents["step"]))
        lineage = {"init_weights": before["init_weights"], "init_step": before.get("step")} if before else {}
        return contents, steps, training, lineage
    ingredients = load_ingredients(paths)
    totals, steps, training = union_behind([(p, c["config"], int(c["step"])) for p, c in zip(paths, ingredients)])
    skipped = {}    # per run, the count at its furthest ingredient
    for path, contents in zip(paths, ingredients):
        run_dir = Path(path).resolve().parents[1]
        skipped[run_dir] = max(skipped.get(run_dir, 0), int(contents["skipped_steps"]))
    contents = {**ingredients[0], "model": average_states([c["model"] for c in ingredients]),
                "skipped_steps": sum(skipped.values())}
    return contents, steps, training, {"soup": [{"checkpoint": str(p), "step": t} for p, t in zip(paths, totals)]}


def _category_names(annotation_file: str, policy: str | None) -> list[str]:
    """The prompt list the model was trained with (same policy as training), or [] if unreadable."""
    from .annotations import read_annotation_file, restrict_categories

    try:
        data = read_annotation_file(annotation_file)
    except Exception:  # the data may not exist where the checkpoint is shipped
        return []
    records = restrict_categories(data, "seen", annotation_file) if policy == "seen" else data["categories"]
    return [c["name"] for c in sorted(records, key=lambda c: int(c["id"]))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="training checkpoint (.pt, loaded weights-only); several: ship their average (a soup)")
    parser.add_argument("--out", default=str(assets.ASSETS), help="asset folder (default: the package's)")
    parser.add_argument("--size", type=int, default=assets.SIZE, help="ONNX input size")
    args = parser.parse_args(argv)
    try:
        info = ship(args.checkpoint, args.out, args.size)
    except ValueError as error:     # a soup of checkpoints that cannot be averaged
        parser.exit(2, f"ship: {error}\n")
    sizes = {p.name: p.stat().st_size / 1e6 for p in Path(args.out).iterdir() if p.suffix in (".onnx", ".safetensors")}
    print(f"shipped step {info['step']} to {args.out}: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
