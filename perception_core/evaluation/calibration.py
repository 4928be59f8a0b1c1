"""Calibration of class confidence against localization quality (the MOBIUS claim of Eq. 4).

The calibration loss trains the confidence of a query's matched prompt towards the IoU of its
prediction with the matched ground truth (Eq. 4 uses the box IoU). So a calibrated model's
confidence *predicts* that IoU, and this module measures how well:

    1. match every detection to a ground-truth instance of the same category (`match_ious`):
       "best": the gt with the highest IoU (several detections may share one gt);
       "greedy": one-to-one, most confident detection first, each gt claimed once (COCO-style;
       duplicates then get IoU 0, which is what the loss trains them towards);
       a detection without any gt of its category gets IoU 0;
    2. bin the confidences into B equal-width bins over [0, 1] (B = 15; bin b holds confidences in
       (b/B, (b+1)/B], confidence 0 goes to the first bin);
    3. ECE = sum_b |B_b| / n * |mean confidence in B_b - mean IoU in B_b|.

A perfectly calibrated model has ECE 0; a model whose confidence is always 0.2 above its IoU has
ECE 0.2. `reliability_diagram` plots mean IoU against mean confidence per bin. `recall_at_scores`
says what a score threshold costs: the share of objects still found above it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from .detections import ImageDetections, xyxy_to_xywh

NUM_BINS = 15
MATCHING = ("best", "greedy")
IOU_KINDS = ("mask", "box")
RECALL_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)   # score thresholds of recall_at_scores
RECALL_HIT_IOU = 0.5                            # the IoU at which recall_at_scores counts an object found
NO_GROUND_TRUTH = (np.zeros(0, dtype=np.int64), [])   # an image's entry without annotations


@dataclass(frozen=True)
class CalibrationResult:
    """ece in [0, 1]; per bin (B,): counts, mean confidence and mean IoU (nan for empty bins);
    edges (B + 1,); n detections; the IoU kind and matching used."""
    ece: float
    counts: np.ndarray
    mean_confidence: np.ndarray
    mean_iou: np.ndarray
    edges: np.ndarray
    n: int
    iou_kind: str = "mask"
    matching: str = "best"

    def to_dict(self) -> dict:
        return {"ece": self.ece, "n": self.n, "iou": self.iou_kind, "matching": self.matching,
                "bins": len(self.counts), "counts": self.counts.tolist(),
                "mean_confidence": [None if np.isnan(v) else float(v) for v in self.mean_confidence],
                "mean_iou": [None if np.isnan(v) else float(v) for v in self.mean_iou]}


def expected_calibration_error(confidences: np.ndarray, ious: np.ndarray, bins: int = NUM_BINS,
                               iou_kind: str = "mask", matching: str = "best") -> CalibrationResult:
    """ECE of (n,) confidences in [0, 1] against (n,) IoUs in [0, 1]; n = 0 gives ECE 0."""
    confidences = np.asarray(confidences, dtype=np.float64).reshape(-1)
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    if confidences.shape != ious.shape:
        raise ValueError(f"{confidences.size} confidences but {ious.size} IoUs")
    if bins < 1:
        raise ValueError(f"bins={bins} must be >= 1")
    if confidences.size and (confidences.min() < 0 or confidences.max() > 1 or not np.isfinite(confidences).all()):
        raise ValueError("confidences must be finite and in [0, 1] (probabilities, not logits)")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b holds (b/B, (b+1)/B]; 0 joins the first bin
    index = np.clip(np.ceil(confidences * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidences, bins) / counts
        mean_iou = np.bincount(index, ious, bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / max(confidences.size, 1)
                       * np.abs(mean_confidence[filled] - mean_iou[filled])))
    return CalibrationResult(ece, counts, mean_confidence, mean_iou, edges, int(confidences.size), iou_kind, matching)


def _ground_truth_by_image(ground_truth: dict, iou_kind: str) -> dict[int, tuple[np.ndarray, list]]:
    """image id -> (category ids (m,), m gt regions as RLEs (mask) or xywh boxes (box)); crowd skipped."""
    from ..training.annotations import to_rle

    size = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in ground_truth["images"]}
    grouped: dict[int, tuple[list, list]] = {}
    for annotation in ground_truth.get("annotations", []):
        if annotation.get("iscrowd", 0):
            continue
        image_id = int(annotation["image_id"])
        categories, regions = grouped.setdefault(image_id, ([], []))
        categories.append(int(annotation["category_id"]))
        if iou_kind == "mask":
            regions.append(to_rle(annotation["segmentation"], *size[image_id]))
        else:
            regions.append([float(v) for v in annotation["bbox"]])
    return {image: (np.asarray(c, dtype=np.int64), r) for image, (c, r) in grouped.items()}


def _checked_ground_truth(ground_truth: str | os.PathLike | dict, detections: Sequence[ImageDetections],
                          iou_kind: str) -> dict[int, tuple[np.ndarray, list]]:
    """_ground_truth_by_image of the loaded ground truth, after checking `iou_kind` and that the
    detections' images and categories are in it."""
    from .coco_eval import check_detections, load_ground_truth

    if iou_kind not in IOU_KINDS:
        raise ValueError(f"iou_kind must be one of {IOU_KINDS}, got {iou_kind!r}")
    data = load_ground_truth(ground_truth)
    check_detections(data, detections)
    return _ground_truth_by_image(data, iou_kind)


