"""Training and validation transforms on instance samples (numpy + OpenCV, no torchvision).

A sample is a dict:
    image         (H, W, 3) uint8 RGB; after `Normalize` a (3, H, W) float32 tensor
    boxes         (n, 4) float32 xyxy in pixels; a pixel column c spans [c, c + 1), so the box of
                  a mask whose last column is c has x2 = c + 1 (COCO's [x, y, w, h] convention)
    masks         (n, H, W) bool visible masks, or None for box-only data
    labels        (n,) int64 index of the instance's category in the prompt list
    instance_ids  (n,) int64 annotation id (images) or track id (videos)
    plus pass-through keys (image_id, file_name, ...).

Every transform is called as `transform(sample, rng)` with a numpy Generator and returns a new
dict (the input is never modified). The random draws depend only on the image size, never on its
content, so two frames of a video transformed with equally seeded generators get the same
geometry (needed for temporal query passing).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

# ImageNet statistics, RGB in [0, 1]: the backbone family's convention. The runtime's
# preprocessing must use the same values.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MAX_CV_CHANNELS = 512  # cv2.resize handles at most this many channels at once


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def select_instances(sample: dict, keep: np.ndarray) -> dict:
    """The sample with only the instances where `keep` (n,) bool is True."""
    out = dict(sample)
    for key in ("boxes", "labels", "instance_ids"):
        out[key] = sample[key][keep]
    if sample.get("masks") is not None:
        out["masks"] = sample["masks"][keep]
    return out


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(n, H, W) bool -> (n, 4) float32 tight xyxy pixel boxes; empty masks give zeros."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for index, mask in enumerate(masks):
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[index] = (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)
    return boxes


def drop_empty(sample: dict) -> dict:
    """Drops instances with an empty mask (or, for box-only data, a box of zero area)."""
    if len(sample["labels"]) == 0:
        return sample
    if sample.get("masks") is not None:
        keep = sample["masks"].reshape(len(sample["masks"]), -1).any(axis=1)
    else:
        boxes = sample["boxes"]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return sample if keep.all() else select_instances(sample, keep)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, h, w) bool -> (n, height, width) bool, nearest neighbour."""
    if len(masks) == 0:
        return np.zeros((0, height, width), dtype=bool)
    chunks = []
    for start in range(0, len(masks), _MAX_CV_CHANNELS):
        # (k, h, w) -> (h, w, k): OpenCV resizes channels-last
        chunk = np.ascontiguousarray(masks[start:start + _MAX_CV_CHANNELS].transpose(1, 2, 0), np.uint8)
        resized = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_NEAREST)
        chunks.append(resized.reshape(height, width, -1).transpose(2, 0, 1))
    return np.concatenate(chunks).astype(bool)


def resize(sample: dict, height: int, width: int) -> dict:
    """Resizes image, masks and boxes to (height, width); drops instances that vanish."""
    image = sample["image"]
    old_height, old_width = image.shape[:2]
    if (old_height, old_width) == (height, width):
        return sample
    out = dict(sample)
    out["image"] = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    scale = np.array([width / old_width, height / old_height] * 2, dtype=np.float32)
    out["boxes"] = sample["boxes"] * scale
    if sample.get("masks") is not None:
        out["masks"] = resize_masks(sample["masks"], height, width)
    return drop_empty(out)


def scaled_size(height: int, width: int, shorter_side: int, max_size: int) -> tuple[int, int]:
    """(h, w) with the shorter side at `shorter_side` unless the longer would exceed `max_size`."""
    scale = shorter_side / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class RandomResize:
    """Multi-scale training: shorter side drawn from `sizes`, longer side capped at `max_size`."""

    def __init__(self, sizes: Sequence[int], max_size: int):
        if not sizes or min(sizes) <= 0 or max_size <= 0:
            raise ValueError(f"RandomResize needs positive sizes and max_size, got {sizes}, {max_size}")
        self.sizes = tuple(int(s) for s in sizes)
        self.max_size = int(max_size)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        shorter_side = self.sizes[int(rng.integers(len(self.sizes)))]
        height, width = sample["image"].shape[:2]
        return resize(sample, *scaled_size(height, width, shorter_side, self.max_size))

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


