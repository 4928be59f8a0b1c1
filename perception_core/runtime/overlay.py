"""Colour overlay of instance masks, boxes and labels (what people look at)."""
from __future__ import annotations

import cv2
import numpy as np

from .postprocess import Instance


def color_for(identity: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per track id (golden-ratio hue steps)."""
    hue = int((identity * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 200, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw(frame: np.ndarray, instances: list[Instance], ids: list[int], names: list[str],
         alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 frame -> a copy with masks blended in, boxes and 'id label score' captions."""
    out = frame.copy()
    for inst, identity in zip(instances, ids):
        color = np.array(color_for(identity), dtype=np.float32)
        region = inst.mask
        out[region] = (out[region] * (1 - alpha) + color * alpha).astype(np.uint8)
    for inst, identity in zip(instances, ids):
        color = color_for(identity)
        x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 1)
        caption = f"{identity} {names[inst.label]} {inst.score:.2f}"
        cv2.putText(out, caption, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return out


def draw_result(frame: np.ndarray, result, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 frame + processor.FrameResult -> a copy with masks, boxes and 'id label score'."""
    out = frame.copy()
    for inst in sorted(result.instances, key=lambda i: i.score):     # best blended last
        color = np.array(color_for(inst.track_id), dtype=np.float32)
        out[inst.mask] = (out[inst.mask] * (1 - alpha) + color * alpha).astype(np.uint8)
    for inst in result.instances:
        color = color_for(inst.track_id)
        x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 1)
        caption = f"{inst.track_id} {inst.label} {inst.score:.2f}"
        cv2.putText(out, caption, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return out
