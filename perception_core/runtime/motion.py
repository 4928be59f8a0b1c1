"""Motion compensation for bottleneck reuse: the keyframe's coarse mask part follows each object.

Between keyframes, bottleneck reuse reads each tracked object's mask logits as
coarse_i + fine_i (export_kernels.LateralGraph): coarse_i is the kernel read from the keyframe's
coarse mask features (the stride-16 bottleneck, upsampled), so it shows the object where it was on
the keyframe; fine_i is the same kernel read from this frame's stride-4 map, so it sees the object
where it is now. `align` shifts coarse_i by the object's displacement d_i, the fixed point of

    d <- centroid(shift(coarse_i, d) + fine_i > 0) - centroid(keyframe mask_i > 0)

With d = 0 the mask lies between the old and the new position; each step moves the coarse part
after the fine part, and at the true displacement both agree. The iteration starts from the shift
found on the previous frame (objects keep moving), stops when the rounded shift repeats, and never
moves a map by more than MAX_SHIFT of its side. Pure numpy on the (N, H/4, W/4) logits: about
0.1 ms per object. Measured against ground truth in docs/BENCHMARKS.md (reuse section).
"""
from __future__ import annotations

import numpy as np

ITERATIONS = 4
MAX_SHIFT = 0.25   # largest shift, as a fraction of the map's side


def centroid(mask: np.ndarray) -> np.ndarray:
    """(row, col) mean of a (H, W) bool mask; NaNs when it is empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.full(2, np.nan)
    return np.array([rows.mean(), cols.mean()])


def shift_map(values: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(H, W) map moved by the rounded (rows, cols) shift; border values fill what enters."""
    height, width = values.shape
    dy, dx = (int(round(float(v))) for v in shift)
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    return values[rows[:, None], cols[None, :]]


def align(coarse: np.ndarray, fine: np.ndarray, key_centroids: np.ndarray,
          start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """coarse, fine: (N, H, W) logit parts; key_centroids (N, 2) of the keyframe's masks (NaN: empty);
    start (N, 2) shifts to begin from (default 0). Returns the mask logits (N, H, W) and the shifts
    (N, 2) used (0 for an object without a keyframe centroid or whose mask vanishes)."""
    if coarse.shape != fine.shape or coarse.ndim != 3 or key_centroids.shape != (coarse.shape[0], 2):
        raise ValueError(f"coarse {coarse.shape} and fine {fine.shape} must be (N, H, W) alike and key_centroids "
                         f"{key_centroids.shape} (N, 2)")
    count, height, width = coarse.shape
    limit = MAX_SHIFT * np.array([height, width])
    shifts = np.zeros((count, 2)) if start is None else np.clip(np.asarray(start, np.float64), -limit, limit)
    masks = np.empty_like(coarse)
    for index in range(count):
        known = np.isfinite(key_centroids[index]).all()
        shift = shifts[index] if known else np.zeros(2)
        for _ in range(ITERATIONS if known else 0):
            moved = centroid(shift_map(coarse[index], shift) + fine[index] > 0)
            if not np.isfinite(moved).all():
                break                                   # nothing left of the object: keep the shift
            update = np.clip(moved - key_centroids[index], -limit, limit)
            if np.array_equal(np.round(update), np.round(shift)):
                break
            shift = update
        shifts[index] = shift
        masks[index] = shift_map(coarse[index], shift) + fine[index]
    return masks, shifts