def horizontal_flip(sample: dict) -> dict:
    """Mirrors image, masks and boxes; applying it twice gives the original sample."""
    out = dict(sample)
    width = sample["image"].shape[1]
    out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
    boxes = sample["boxes"].copy()
    boxes[:, [0, 2]] = width - sample["boxes"][:, [2, 0]]  # x1' = W - x2, x2' = W - x1
    out["boxes"] = boxes
    if sample.get("masks") is not None:
        out["masks"] = np.ascontiguousarray(sample["masks"][:, :, ::-1])
    return out


class RandomHorizontalFlip:
    def __init__(self, probability: float = 0.5):
        self.probability = float(probability)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        return horizontal_flip(sample) if rng.random() < self.probability else sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.probability})"


def crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """Crops to the window; boxes are re-fitted to the cropped masks (or clipped for box-only
    data) and instances left empty are dropped."""
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][top:top + height, left:left + width])
    if sample.get("masks") is not None:
        out["masks"] = np.ascontiguousarray(sample["masks"][:, top:top + height, left:left + width])
        out["boxes"] = boxes_from_masks(out["masks"])
    else:
        boxes = sample["boxes"] - np.array([left, top, left, top], dtype=np.float32)
        out["boxes"] = boxes.clip(0, [width, height, width, height]).astype(np.float32)
    return drop_empty(out)


class RandomCrop:
    """With `probability`, crops a window whose sides are uniform in [min_fraction, 1] of the
    image's, at a uniform position."""

    def __init__(self, probability: float = 0.5, min_fraction: float = 0.5):
        if not 0 < min_fraction <= 1:
            raise ValueError(f"RandomCrop min_fraction must be in (0, 1], got {min_fraction}")
        self.probability = float(probability)
        self.min_fraction = float(min_fraction)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        # Always draw the same five numbers so the generator advances identically either way.
        apply, height_fraction, width_fraction, top_fraction, left_fraction = rng.random(5)
        if apply >= self.probability:
            return sample
        height, width = sample["image"].shape[:2]
        crop_height = max(1, int(round(height * (self.min_fraction + (1 - self.min_fraction) * height_fraction))))
        crop_width = max(1, int(round(width * (self.min_fraction + (1 - self.min_fraction) * width_fraction))))
        top = int(top_fraction * (height - crop_height + 1))
        left = int(left_fraction * (width - crop_width + 1))
        return crop(sample, top, left, crop_height, crop_width)

    def __repr__(self) -> str:
        return f"RandomCrop(probability={self.probability}, min_fraction={self.min_fraction})"


class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s] and a hue shift in
    [-hue, hue] (fraction of the colour wheel). Geometry, masks and boxes are untouched."""

    def __init__(self, strength: float = 0.2, hue: float = 0.02):
        if strength < 0 or not 0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter needs strength >= 0 and hue in [0, 0.5], got {strength}, {hue}")
        self.strength = float(strength)
        self.hue = float(hue)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        brightness, contrast, saturation = 1 + self.strength * rng.uniform(-1, 1, size=3)
        hue_shift = self.hue * rng.uniform(-1, 1)
        if self.strength == 0 and self.hue == 0:
            return sample
        image = sample["image"].astype(np.float32) * brightness
        image = (image - image.mean()) * contrast + image.mean()
        gray = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W, 3) -> (H, W)
        image = (image - gray[..., None]) * saturation + gray[..., None]
        image = np.clip(image, 0, 255).astype(np.uint8)
        if hue_shift != 0:
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # uint8 hue is in [0, 180)
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(hue_shift * 180))) % 180).astype(np.uint8)
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return {**sample, "image": image}

    def __repr__(self) -> str:
        return f"ColorJitter(strength={self.strength}, hue={self.hue})"


class Normalize:
    """uint8 (H, W, 3) RGB -> float32 tensor (3, H, W), (x / 255 - mean) / std."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        image = (sample["image"].astype(np.float32) / 255.0 - self.mean) / self.std
        # (H, W, 3) -> (3, H, W)
        return {**sample, "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}

    def __repr__(self) -> str:
        return "Normalize()"


def build_train_transforms(data) -> Compose:
    """Training augmentation from a `recipe.DataConfig`."""
    return Compose([
        RandomHorizontalFlip(data.flip_probability),
        RandomCrop(data.crop_probability, data.crop_min_fraction),
        RandomResize(data.train_sizes, data.max_size),
        ColorJitter(data.color_jitter, data.hue_jitter),
        Normalize(),
    ])


def build_val_transforms(data) -> Compose:
    """Deterministic: resize the shorter side to `val_size` and normalize."""
    return Compose([RandomResize((data.val_size,), data.max_size), Normalize()])
