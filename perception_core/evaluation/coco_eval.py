"""COCO box and mask AP with pycocotools, quiet, with per-category AP for subsets of categories.

    result = evaluate_coco("val/instances.json", detections)       # detections: [ImageDetections]
    result.stats["segm"]["AP"], result.stats["bbox"]["AP50"]
    result.subset("segm", holdout_category_ids)                    # {"AP", "AP50", "AP75"} or None

AP follows pycocotools exactly (101-point interpolated precision, IoU .50:.05:.95, at most 100
detections per image, area ranges small/medium/large). Categories without ground truth in the
evaluated images are left out of every mean (pycocotools marks them -1); a value that has no
ground truth at all is None. Zero detections give AP 0, not an error.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .detections import ImageDetections, coco_results

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoResult:
    """stats[iou_type][name] for name in STAT_NAMES (None = no ground truth for it);
    precision[iou_type]: (T=10, R=101, K) interpolated precision at area 'all', 100 detections,
    -1 where category k has no ground truth; category_ids: the K category ids in that order."""
    stats: dict[str, dict[str, float | None]]
    precision: dict[str, np.ndarray]
    category_ids: list[int]
    num_images: int
    num_detections: int

    def per_category(self, iou_type: str) -> dict[int, float | None]:
        """category id -> AP (IoU .50:.95); None for categories without ground truth."""
        return {cat: _mean_valid(self.precision[iou_type][:, :, k]) for k, cat in enumerate(self.category_ids)}

    def subset(self, iou_type: str, category_ids: Sequence[int]) -> dict[str, float | None] | None:
        """AP, AP50 and AP75 over `category_ids` only (what pycocotools gives with params.catIds
        set to them, since categories are evaluated independently); None if none has ground truth."""
        columns = [k for k, cat in enumerate(self.category_ids) if cat in set(int(c) for c in category_ids)]
        precision = self.precision[iou_type][:, :, columns]
        if not columns or not (precision > -1).any():
            return None
        return {"AP": _mean_valid(precision), "AP50": _mean_valid(precision[0]), "AP75": _mean_valid(precision[5])}


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def load_ground_truth(ground_truth: str | os.PathLike | dict) -> dict:
    """COCO instances json (path or parsed dict) -> a dict pycocotools can evaluate: every
    annotation gets an id, iscrowd and area when the file lacks them. The input is not modified."""
    if isinstance(ground_truth, (str, os.PathLike)):
        from ..training.annotations import annotation_format, read_annotation_file

        path = Path(ground_truth)
        data = read_annotation_file(path)  # DatasetError with a clear message
        if annotation_format(data) != "coco":
            raise ValueError(f"'{path}' is YouTube-VIS json; use 'mobius eval-video' for videos")
    elif isinstance(ground_truth, dict):
        data = ground_truth
    else:
        raise TypeError(f"ground truth must be a json path or a dict, got {type(ground_truth).__name__}")
    if not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise ValueError("COCO ground truth needs 'images' and 'categories' lists")
    heights = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in data["images"]}
    annotations = []
    for index, annotation in enumerate(data.get("annotations", [])):
        annotation = dict(annotation)
        annotation.setdefault("id", index + 1)
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = _area(annotation, heights.get(int(annotation["image_id"])))
        annotations.append(annotation)
    return {**data, "annotations": annotations}


def _area(annotation: dict, size: tuple[int, int] | None) -> float:
    segmentation = annotation.get("segmentation")
    if segmentation is not None and size is not None:
        from ..training.annotations import to_rle

        return float(mask_utils.area(to_rle(segmentation, *size)))
    x, y, w, h = annotation["bbox"]
    return float(w * h)


def _quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results_coco(ground_truth: COCO, records: list[dict], kind: str) -> COCO:
    """A results COCO object built like pycocotools' loadRes, but quiet and fine with no records."""
    records = copy.deepcopy(records)
    for index, record in enumerate(records):
        record["id"] = index + 1
        record["iscrowd"] = 0
        if kind == "segm":
            record["area"] = float(mask_utils.area(record["segmentation"]))
            record["bbox"] = [float(v) for v in mask_utils.toBbox(record["segmentation"])]
        else:
            x, y, w, h = record["bbox"]
            record["area"] = float(w * h)
            # pycocotools' loadRes stores the box as a polygon; COCOeval never reads it for 'bbox'
            record["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
    return _quiet_coco({"images": ground_truth.dataset["images"], "categories": ground_truth.dataset["categories"],
                        "annotations": records})


def check_detections(ground_truth: dict, detections: Sequence[ImageDetections]) -> None:
    """ValueError if detections name images or categories that the ground truth lacks."""
    image_ids = {int(image["id"]) for image in ground_truth["images"]}
    category_ids = {int(category["id"]) for category in ground_truth["categories"]}
    unknown_images = sorted({d.image_id for d in detections} - image_ids)
    if unknown_images:
        raise ValueError(f"detections for image ids {unknown_images[:5]} that the ground truth does not list; "
                         f"evaluate against the annotation file the images came from")
    unknown = sorted({int(c) for d in detections for c in d.category_ids} - category_ids)
    if unknown:
        raise ValueError(f"detections with category ids {unknown[:5]} that the ground truth does not list")


def evaluate_coco(ground_truth: str | os.PathLike | dict, detections: Sequence[ImageDetections],
                  iou_types: Sequence[str] = IOU_TYPES, category_ids: Sequence[int] | None = None,
                  image_ids: Sequence[int] | None = None, max_detections: int = 100) -> CocoResult:
    """COCO AP of `detections` against `ground_truth`.

    category_ids: evaluate only these categories (e.g. the prompted ones); default all.
    image_ids: evaluate only these images (default all images of the ground truth, so images
        without detections count as misses and images without ground truth can add false positives).
    Detections beyond the `max_detections` most confident per image are dropped first."""
    unknown = set(iou_types) - set(IOU_TYPES)
    if unknown or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {list(iou_types)}")
    data = load_ground_truth(ground_truth)
    check_detections(data, detections)
    gt = _quiet_coco(data)
    detections = [d.top(max_detections) for d in detections]
    stats, precision = {}, {}
    for iou_type in iou_types:
        records = coco_results(detections, iou_type)
        evaluator = COCOeval(gt, _results_coco(gt, records, iou_type), iou_type)
        if category_ids is not None:
            evaluator.params.catIds = sorted(int(c) for c in category_ids)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats[iou_type] = {name: (float(v) if v > -1 else None) for name, v in zip(STAT_NAMES, evaluator.stats)}
        # (T, R, K, A, M) -> (T, R, K) at area 'all' and the largest detection budget
        precision[iou_type] = evaluator.eval["precision"][:, :, :, 0, -1].copy()
    evaluated = list(evaluator.params.catIds)
    return CocoResult(stats, precision, [int(c) for c in evaluated], len(evaluator.params.imgIds),
                      sum(len(d) for d in detections))
