"""Painter's-algorithm composition with a label map, shared by still images and video frames.

Layers are painted back to front over the background; a label map records which layer owns each
pixel, so every object's mask is exactly its *visible* part and two masks never overlap. Objects
and distractors are both layers; only objects become annotations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import Patch, fill_polygons

BACKGROUND_LABEL = -1


@dataclass(frozen=True)
class Layer:
    patch: Patch
    fill: np.ndarray  # (3,) float32 RGB of a flat layer, or (h, w, 3) RGB over the patch
    owner: int        # object index for vocabulary objects, -1 for distractors


def paint(background: np.ndarray, layers: list[Layer]) -> tuple[np.ndarray, np.ndarray]:
    """Paints layers (back to front) over a copy of the background.

    Returns the (H, W, 3) float32 image and the (H, W) int16 label map holding, per pixel, the
    index into `layers` of the front-most layer there, or BACKGROUND_LABEL.
    """
    image = background.copy()
    labels = np.full(background.shape[:2], BACKGROUND_LABEL, dtype=np.int16)
    for index, layer in enumerate(layers):
        region, mask = layer.patch.region, layer.patch.mask
        if layer.fill.ndim == 1:  # flat colour: let OpenCV fill the outline directly
            fill_polygons(image, layer.patch.outline, layer.fill.tolist())
        else:
            np.copyto(image[region], layer.fill, where=mask[:, :, None])
        labels[region][mask] = index
    return image, labels


def visible_pixel_count(labels: np.ndarray, index: int, patch: Patch) -> int:
    """Number of pixels layer `index` owns in the label map (searched only inside its patch)."""
    return int(np.count_nonzero(labels[patch.region][patch.mask] == index))


def paint_dropping_hidden(background: np.ndarray, layers: list[Layer],
                          min_visible_pixels: int) -> tuple[np.ndarray, np.ndarray, list[Layer]]:
    """Like `paint`, but objects with fewer visible pixels than the minimum are not drawn at all.

    Removing a layer only uncovers others, so one repaint leaves every kept object above the
    minimum, and the image contains no unannotated slivers of vocabulary objects.
    """
    image, labels = paint(background, layers)
    kept = [layer for index, layer in enumerate(layers) if layer.owner < 0
            or visible_pixel_count(labels, index, layer.patch) >= min_visible_pixels]
    if len(kept) < len(layers):
        image, labels = paint(background, kept)
    return image, labels, kept


def mask_of(labels: np.ndarray, index: int, patch: Patch) -> np.ndarray:
    """(H, W) bool visible mask of layer `index` (searched only inside its patch)."""
    mask = np.zeros(labels.shape, dtype=bool)
    mask[patch.region] = labels[patch.region] == index
    return mask


def bbox_of(mask: np.ndarray) -> list[float]:
    """COCO [x, y, width, height] of the pixel extent of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("bbox_of needs a non-empty mask")
    return [float(columns[0]), float(rows[0]),
            float(columns[-1] - columns[0] + 1), float(rows[-1] - rows[0] + 1)]
