"""YouTube-VIS video AP: COCO's AP with one "image" per video and spatio-temporal mask IoU.

The protocol of the YouTube-VIS benchmark (its fork of the COCO API):
- a ground-truth instance and a result are mask tubes, one mask (or None) per frame;
- IoU(d, g) = sum_t |d_t & g_t| / sum_t |d_t | g_t| over the frames where either exists;
- per video and category, results in descending score order (at most 100) greedily take the
  unmatched ground truth of highest IoU >= the threshold (pycocotools' evaluateImg);
- per category and IoU threshold .50:.05:.95, the 101-point interpolated precision over all
  videos (pycocotools' accumulate); AP = mean over thresholds and over the categories that have
  ground truth. AR@k = mean recall with at most k results per video and category.
Only the area range "all" is computed. Crowd ground truth is never a miss, and results matched to
it are neither hits nor false positives (pycocotools' ignore rule).
For single-frame videos this equals pycocotools' COCOeval segm AP (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)


@dataclass
class Tube:
    """One instance in one video: per-frame compressed RLEs (None = absent), its category, and a
    score (results) or a crowd flag (ground truth)."""
    video_id: int
    category_id: int
    rles: list[dict | None]
    score: float = 1.0
    iscrowd: bool = False

    def areas(self) -> np.ndarray:
        return np.asarray([0.0 if rle is None else float(mask_utils.area(rle)) for rle in self.rles])


def tube_iou(first: Tube, second: Tube, first_areas: np.ndarray | None = None,
             second_areas: np.ndarray | None = None) -> float:
    """Spatio-temporal IoU sum_t |inter_t| / sum_t |union_t| (0 when both tubes are empty)."""
    if len(first.rles) != len(second.rles):
        raise ValueError(f"video {first.video_id}: tubes of {len(first.rles)} and {len(second.rles)} frames")
    first_areas = first.areas() if first_areas is None else first_areas
    second_areas = second.areas() if second_areas is None else second_areas
    intersection = 0.0
    for a, b in zip(first.rles, second.rles):
        if a is not None and b is not None:
            intersection += float(mask_utils.area(mask_utils.merge([a, b], intersect=True)))
    union = float(first_areas.sum() + second_areas.sum()) - intersection
    return intersection / union if union > 0 else 0.0


def _match_video(results: list[Tube], truths: list[Tube], max_detections: int) -> dict:
    """pycocotools' evaluateImg for one video and category (area 'all'): results sorted by score
    (stable), crowd ground truth last; returns scores, matched flags (T, D) and ignore flags."""
    results = [results[i] for i in np.argsort([-r.score for r in results], kind="mergesort")[:max_detections]]
    truths = [truths[i] for i in np.argsort([t.iscrowd for t in truths], kind="mergesort")]
    crowd = np.asarray([t.iscrowd for t in truths], dtype=bool)
    result_areas = [r.areas() for r in results]
    truth_areas = [t.areas() for t in truths]
    ious = np.asarray([[tube_iou(r, t, ra, ta) for t, ta in zip(truths, truth_areas)]
                       for r, ra in zip(results, result_areas)]).reshape(len(results), len(truths))
    matched = np.zeros((len(IOU_THRESHOLDS), len(results)), dtype=bool)
    result_ignored = np.zeros((len(IOU_THRESHOLDS), len(results)), dtype=bool)
    for t_index, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(truths), dtype=bool)
        for d_index in range(len(results)):
            best, match = min(threshold, 1 - 1e-10), -1
            for g_index in range(len(truths)):
                if taken[g_index] and not crowd[g_index]:
                    continue
                if match > -1 and not crowd[match] and crowd[g_index]:
                    break  # crowd ground truth comes last: a real match is never traded for it
                if ious[d_index, g_index] < best:
                    continue
                best, match = ious[d_index, g_index], g_index
            if match == -1:
                continue
            taken[match] = True
            matched[t_index, d_index] = True
            result_ignored[t_index, d_index] = crowd[match]
    return {"scores": np.asarray([r.score for r in results]), "matched": matched, "ignored": result_ignored,
            "num_truths": int((~crowd).sum())}


def _precision_recall(per_video: list[dict], max_detections: int) -> tuple[np.ndarray, np.ndarray] | None:
    """pycocotools' accumulate for one category: (precision (T, R), recall (T,)), or None when the
    category has no (non-crowd) ground truth."""
    num_truths = sum(v["num_truths"] for v in per_video)
    if num_truths == 0:
        return None
    scores = np.concatenate([v["scores"][:max_detections] for v in per_video])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([v["matched"][:, :max_detections] for v in per_video], axis=1)[:, order]
    ignored = np.concatenate([v["ignored"][:, :max_detections] for v in per_video], axis=1)[:, order]
    true_positives = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    false_positives = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t_index, (tp, fp) in enumerate(zip(true_positives, false_positives)):
        if tp.size == 0:
            continue
        rc = tp / num_truths
        pr = tp / (fp + tp + np.spacing(1))
        recall[t_index] = rc[-1]
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope, monotone from the right
        indices = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        valid = indices < len(pr)
        precision[t_index, valid] = pr[indices[valid]]
    return precision, recall


def video_ap(truths: Sequence[Tube], results: Sequence[Tube], category_ids: Sequence[int] | None = None) -> dict:
    """AP, AP50, AP75, AR1, AR10, AR100 (None when no category has ground truth) and per-category
    AP (None for categories without ground truth) of `results` against `truths`.

    category_ids: categories to evaluate (default: every category of truths and results)."""
    if category_ids is None:
        category_ids = sorted({t.category_id for t in truths} | {r.category_id for r in results})
    videos = sorted({t.video_id for t in truths} | {r.video_id for r in results})
    grouped: dict[tuple[int, int], tuple[list, list]] = {}
    for tube in truths:
        grouped.setdefault((tube.video_id, tube.category_id), ([], []))[0].append(tube)
    for tube in results:
        grouped.setdefault((tube.video_id, tube.category_id), ([], []))[1].append(tube)
    precision = np.full((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(category_ids)), -1.0)
    recall = np.full((len(IOU_THRESHOLDS), len(category_ids), len(MAX_DETECTIONS)), -1.0)
    for k, category in enumerate(category_ids):
        per_video = [_match_video(grouped[(v, category)][1], grouped[(v, category)][0], MAX_DETECTIONS[-1])
                     for v in videos if (v, category) in grouped]
        for m, max_detections in enumerate(MAX_DETECTIONS):
            curves = _precision_recall(per_video, max_detections)
            if curves is None:
                continue
            recall[:, k, m] = curves[1]
            if max_detections == MAX_DETECTIONS[-1]:
                precision[:, :, k] = curves[0]
    return {**summarize(precision, recall),
            "per_category": {int(c): _mean(precision[:, :, k]) for k, c in enumerate(category_ids)},
            "precision": precision}


def _mean(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict:
    """COCO's summary numbers from precision (T, R, K) and recall (T, K, M)."""
    return {"AP": _mean(precision), "AP50": _mean(precision[0]), "AP75": _mean(precision[5]),
            **{f"AR{m}": _mean(recall[:, :, i]) for i, m in enumerate(MAX_DETECTIONS)}}
