"""`mobius eval`: COCO box/mask AP, calibration (ECE) and held-out-composition AP of a model.

    mobius eval --data data/synth/val/instances.json                      # the shipped model
    mobius eval --weights runs/x/checkpoint.pt --data val/instances.json --json
    mobius eval --onnx model.onnx --data val/instances.json --holdout "red star,blue ring"

Prompts are the json's category names (all of them, or --prompts NAMES, or --prompts seen for
those with annotations in this json); AP is computed over the prompted categories. Held-out
compositions come from --holdout or the json's info.holdout_compositions (written by
`mobius data synth --holdout-compositions`); AP is then also reported separately over the
held-out and the other prompted categories: the zero-shot gap.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_TOP_K = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ANNOTATIONS.json", help="COCO instances json")
    parser.add_argument("--images", metavar="DIR",
                        help="image folder (default: the json's folder/images if it exists, else the json's folder)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--weights", help="torch weights (.safetensors or a checkpoint .pt); default: the shipped model")
    model.add_argument("--onnx", metavar="MODEL.onnx", help="evaluate an exported model with onnxruntime")
    parser.add_argument("--preset", help="model config name or YAML path (default: from the checkpoint, the "
                                         "shipped model's, or mobius_nano)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override, repeatable (e.g. decoder.num_layers=6)")
    parser.add_argument("--size", type=int, help="square input size for torch models (default 384)")
    parser.add_argument("--prompts", help="comma-separated category names to prompt with, or 'seen' "
                                          "(default: every category of the json)")
    parser.add_argument("--holdout", help="comma-separated held-out composition names "
                                          "(default: the json's info.holdout_compositions)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="detections kept per image (default 100)")
    parser.add_argument("--no-prune", action="store_true", help="disable inference-time query pruning")
    parser.add_argument("--raw-scores", action="store_true",
                        help="score with the model's own confidence, not the score calibration stored in the "
                             "model file ('mobius calibrate'); AP is the same either way")
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--calibration-plot", metavar="PNG", help="write a reliability diagram")
    parser.add_argument("--calibration-matching", choices=("best", "greedy"), default="best",
                        help="detection -> gt matching for the ECE: best IoU of the same category (default) "
                             "or one-to-one by confidence (duplicates get IoU 0)")
    parser.add_argument("--calibration-min-score", type=float, default=0.0,
                        help="ECE over detections with at least this confidence (default 0: all top-k)")
    parser.add_argument("--save-detections", metavar="JSON", help="write the detections as a COCO results json")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--record", action="store_true",
                        help="store the numbers in the shipped model's model.json (shipped model only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------- pure parts

def default_image_root(annotation_file: str | Path) -> Path:
    folder = Path(annotation_file).resolve().parent
    return folder / "images" if (folder / "images").is_dir() else folder


def choose_categories(data: dict, prompts: str | None) -> list[dict]:
    """Category records to prompt with (ordered by id); ValueError for unknown names."""
    from ..training.annotations import restrict_categories

    records = sorted(data["categories"], key=lambda c: int(c["id"]))
    if not prompts:
        return records
    keep = "seen" if prompts.strip() == "seen" else [p.strip() for p in prompts.split(",") if p.strip()]
    if not keep:
        raise ValueError("--prompts is empty; pass category names separated by commas")
    try:
        chosen = restrict_categories({**data, "categories": records}, keep, "--data")
    except ValueError as error:  # DatasetError is a ValueError
        names = ", ".join(c["name"] for c in records[:8])
        raise ValueError(f"{error}; --prompts must name categories of the json (e.g. {names}, ...)") from None
    return chosen


def holdout_names(data: dict, holdout: str | None) -> list[str]:
    if holdout is not None:
        return [name.strip() for name in holdout.split(",") if name.strip()]
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    return [str(name) for name in info.get("holdout_compositions", [])]


def score(ground_truth: dict, detections: Sequence, categories: Sequence[dict], holdout: Sequence[str] = (),
          image_ids: Sequence[int] | None = None, matching: str = "best", min_score: float = 0.0) -> dict:
    """All metrics of `detections` over the prompted `categories`: COCO box/mask AP, per-category
    AP, ECE against mask and box IoU (calibration.py: `matching`, detections >= `min_score`), the
    share of objects found above each score threshold (recall_at_scores), and AP over held-out and
    other compositions."""
    from .calibration import RECALL_HIT_IOU, calibration, recall_at_scores
    from .coco_eval import evaluate_coco

    category_ids = [int(c["id"]) for c in categories]
    has_masks = all(d.has_masks for d in detections)
    iou_types = ("bbox", "segm") if has_masks else ("bbox",)
    result = evaluate_coco(ground_truth, detections, iou_types, category_ids=category_ids, image_ids=image_ids)
    wanted = set(image_ids) if image_ids is not None else None
    gt = ground_truth if wanted is None else {
        **ground_truth, "images": [i for i in ground_truth["images"] if int(i["id"]) in wanted],
        "annotations": [a for a in ground_truth.get("annotations", []) if int(a["image_id"]) in wanted]}
    names = {int(c["id"]): c["name"] for c in categories}
    box_ap = result.per_category("bbox")
    mask_ap = result.per_category("segm") if has_masks else {}
    metrics = {"images": result.num_images, "detections": result.num_detections, "prompts": len(categories),
               "box": result.stats["bbox"], "mask": result.stats.get("segm"),
               "per_category": {names[c]: {"box_AP": box_ap[c], "mask_AP": mask_ap.get(c)} for c in category_ids},
               "calibration": {}}
    for kind in (("mask", "box") if has_masks else ("box",)):
        metrics["calibration"][kind] = {**calibration(gt, detections, kind, matching, min_score=min_score).to_dict(),
                                        "min_score": min_score}
    kind = "mask" if has_masks else "box"
    metrics["recall_at_score"] = {"iou": kind, "hit_iou": RECALL_HIT_IOU,
                                  "recall": {f"{t:g}": r for t, r in recall_at_scores(gt, detections,
                                                                                       iou_kind=kind).items()}}
    held = [c for c in category_ids if names[c] in set(holdout)]
    if holdout:
        seen = [c for c in category_ids if c not in held]
        metrics["holdout"] = {"compositions": [names[c] for c in held],
                              "not_prompted": sorted(set(holdout) - {names[c] for c in held}),
                              **{f"{group}_{kind}": result.subset(iou, ids) if iou in result.precision else None
                                 for group, ids in (("holdout", held), ("seen", seen))
                                 for kind, iou in (("box", "bbox"), ("mask", "segm"))}}
    return metrics


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def format_table(metrics: dict) -> str:
    """Human-readable summary (AP in percent)."""
    lines = [f"{metrics['images']} images, {metrics['prompts']} prompts, {metrics['detections']} detections"
             + (f", model {metrics['model']}" if "model" in metrics else "")
             + (f", scores {metrics['scores']}" if "scores" in metrics else "")]
    lines.append(f"{'':6}{'AP':>7}{'AP50':>7}{'AP75':>7}{'APs':>7}{'APm':>7}{'APl':>7}{'AR100':>7}")
    for label, key in (("box", "box"), ("mask", "mask")):
        stats = metrics.get(key)
        if stats:
            lines.append(f"{label:6}" + "".join(f"{_fmt(stats[n]):>7}" for n in
                                                 ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")))
    for kind, result in metrics["calibration"].items():
        lines.append(f"ECE (confidence vs {kind} IoU, {result['matching']} match, {result['bins']} bins, "
                     f"n={result['n']} with score >= {result['min_score']:g}): {result['ece']:.4f}")
    recall = metrics.get("recall_at_score")
    if recall:
        lines.append(f"objects found ({recall['iou']} IoU >= {recall['hit_iou']:g}) at score >= "
                     + ", ".join(f"{t}: {_fmt(r).strip()}" for t, r in recall["recall"].items()))
    holdout = metrics.get("holdout")
    if holdout:
        lines.append(f"held-out compositions: {', '.join(holdout['compositions']) or 'none prompted'}")
        for group in ("holdout", "seen"):
            for kind in ("box", "mask"):
                values = holdout.get(f"{group}_{kind}")
                if values:
                    lines.append(f"  {group:8} {kind:4} AP {_fmt(values['AP'])}  AP50 {_fmt(values['AP50'])}  "
                                 f"AP75 {_fmt(values['AP75'])}")
        if holdout["not_prompted"]:
            lines.append(f"  (not prompted: {', '.join(holdout['not_prompted'])})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command

def build_runner(args: argparse.Namespace):
    """ModelRunner for --onnx, --weights, or the shipped model; FileNotFoundError/ValueError."""
    from .. import assets
    from ..runtime.score_calibration import read_calibration
    from .predict import ModelRunner, load_torch_model

    if args.onnx:
        return ModelRunner.from_onnx(args.onnx, args.preset or assets.PRESET, args.threads, not args.no_prune,
                                     not args.raw_scores)
    import torch

    torch.set_num_threads(args.threads)
    weights, preset = args.weights, args.preset
    if weights is None:
        weights = assets.require(assets.WEIGHTS)
        preset = preset or assets.info().get("preset", assets.PRESET)
    size = args.size or (assets.info().get("size", assets.SIZE) if args.weights is None else 384)
    model = load_torch_model(weights, preset, args.override)
    return ModelRunner.from_torch(model, size, not args.no_prune, None if args.raw_scores else read_calibration(weights))


def run(args: argparse.Namespace) -> int:
    from ..training.annotations import annotation_format, check_image_files, read_annotation_file
    from .detections import coco_results
    from .predict import predict_coco
    from .record import is_shipped_model

    try:
        data = read_annotation_file(args.data)
        if annotation_format(data) != "coco":
            raise ValueError(f"'{args.data}' is YouTube-VIS json; use 'mobius eval-video --data {args.data}'")
        if args.top_k < 1 or (args.limit is not None and args.limit < 1):
            raise ValueError("--top-k and --limit must be >= 1")
        if not 0.0 <= args.calibration_min_score <= 1.0:
            raise ValueError(f"--calibration-min-score {args.calibration_min_score} must be in [0, 1]")
        categories = choose_categories(data, args.prompts)
        holdout = holdout_names(data, args.holdout)
        image_root = Path(args.images) if args.images else default_image_root(args.data)
        if args.record and not is_shipped_model(args.weights, args.onnx):
            raise ValueError("--record stores numbers in the shipped model's model.json; it needs the shipped "
                             "model (no --weights/--onnx, or the shipped files)")
        check_image_files(image_root, [r["file_name"] for r in data["images"][:args.limit]], args.data)
        runner = build_runner(args)
    except (FileNotFoundError, ValueError) as error:  # DatasetError and ConfigError are ValueErrors
        print(f"mobius eval: error: {error}", file=sys.stderr)
        return 2
    detections, stats = predict_coco(runner, data, image_root, [c["name"] for c in categories],
                                     [int(c["id"]) for c in categories], args.top_k, args.limit,
                                     progress=not args.quiet)
    image_ids = [d.image_id for d in detections] if args.limit else None
    metrics = {**score(data, detections, categories, holdout, image_ids, args.calibration_matching,
                       args.calibration_min_score), **stats}
    if args.save_detections:
        Path(args.save_detections).write_text(json.dumps(coco_results(detections, "both")))
    if args.calibration_plot:
        from .calibration import calibration, reliability_diagram

        results = [calibration(data, detections, kind, args.calibration_matching,
                               min_score=args.calibration_min_score) for kind in metrics["calibration"]]
        reliability_diagram(results, args.calibration_plot, f"{runner.description} on {Path(args.data).name}")
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics))
    if args.record:
        from .record import image_summary, record_metrics, split_name

        path = record_metrics(f"eval {split_name(data, args.data)}", image_summary(metrics, args.data))
        print(f"recorded in {path}", file=sys.stderr)
    return 0
