"""YouTube-VIS ground truth + YouTube-VIS results -> video AP and tracking metrics.

    metrics = evaluate_video("val/videos.json", "results.json")
    metrics["video_ap"]["AP"], metrics["tracking"]["HOTA"], metrics["tracking"]["IDSW"]

Ground truth: a YouTube-VIS json (videos with file_names/length, per-track annotations with
per-frame "segmentations": RLE, polygons or None). Results: a list of
    {"video_id": int, "category_id": int, "score": float,
     "segmentations": [RLE dict {"size": [H, W], "counts": ...} or None, one per frame]}
(the YouTube-VIS results format; `mobius infer --json` and `mobius eval-video` write it).
Video AP uses every result; the tracking metrics use results with score >= score_threshold.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .detections import to_rles
from .tracking_metrics import tracking_metrics
from .video_ap import Tube, video_ap


def load_ground_truth(ground_truth: str | os.PathLike | dict) -> dict:
    """Parsed YouTube-VIS json (DatasetError/ValueError with a clear message)."""
    from ..training.annotations import annotation_format, read_annotation_file

    data = read_annotation_file(ground_truth) if isinstance(ground_truth, (str, os.PathLike)) else ground_truth
    if not isinstance(data, dict) or annotation_format(data) != "ytvis":
        raise ValueError("video evaluation needs YouTube-VIS json (with 'videos'); for COCO images use 'mobius eval'")
    return data


def video_lengths(data: dict) -> dict[int, tuple[int, int, int]]:
    """video id -> (frames, height, width)."""
    out = {}
    for video in data["videos"]:
        frames = int(video.get("length", len(video.get("file_names", []))))
        out[int(video["id"])] = (frames, int(video["height"]), int(video["width"]))
    return out


def truth_tubes(data: dict) -> list[Tube]:
    """Ground-truth tubes in annotation order (segmentations converted to compressed RLE)."""
    from ..training.annotations import to_rle

    sizes = video_lengths(data)
    tubes = []
    for annotation in data.get("annotations", []):
        video_id = int(annotation["video_id"])
        frames, height, width = sizes[video_id]
        segmentations = annotation.get("segmentations") or [None] * frames
        if len(segmentations) != frames:
            raise ValueError(f"ground-truth track {annotation.get('id')} of video {video_id} has "
                             f"{len(segmentations)} frames, the video {frames}")
        rles = [None if s is None else to_rle(s, height, width) for s in segmentations]
        tubes.append(Tube(video_id, int(annotation["category_id"]), rles, 1.0, bool(annotation.get("iscrowd", 0))))
    return tubes


def load_results(results: str | os.PathLike | Sequence[dict]) -> list[dict]:
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"results file '{path}' not found; write one with 'mobius infer --json' or "
                                    f"run 'mobius eval-video' without --results")
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"results file '{path}' is not readable json: {error}") from None
    if isinstance(results, dict) and isinstance(results.get("results"), list):
        results = results["results"]
    if not isinstance(results, list):
        raise ValueError("YouTube-VIS results must be a list of {video_id, category_id, score, segmentations}")
    return list(results)


def result_tubes(data: dict, results: Sequence[dict]) -> list[Tube]:
    """Validated result tubes; ValueError naming the first bad record."""
    sizes = video_lengths(data)
    categories = {int(c["id"]) for c in data["categories"]}
    tubes = []
    for index, record in enumerate(results):
        try:
            video_id, category_id = int(record["video_id"]), int(record["category_id"])
            score, segmentations = float(record["score"]), record["segmentations"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"result {index} needs video_id, category_id, score and segmentations; got "
                             f"{sorted(record) if isinstance(record, dict) else type(record).__name__}") from None
        if video_id not in sizes:
            raise ValueError(f"result {index}: video id {video_id} is not in the ground truth")
        if category_id not in categories:
            raise ValueError(f"result {index}: category id {category_id} is not in the ground truth")
        frames, height, width = sizes[video_id]
        if not isinstance(segmentations, list) or len(segmentations) != frames:
            raise ValueError(f"result {index}: video {video_id} has {frames} frames, the result "
                             f"{len(segmentations) if isinstance(segmentations, list) else 'no list of'} segmentations")
        rles: list[dict | None] = [None] * frames
        present = [t for t, s in enumerate(segmentations) if s is not None]
        for t, rle in zip(present, to_rles([segmentations[t] for t in present], index)):
            if [int(v) for v in rle["size"]] != [height, width]:
                raise ValueError(f"result {index}: mask size {list(rle['size'])} at frame {t}, the video is "
                                 f"{height}x{width}")
            rles[t] = rle
        tubes.append(Tube(video_id, category_id, rles, score))
    return tubes


def evaluate_video(ground_truth: str | os.PathLike | dict, results: str | os.PathLike | Sequence[dict],
                   category_ids: Sequence[int] | None = None, tracking_mode: str = "per_category",
                   score_threshold: float = 0.0) -> dict:
    """{"video_ap": AP, AP50, AP75, AR1/10/100, per_category; "tracking": HOTA, DetA, AssA, IDF1,
    IDSW, ...; "videos", "results"}. category_ids: evaluate only these categories (e.g. the
    prompted ones); ground truth and results of other categories are left out of both."""
    data = load_ground_truth(ground_truth)
    truths, found = truth_tubes(data), result_tubes(data, load_results(results))
    if category_ids is not None:
        wanted = {int(c) for c in category_ids}
        truths = [t for t in truths if t.category_id in wanted]
        found = [r for r in found if r.category_id in wanted]
    ap = video_ap(truths, found, sorted(category_ids) if category_ids is not None else None)
    ap.pop("precision")
    frames = {video: length for video, (length, _, _) in video_lengths(data).items()}
    tracked = [r for r in found if r.score >= score_threshold]
    tracking = tracking_metrics([t for t in truths if not t.iscrowd], tracked, frames, tracking_mode)
    return {"videos": len(frames), "results": len(found), "video_ap": ap,
            "tracking": {**tracking, "score_threshold": score_threshold}}
