"""`mobius calibrate`: fit the score calibration of a model on a held-out split and store it in the model file.

    mobius calibrate --data data/synth/val/instances.json              # the shipped model (.onnx and .safetensors)
    mobius calibrate --onnx model.onnx --data val/instances.json --plot calibration.png
    mobius calibrate --weights model.safetensors --also model.onnx --data val/instances.json
    mobius calibrate --onnx model.onnx --remove                         # back to the model's own confidence

The model runs over the split with its own (raw) confidence, every detection is matched to a ground
truth of its category (calibration.match_ious, best mask IoU), and s' = sigmoid(a logit(s) + b) is fitted
so that the score predicts that IoU (runtime/score_calibration.py). The map is written into the model
file(s) only if it lowers the ECE on the split; every front end (node, GStreamer, bag, infer, eval) then
reports calibrated scores, so a score threshold keeps masks of about that IoU. Fit on a split that
neither training nor the final test uses (the procedural benchmark's val split).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from .calibration import RECALL_HIT_IOU, expected_calibration_error, match_ious, recall_at_scores
from .eval_command import build_runner, choose_categories, default_image_root

FIT_IOU, FIT_MATCHING = "mask", "best"     # what the map predicts: the mask IoU with the best-matching gt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("--data", metavar="ANNOTATIONS.json", help="COCO instances json of the held-out split")
    parser.add_argument("--images", metavar="DIR", help="image folder (default: the json's folder/images)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--weights", help=".safetensors weights (torch); default: the shipped model")
    model.add_argument("--onnx", metavar="MODEL.onnx", help="an exported model (onnxruntime)")
    parser.add_argument("--also", action="append", default=[], metavar="FILE",
                        help="another file of the same model to write the map into (e.g. its .onnx); repeatable")
    parser.add_argument("--preset", help="model config name or YAML path (default: the shipped model's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    parser.add_argument("--size", type=int, help="square input size for torch models (default 384)")
    parser.add_argument("--prompts", help="comma-separated category names, or 'seen' (default: all of the json)")
    parser.add_argument("--top-k", type=int, default=100, help="detections per image (default 100, as eval)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--plot", metavar="PNG", help="reliability diagram, raw and calibrated")
    parser.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    parser.add_argument("--remove", action="store_true", help="remove a stored calibration (no --data needed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def targets(args: argparse.Namespace) -> list[Path]:
    """The files that receive the map: the evaluated model file (for the shipped model, its .onnx and
    .safetensors) plus --also; ValueError for a file type that cannot hold it."""
    from .. import assets
    from ..runtime.score_calibration import check_target

    given = args.onnx or args.weights
    files = [Path(given)] if given else [p for p in (assets.ONNX, assets.WEIGHTS) if p.is_file()]
    return [check_target(path) for path in files + [Path(p) for p in args.also]]


def fit_split(runner, data: dict, image_root: Path, categories: list[dict], args: argparse.Namespace, source: str):
    """(calibration, report): the fitted map (raw-score runner) and what it changes on the split."""
    from ..runtime.score_calibration import ScoreCalibration, fit
    from .predict import predict_coco

    detections, stats = predict_coco(runner, data, image_root, [c["name"] for c in categories],
                                     [int(c["id"]) for c in categories], args.top_k, progress=not args.quiet)
    confidences, ious = match_ious(data, detections, FIT_IOU, FIT_MATCHING)
    if len(confidences) < 2:
        raise ValueError(f"'{source}' gave {len(confidences)} detections; a fit needs a split with objects")
    before = expected_calibration_error(confidences, ious, iou_kind=FIT_IOU, matching=FIT_MATCHING)
    info = {"fit_on": source, "images": stats["images"], "detections": int(len(confidences)), "iou": FIT_IOU,
            "matching": FIT_MATCHING, "ece_raw": before.ece,
            "fitted": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    fitted = fit(confidences, ious)
    after = expected_calibration_error(fitted(confidences), ious, iou_kind=FIT_IOU, matching=FIT_MATCHING)
    calibration = ScoreCalibration(fitted.a, fitted.b, {**info, "ece_calibrated": after.ece})
    mapped = [replace(d, scores=calibration(d.scores)) for d in detections]
    recall = {name: recall_at_scores(data, found, iou_kind=FIT_IOU) for name, found in (("raw", detections), ("calibrated", mapped))}
    return calibration, {"before": before, "after": after, "recall": recall, "model": stats["model"]}


def first_images(data: dict, limit: int) -> dict:
    """The COCO json restricted to its first `limit` images and their annotations."""
    images = data["images"][:limit]
    kept = {int(image["id"]) for image in images}
    return {**data, "images": images, "annotations": [a for a in data["annotations"] if int(a["image_id"]) in kept]}


def format_report(calibration, report: dict) -> str:
    before, after, recall = report["before"], report["after"], report["recall"]
    lines = [f"{report['model']} on {calibration.fit_info['fit_on']}: {before.n} detections of "
             f"{calibration.fit_info['images']} images",
             f"fitted s' = sigmoid({calibration.a:.4f} * logit(s) + {calibration.b:.4f})",
             f"ECE vs {FIT_IOU} IoU ({FIT_MATCHING} match): raw {before.ece:.4f} -> calibrated {after.ece:.4f}",
             f"objects found ({FIT_IOU} IoU >= {RECALL_HIT_IOU:g}) at score >= t, raw -> calibrated:"]
    lines += [f"  t={t:g}: {_pct(recall['raw'][t])} -> {_pct(recall['calibrated'][t])}" for t in recall["raw"]]
    return "\n".join(lines)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def run(args: argparse.Namespace) -> int:
    from .. import assets
    from ..runtime.score_calibration import write_calibration
    from ..training.annotations import annotation_format, check_image_files, read_annotation_file

    try:
        files = targets(args)
        if args.remove:
            for path in files:
                write_calibration(path, None)
                print(f"removed the score calibration from {path}")
            return 0
        if not args.data:
            raise ValueError("--data is required: the held-out split to fit on (e.g. data/synth/val/instances.json)")
        if args.top_k < 1 or (args.limit is not None and args.limit < 1):
            raise ValueError("--top-k and --limit must be >= 1")
        data = read_annotation_file(args.data)
        if annotation_format(data) != "coco":
            raise ValueError(f"'{args.data}' is YouTube-VIS json; calibrate on a COCO json (image split)")
        if args.limit:   # the recall report counts the objects of the images used, not of the whole json
            data = first_images(data, args.limit)
        categories = choose_categories(data, args.prompts)
        image_root = Path(args.images) if args.images else default_image_root(args.data)
        check_image_files(image_root, [r["file_name"] for r in data["images"]], args.data)
        onnx = args.onnx or (None if args.weights else str(assets.require(assets.ONNX)))
        runner = build_runner(argparse.Namespace(**{**vars(args), "onnx": onnx, "raw_scores": True, "no_prune": False}))
        calibration, report = fit_split(runner, data, image_root, categories, args, str(args.data))
    except (FileNotFoundError, ValueError) as error:  # DatasetError and ConfigError are ValueErrors
        print(f"mobius calibrate: error: {error}", file=sys.stderr)
        return 2
    print(format_report(calibration, report))
    if args.plot:
        from .calibration import reliability_diagram

        reliability_diagram([report["before"], report["after"]], args.plot,
                            f"{report['model']} on {args.data}", ["raw score", "calibrated score"])
        print(f"wrote {args.plot}")
    if report["after"].ece >= report["before"].ece:
        print("the model's own confidence is already as well calibrated on this split: nothing written")
        return 0
    if args.dry_run:
        print("--dry-run: nothing written")
        return 0
    for path in files:
        write_calibration(path, calibration)
        print(f"wrote the score calibration into {path}")
    return 0
