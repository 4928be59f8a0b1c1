"""Network outputs -> per-instance records in input-frame pixels and an instance-id image."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .preprocess import Letterbox


@dataclass
class Instance:
    label: int                      # prompt index
    score: float                    # calibrated confidence
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    mask: np.ndarray                # (H, W) bool at frame resolution
    query: int                      # row in the network outputs


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def select(logits: np.ndarray, threshold: float, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, P) logits -> (rows, labels, scores) of queries with confidence >= threshold, best first."""
    if logits.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    probs = _sigmoid(logits)
    labels = probs.argmax(axis=1)
    scores = probs[np.arange(len(probs)), labels]
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= threshold]
    if top_k is not None:
        order = order[:top_k]
    return order, labels[order], scores[order]


def to_instances(logits: np.ndarray, boxes: np.ndarray, masks: np.ndarray, box: Letterbox, threshold: float,
                 top_k: int | None = None) -> list[Instance]:
    """logits (N, P), boxes (N, 4) cxcywh in [0, 1] of the input, masks (N, S/4, S/4) logits."""
    rows, labels, scores = select(logits, threshold, top_k)
    valid_rows, valid_cols = box.valid
    instances = []
    for row, label, score in zip(rows, labels, scores):
        cx, cy, w, h = boxes[row] * box.size / box.scale
        x1, y1 = np.clip([cx - w / 2, cy - h / 2], 0, [box.width, box.height])
        x2, y2 = np.clip([cx + w / 2, cy + h / 2], 0, [box.width, box.height])
        low = masks[row]
        # crop the part of the stride-4 mask that covers the frame, then resize to the frame
        crop = low[:max(1, round(valid_rows * low.shape[0] / box.size)), :max(1, round(valid_cols * low.shape[1] / box.size))]
        full = cv2.resize(crop.astype(np.float32), (box.width, box.height), interpolation=cv2.INTER_LINEAR) > 0
        instances.append(Instance(int(label), float(score), (float(x1), float(y1), float(x2), float(y2)), full, int(row)))
    return instances


def id_image(instances: list[Instance], ids: list[int], height: int, width: int) -> np.ndarray:
    """uint16 (H, W): 0 background, else the id of the highest-scoring instance covering the pixel."""
    image = np.zeros((height, width), dtype=np.uint16)
    for index in np.argsort([inst.score for inst in instances]):  # low score first, best painted last
        image[instances[index].mask] = ids[index]
    return image


def box_to_frame(box_cxcywh: np.ndarray, box: Letterbox) -> tuple[float, float, float, float]:
    """(4,) cxcywh in [0, 1] of the network input -> x1, y1, x2, y2 in frame pixels (clipped)."""
    cx, cy, w, h = np.asarray(box_cxcywh, dtype=np.float64) * box.size / box.scale
    x1, y1 = np.clip([cx - w / 2, cy - h / 2], 0, [box.width, box.height])
    x2, y2 = np.clip([cx + w / 2, cy + h / 2], 0, [box.width, box.height])
    return float(x1), float(y1), float(x2), float(y2)


def valid_mask_region(low: np.ndarray, box: Letterbox) -> np.ndarray:
    """(..., S/4, S/4) stride-4 maps -> the part covering the frame (letterbox padding cut off)."""
    rows, cols = box.valid
    height, width = low.shape[-2:]
    return low[..., :max(1, round(rows * height / box.size)), :max(1, round(cols * width / box.size))]


def mask_to_frame(low_logits: np.ndarray, box: Letterbox) -> np.ndarray:
    """(S/4, S/4) mask logits of the network input -> (H, W) bool at frame resolution."""
    crop = valid_mask_region(low_logits, box)
    return cv2.resize(np.ascontiguousarray(crop, dtype=np.float32), (box.width, box.height),
                      interpolation=cv2.INTER_LINEAR) > 0


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight x1, y1, x2, y2 (pixel edges) of a bool mask; None when the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE {'size': [H, W], 'counts': str} (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
