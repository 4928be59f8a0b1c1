"""Detections of one image in input-image pixels, and their conversion to COCO results.

Every evaluator in this package (COCO AP, calibration) and the predictor share this record, so a
model's outputs and a hand-made perfect answer go through exactly the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class ImageDetections:
    """The detections of one image (n of them, any order).

    image_id:     the COCO image id they belong to.
    scores:       (n,) float confidences in [0, 1].
    category_ids: (n,) int COCO category ids (not prompt indices).
    boxes:        (n, 4) float x1, y1, x2, y2 in image pixels (COCO pixel edges).
    masks:        (n, H, W) bool at image resolution, or a list of n COCO RLE dicts, or None for
                  box-only detections.
    """
    image_id: int
    scores: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | list[dict] | None = None
    rles: list[dict] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        count = len(self.scores)
        if len(self.category_ids) != count or len(self.boxes) != count:
            raise ValueError(f"image {self.image_id}: {count} scores, {len(self.category_ids)} category ids "
                             f"and {len(self.boxes)} boxes; every detection needs one of each")
        self.rles = [] if self.masks is None else to_rles(self.masks, self.image_id)
        if self.masks is not None and len(self.rles) != count:
            raise ValueError(f"image {self.image_id}: {count} detections but {len(self.rles)} masks")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def top(self, k: int) -> "ImageDetections":
        """The k most confident detections (stable order for ties)."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        masks = None if self.masks is None else [self.rles[i] for i in order]
        return ImageDetections(self.image_id, self.scores[order], self.category_ids[order], self.boxes[order], masks)


def to_rles(masks: np.ndarray | Sequence[dict], image_id: int = -1) -> list[dict]:
    """(n, H, W) bool array or n RLE dicts -> n compressed RLE dicts (counts as bytes or str)."""
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"image {image_id}: masks must be (n, H, W) bool, got shape {masks.shape}")
        if len(masks) == 0:
            return []
        # (n, H, W) -> (H, W, n) Fortran order, the layout pycocotools encodes in one call
        return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    rles = list(masks)
    for rle in rles:
        if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
            raise ValueError(f"image {image_id}: a mask must be a bool array or a COCO RLE dict with "
                             f"'size' and 'counts', got {type(rle).__name__}")
    return [mask_utils.frPyObjects(rle, *rle["size"]) if isinstance(rle["counts"], list) else rle for rle in rles]


def json_rle(rle: dict) -> dict:
    """RLE with str counts (JSON-ready)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 -> (n, 4) COCO x, y, w, h."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_results(detections: Sequence[ImageDetections], kind: str) -> list[dict]:
    """COCO results json records. kind "bbox": boxes only; "segm": masks (area and box from the
    mask, as pycocotools' loadRes does); "both": both fields (the format of a results file)."""
    if kind not in ("bbox", "segm", "both"):
        raise ValueError(f"kind must be 'bbox', 'segm' or 'both', got {kind!r}")
    records = []
    for image in detections:
        if kind != "bbox" and not image.has_masks and len(image):
            raise ValueError(f"image {image.image_id} has detections without masks; mask AP needs masks")
        boxes = xyxy_to_xywh(image.boxes)
        for index in range(len(image)):
            record = {"image_id": int(image.image_id), "category_id": int(image.category_ids[index]),
                      "score": float(image.scores[index])}
            if kind in ("bbox", "both"):
                record["bbox"] = [float(v) for v in boxes[index]]
            if kind in ("segm", "both") and image.has_masks:
                record["segmentation"] = json_rle(image.rles[index])
            records.append(record)
    return records


def detections_from_coco_results(records: Sequence[dict]) -> list[ImageDetections]:
    """Inverse of coco_results: a COCO results json (list of records) grouped per image."""
    grouped: dict[int, list[dict]] = {}
    for record in records:
        try:
            grouped.setdefault(int(record["image_id"]), []).append(record)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a COCO result record needs 'image_id', 'category_id', 'score' and 'bbox' "
                             f"and/or 'segmentation'; got {sorted(record) if isinstance(record, dict) else record!r}"
                             ) from None
    images = []
    for image_id, items in grouped.items():
        with_masks = all("segmentation" in r for r in items)
        boxes = []
        for r in items:
            if "bbox" in r:
                x, y, w, h = r["bbox"]
            elif with_masks:
                x, y, w, h = mask_utils.toBbox(to_rles([r["segmentation"]])[0])
            else:
                raise ValueError(f"image {image_id}: a result has neither 'bbox' nor 'segmentation'")
            boxes.append([x, y, x + w, y + h])
        images.append(ImageDetections(image_id, [r["score"] for r in items], [r["category_id"] for r in items],
                                      np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                      [r["segmentation"] for r in items] if with_masks else None))
    return images
