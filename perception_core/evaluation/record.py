"""`--record`: store evaluation numbers in the shipped model's model.json (its model card).

training/ship.py writes model.json with an empty "metrics" dict and keeps it while the shipped
step stays the same; `mobius eval --record` / `mobius eval-video --record` add one entry each:

    "metrics": {"eval val": {"mask_AP": 0.41, ...}, "eval-video val": {"HOTA": 0.52, ...}}

The key is the command and the split (the json's info.split, else the json's file name), so a
re-run replaces its own entry and leaves the others.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path


def is_shipped_model(weights: str | None, onnx: str | None) -> bool:
    """Whether the evaluated model is the shipped default (no model given, or its own files)."""
    from .. import assets

    given = weights or onnx
    if given is None:
        return True
    path = Path(given).resolve()
    return path in (assets.WEIGHTS.resolve(), assets.ONNX.resolve())


def split_name(data: dict, annotation_file: str | os.PathLike) -> str:
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    return str(info.get("split") or Path(annotation_file).stem)


def record_metrics(key: str, summary: dict, info_path: str | os.PathLike | None = None) -> Path:
    """Writes metrics[key] = summary (+ a UTC timestamp) into model.json, atomically.
    FileNotFoundError when the shipped model has no model.json."""
    from .. import assets

    path = Path(info_path) if info_path is not None else assets.INFO
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' not found: --record writes into the shipped model's model.json; "
                                f"ship a model first (python -m perception_core.training.ship)")
    info = json.loads(path.read_text(encoding="utf-8"))
    entry = {**summary, "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    info.setdefault("metrics", {})[key] = entry
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(info, indent=1), encoding="utf-8")
    os.replace(temporary, path)
    return path


def confidence_gap(result: dict) -> float | None:
    """Mean confidence minus mean IoU over all detections of a CalibrationResult.to_dict() (from its
    bins; negative: under-confident), None without detections."""
    counts = result["counts"]
    if not sum(counts):
        return None
    return sum(n * (c - i) for n, c, i in zip(counts, result["mean_confidence"], result["mean_iou"]) if n) / sum(counts)


def image_summary(metrics: dict, data_path: str) -> dict:
    """The model-card numbers of `mobius eval`."""
    summary = {"data": str(data_path), "images": metrics["images"], "prompts": metrics["prompts"],
               "model": metrics.get("model"), "size": metrics.get("size"), "scores": metrics.get("scores"),
               "kept_per_layer_mean": metrics.get("kept_per_layer_mean")}
    for kind in ("box", "mask"):
        stats = metrics.get(kind) or {}
        summary.update({f"{kind}_{name}": stats.get(name) for name in ("AP", "AP50", "AP75")})
        if kind in metrics["calibration"]:
            summary[f"ece_{kind}_iou"] = metrics["calibration"][kind]["ece"]
            summary[f"confidence_minus_{kind}_iou"] = confidence_gap(metrics["calibration"][kind])
    if metrics.get("recall_at_score"):
        summary["recall_at_score"] = metrics["recall_at_score"]
    holdout = metrics.get("holdout")
    if holdout:
        summary["holdout_compositions"] = holdout["compositions"]
        for group in ("holdout", "seen"):
            for kind in ("box", "mask"):
                values = holdout.get(f"{group}_{kind}")
                summary[f"{group}_{kind}_AP"] = values["AP"] if values else None
    return summary


def video_summary(metrics: dict, data_path: str, settings: dict) -> dict:
    """The model-card numbers of `mobius eval-video`."""
    ap, tracking = metrics["video_ap"], metrics["tracking"]
    return {"data": str(data_path), "videos": metrics["videos"], "prompts": metrics.get("prompts"),
            **{f"video_{name}": ap[name] for name in ("AP", "AP50", "AP75")},
            **{name: tracking[name] for name in ("HOTA", "DetA", "AssA", "IDF1", "IDSW", "MOTA")},
            "tracking_mode": tracking["mode"], "ms_per_frame_mean": metrics.get("ms_per_frame_mean"), **settings}
