"""Tracking metrics with trackeval: HOTA, DetA, AssA (HOTA), IDF1 (Identity), ID switches and
MOTA (CLEAR), on mask tubes with mask IoU as the similarity.

trackeval's metric classes are fed directly: for every sequence we build the dict that their
`eval_sequence` expects (what trackeval's own YouTube-VIS loader would produce):

    num_timesteps, num_gt_ids, num_tracker_ids, num_gt_dets, num_tracker_dets,
    gt_ids[t] / tracker_ids[t]: (n_t,) int ids present at frame t, relabelled 0..num_ids-1,
    similarity_scores[t]: (n_gt_t, n_tracker_t) mask IoU at frame t.

Modes (say which when you report numbers):
- "per_category" (default, trackeval's YouTube-VIS way): one sequence per (video, category); a
  result only ever matches ground truth of its own category, so a wrong label costs detection
  and association. Sequences are then combined by summing counts ("detection averaged" over
  categories: trackeval's cls_comb_det_av).
- "class_agnostic": one sequence per video, categories ignored: pure segmentation tracking quality.
HOTA, DetA, AssA, LocA are means over the 19 localisation thresholds alpha = .05 ... .95; IDF1,
IDSW and MOTA use an IoU threshold of 0.5.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from .video_ap import Tube

MODES = ("per_category", "class_agnostic")
MATCH_THRESHOLD = 0.5


def _present(tube: Tube, frame: int) -> bool:
    rle = tube.rles[frame]
    return rle is not None and mask_utils.area(rle) > 0


def sequence_data(truths: Sequence[Tube], results: Sequence[Tube], num_frames: int) -> dict:
    """trackeval's per-sequence data dict from ground-truth and result tubes of one sequence."""
    for tube in (*truths, *results):
        if len(tube.rles) != num_frames:
            raise ValueError(f"video {tube.video_id}: a track has {len(tube.rles)} frames, the video {num_frames}")
    present_gt = np.asarray([[_present(t, f) for f in range(num_frames)] for t in truths], dtype=bool)
    present_tr = np.asarray([[_present(r, f) for f in range(num_frames)] for r in results], dtype=bool)
    present_gt = present_gt.reshape(len(truths), num_frames)
    present_tr = present_tr.reshape(len(results), num_frames)
    # tracks never present get no id (trackeval relabels the ids that occur to 0..n-1 the same way)
    gt_index = np.cumsum(present_gt.any(axis=1)) - 1
    tr_index = np.cumsum(present_tr.any(axis=1)) - 1
    data = {"num_timesteps": num_frames, "num_gt_ids": int(present_gt.any(axis=1).sum()),
            "num_tracker_ids": int(present_tr.any(axis=1).sum()), "num_gt_dets": int(present_gt.sum()),
            "num_tracker_dets": int(present_tr.sum()), "gt_ids": [], "tracker_ids": [], "similarity_scores": []}
    for frame in range(num_frames):
        gt_rows = np.flatnonzero(present_gt[:, frame])
        tr_rows = np.flatnonzero(present_tr[:, frame])
        similarity = np.zeros((len(gt_rows), len(tr_rows)))
        if len(gt_rows) and len(tr_rows):
            similarity = np.asarray(mask_utils.iou([truths[i].rles[frame] for i in gt_rows],
                                                   [results[j].rles[frame] for j in tr_rows],
                                                   [0] * len(tr_rows)), dtype=np.float64)
            similarity = similarity.reshape(len(gt_rows), len(tr_rows))
        data["gt_ids"].append(gt_index[gt_rows].astype(int))
        data["tracker_ids"].append(tr_index[tr_rows].astype(int))
        data["similarity_scores"].append(similarity)
    return data


def _sequences(truths: Sequence[Tube], results: Sequence[Tube], frame_counts: dict[int, int],
               mode: str) -> list[tuple[list[Tube], list[Tube], int]]:
    grouped: dict[tuple, tuple[list, list]] = {}
    for index, tubes in enumerate((truths, results)):
        for tube in tubes:
            key = (tube.video_id,) if mode == "class_agnostic" else (tube.video_id, tube.category_id)
            grouped.setdefault(key, ([], []))[index].append(tube)
    return [(gt, res, frame_counts[key[0]]) for key, (gt, res) in sorted(grouped.items())]


def tracking_metrics(truths: Sequence[Tube], results: Sequence[Tube], frame_counts: dict[int, int],
                     mode: str = "per_category") -> dict:
    """HOTA, DetA, AssA, LocA, DetRe, DetPr, AssRe, AssPr, IDF1, IDR, IDP, IDSW, MOTA, MOTP, Frag,
    MT, ML and the counts behind them, over all videos. frame_counts: video id -> frames."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    if mode not in MODES:
        raise ValueError(f"tracking mode must be one of {MODES}, got {mode!r}")
    unknown = sorted({t.video_id for t in (*truths, *results)} - set(frame_counts))
    if unknown:
        raise ValueError(f"tracks of video ids {unknown[:5]} that the ground truth does not list")
    config = {"THRESHOLD": MATCH_THRESHOLD, "PRINT_CONFIG": False}
    metrics = {"HOTA": HOTA(), "CLEAR": CLEAR(config), "Identity": Identity(config)}
    per_sequence: dict[str, dict] = {name: {} for name in metrics}
    for index, (gt, res, frames) in enumerate(_sequences(truths, results, frame_counts, mode)):
        data = sequence_data(gt, res, frames)
        for name, metric in metrics.items():
            per_sequence[name][str(index)] = metric.eval_sequence(data)
    counts = {"mode": mode, "sequences": len(per_sequence["HOTA"]),
              "gt_tracks": len(truths), "result_tracks": len(results)}
    if not per_sequence["HOTA"]:
        return {**{name: 0.0 for name in ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr",
                                          "IDF1", "IDR", "IDP", "MOTA", "MOTP")},
                "IDSW": 0, "Frag": 0, "MT": 0, "ML": 0, **counts}
    combined = {name: metric.combine_sequences(per_sequence[name]) for name, metric in metrics.items()}
    hota, clear, identity = combined["HOTA"], combined["CLEAR"], combined["Identity"]
    out = {name: float(np.mean(hota[name])) for name in ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr",
                                                          "AssRe", "AssPr")}
    out.update({name: float(identity[name]) for name in ("IDF1", "IDR", "IDP")})
    out.update({"MOTA": float(clear["MOTA"]), "MOTP": float(clear["MOTP"]), "IDSW": int(clear["IDSW"]),
                "Frag": int(clear["Frag"]), "MT": int(clear["MT"]), "ML": int(clear["ML"])})
    return {**out, **counts}