def _iou_matrix(detections: ImageDetections, regions: list, iou_kind: str) -> np.ndarray:
    """(n detections, m gt) IoU."""
    if len(detections) == 0 or not regions:
        return np.zeros((len(detections), len(regions)))
    if iou_kind == "mask":
        if not detections.has_masks:
            raise ValueError(f"image {detections.image_id}: mask IoU calibration needs masks; use iou_kind='box'")
        ious = mask_utils.iou(detections.rles, regions, [0] * len(regions))
    else:
        ious = mask_utils.iou(xyxy_to_xywh(detections.boxes).tolist(), regions, [0] * len(regions))
    return np.asarray(ious, dtype=np.float64).reshape(len(detections), len(regions))


def _match(scores: np.ndarray, categories: np.ndarray, gt_categories: np.ndarray, ious: np.ndarray,
           matching: str) -> np.ndarray:
    """(n,) IoU of each detection with its matched gt (0 when unmatched)."""
    same = categories[:, None] == gt_categories[None, :]   # (n, m)
    ious = np.where(same, ious, 0.0)
    if matching == "best":
        return ious.max(axis=1) if ious.shape[1] else np.zeros(len(scores))
    matched = np.zeros(len(scores))
    taken = np.zeros(ious.shape[1], dtype=bool)
    for row in np.argsort(-scores, kind="stable"):
        candidates = np.where(taken, -1.0, ious[row])
        if candidates.size and candidates.max() > 0:
            column = int(candidates.argmax())
            matched[row], taken[column] = candidates[column], True
    return matched


def match_ious(ground_truth: str | os.PathLike | dict, detections: Sequence[ImageDetections], iou_kind: str = "mask",
               matching: str = "best", min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(confidences (n,), IoUs (n,)) of all detections with score >= min_score, each matched to a
    gt instance of its category (see the module docstring)."""
    if matching not in MATCHING:
        raise ValueError(f"matching must be one of {MATCHING}, got {matching!r}")
    by_image = _checked_ground_truth(ground_truth, detections, iou_kind)
    confidences, ious = [], []
    for image in detections:
        keep = image.scores >= min_score
        if not keep.any():
            continue
        gt_categories, regions = by_image.get(image.image_id, NO_GROUND_TRUTH)
        matrix = _iou_matrix(image, regions, iou_kind)[keep]
        ious.append(_match(image.scores[keep], image.category_ids[keep], gt_categories, matrix, matching))
        confidences.append(image.scores[keep])
    if not confidences:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(confidences), np.concatenate(ious)


def calibration(ground_truth: str | os.PathLike | dict, detections: Sequence[ImageDetections], iou_kind: str = "mask",
                matching: str = "best", bins: int = NUM_BINS, min_score: float = 0.0) -> CalibrationResult:
    """ECE of the detections' confidence against their IoU with the matched gt."""
    confidences, ious = match_ious(ground_truth, detections, iou_kind, matching, min_score)
    return expected_calibration_error(confidences, ious, bins, iou_kind, matching)


def recall_at_scores(ground_truth: str | os.PathLike | dict, detections: Sequence[ImageDetections],
                     thresholds: Sequence[float] = RECALL_THRESHOLDS, iou_kind: str = "mask",
                     hit_iou: float = RECALL_HIT_IOU) -> dict[float, float | None]:
    """threshold t -> share of the ground-truth instances (crowd skipped) that a detection of their
    category finds with score >= t and IoU >= `hit_iou`: what a consumer that drops detections below t
    (the node's score_threshold) still sees. Images without detections count their instances as missed;
    None when there are no instances."""
    by_image = _checked_ground_truth(ground_truth, detections, iou_kind)
    total = sum(len(categories) for categories, _ in by_image.values())
    found = np.zeros(len(thresholds), dtype=np.int64)
    for image in detections:
        gt_categories, regions = by_image.get(image.image_id, NO_GROUND_TRUTH)
        if len(image) == 0 or not regions:
            continue
        hits = (_iou_matrix(image, regions, iou_kind) >= hit_iou) & (image.category_ids[:, None] == gt_categories)
        for i, t in enumerate(thresholds):
            found[i] += int(hits[image.scores >= t].any(axis=0).sum())
    return {float(t): (float(n) / total if total else None) for t, n in zip(thresholds, found)}


def reliability_diagram(results: Sequence[CalibrationResult], path: str | os.PathLike, title: str = "",
                        labels: Sequence[str] | None = None) -> Path:
    """PNG: mean IoU vs mean confidence per bin (one line per result, named by `labels` or by its IoU
    kind and matching) and the diagonal, with the bin counts underneath."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    names = labels or [f"{result.iou_kind} IoU, {result.matching}" for result in results]
    for name, result in zip(names, results):
        filled = result.counts > 0
        line, = top.plot(result.mean_confidence[filled], result.mean_iou[filled], "o-",
                         label=f"{name}: ECE {result.ece:.3f} (n={result.n})")
        # counts per bin as a step outline in the line's colour (several results stay readable)
        bottom.stairs(np.maximum(result.counts, 0.5), result.edges, color=line.get_color())
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="mean IoU with matched ground truth", title=title or "reliability")
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="confidence", ylabel="detections", yscale="log")
    bottom.set_ylim(bottom=0.8)  # empty bins (drawn at 0.5 for the log scale) stay below the axis
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
