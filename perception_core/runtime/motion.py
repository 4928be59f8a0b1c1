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
0.13 ms per object (96 x 96 maps, 3 steps). Measured against ground truth in docs/BENCHMARKS.md
(reuse section).
"""
from __future__ import annotations

import numpy as np

ITERATIONS = 4
MAX_SHIFT = 0.25   # largest shift, as a fraction of the map's side


def centroid(mask: np.ndarray) -> np.ndarray:
    """(row, col) mean of a (H, W) bool mask; NaNs when it is empty. From the row and column counts
    (a third of the time of np.nonzero on a 96 x 96 mask)."""
    weights = mask.astype(np.float32)
    per_row, per_col = weights.sum(axis=1), weights.sum(axis=0)
    total = per_row.sum()
    if total == 0:
        return np.full(2, np.nan)
    return np.array([per_row @ np.arange(mask.shape[0]), per_col @ np.arange(mask.shape[1])]) / total


def mask_centroids(logits: np.ndarray) -> np.ndarray:
    """(N, H, W) mask logits -> (N, 2) centroids of their positive pixels (NaN rows for empty masks):
    the keyframe centroids `align` measures displacements from."""
    return np.array([centroid(mask > 0) for mask in logits]).reshape(-1, 2)


class Shifter:
    """Views of one (H, W) map moved by integer shifts of up to `reach` rows / columns: the map is
    padded once with its border values, and each shift is a slice of that (no copy per shift)."""

    def __init__(self, values: np.ndarray, reach: tuple[int, int]):
        self.shape = values.shape
        self.reach = reach
        rows = np.clip(np.arange(-reach[0], values.shape[0] + reach[0]), 0, values.shape[0] - 1)
        cols = np.clip(np.arange(-reach[1], values.shape[1] + reach[1]), 0, values.shape[1] - 1)
        self.padded = values.take(rows, axis=0).take(cols, axis=1)   # edge padding, 4x faster than np.pad

    def __call__(self, shift: np.ndarray) -> np.ndarray:
        """The map moved by the rounded (rows, cols) shift (clipped to the reach); border values fill
        what enters."""
        (reach_y, reach_x), (dy, dx) = self.reach, (round(float(shift[0])), round(float(shift[1])))
        top = reach_y - min(max(dy, -reach_y), reach_y)
        left = reach_x - min(max(dx, -reach_x), reach_x)
        return self.padded[top:top + self.shape[0], left:left + self.shape[1]]


def align(coarse: np.ndarray, fine: np.ndarray, key_centroids: np.ndarray,
          start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """coarse, fine: (N, H, W) logit parts; key_centroids (N, 2) of the keyframe's masks (NaN: empty);
    start (N, 2) shifts to begin from (default 0). Returns the mask logits (N, H, W) and the shifts
    (N, 2) used (0 for an object without a keyframe centroid; kept when the object's mask vanishes)."""
    if coarse.shape != fine.shape or coarse.ndim != 3 or key_centroids.shape != (coarse.shape[0], 2):
        raise ValueError(f"coarse {coarse.shape} and fine {fine.shape} must be (N, H, W) alike and key_centroids "
                         f"{key_centroids.shape} (N, 2)")
    count, height, width = coarse.shape
    limit = MAX_SHIFT * np.array([height, width])
    reach = (int(np.ceil(limit[0])), int(np.ceil(limit[1])))
    shifts = np.zeros((count, 2)) if start is None else np.clip(np.asarray(start, np.float64), -limit, limit)
    masks = np.empty_like(coarse)
    for index in range(count):
        known = np.isfinite(key_centroids[index]).all()
        shift = shifts[index] if known else np.zeros(2)
        moved_map = Shifter(coarse[index], reach)
        for _ in range(ITERATIONS if known else 0):
            moved = centroid(moved_map(shift) + fine[index] > 0)
            if not np.isfinite(moved).all():
                break                                   # nothing left of the object: keep the shift
            update = np.clip(moved - key_centroids[index], -limit, limit)
            if np.array_equal(np.round(update), np.round(shift)):
                break
            shift = update
        shifts[index] = shift
        masks[index] = moved_map(shift) + fine[index]
    return masks, shifts
