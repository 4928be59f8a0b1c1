"""Batching of transformed samples: pad to a common size that is a multiple of 32, and build the
targets that `SetCriterion` expects, normalised to the *padded* image (the model predicts boxes
in [0, 1] of its padded input).

Padding goes to the bottom and right with zeros, which after `Normalize` is the mean colour. Each
image keeps its valid (unpadded) size so that predictions can be mapped back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

SIZE_DIVISOR = 32  # the backbone's S6 stride is 64 but S5 (stride 32) is the deepest real map


@dataclass
class Batch:
    """images: (B, 3, Hp, Wp) float32 normalised, zero padded to multiples of the size divisor.
    targets: B dicts with
        labels (n,) int64 prompt index, boxes (n, 4) float32 cxcywh in [0, 1] of (Wp, Hp),
        masks (n, Hp, Wp) bool (absent for box-only data), instance_ids (n,) int64.
    valid_sizes: (B, 2) int64 (height, width) of the image content at the top-left.
    image_ids: B ints."""
    images: Tensor
    targets: list[dict]
    valid_sizes: Tensor
    image_ids: list[int] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "Batch":
        targets = [{key: value.to(device) for key, value in target.items()} for target in self.targets]
        return Batch(self.images.to(device), targets, self.valid_sizes.to(device), self.image_ids)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class PairBatch:
    """Frames t and t + delta of the same clips, for temporal query passing."""
    first: Batch
    second: Batch
    deltas: Tensor  # (B,) int64

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(self.first.to(device), self.second.to(device), self.deltas.to(device))

    def __len__(self) -> int:
        return len(self.first)


def padded_size(sizes: list[tuple[int, int]], size_divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Smallest (H, W) holding every size, rounded up to a multiple of `size_divisor`."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor


def normalized_cxcywh(boxes_xyxy: np.ndarray, padded_height: int, padded_width: int) -> Tensor:
    """(n, 4) xyxy pixels -> (n, 4) float32 cxcywh divided by the padded size."""
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.unbind(-1)
    cxcywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
    return cxcywh / torch.tensor([padded_width, padded_height] * 2, dtype=torch.float32)


def make_target(sample: dict, padded_height: int, padded_width: int) -> dict:
    target = {
        "labels": torch.as_tensor(sample["labels"], dtype=torch.int64),
        "boxes": normalized_cxcywh(sample["boxes"], padded_height, padded_width),
        "instance_ids": torch.as_tensor(sample["instance_ids"], dtype=torch.int64),
    }
    masks = sample.get("masks")
    if masks is not None:
        count, height, width = masks.shape
        padded = torch.zeros(count, padded_height, padded_width, dtype=torch.bool)
        padded[:, :height, :width] = torch.as_tensor(masks, dtype=torch.bool)
        target["masks"] = padded
    return target


def collate_images(samples: list[dict], size_divisor: int = SIZE_DIVISOR,
                   padded: tuple[int, int] | None = None) -> Batch:
    """Normalised samples (image as a (3, h, w) tensor) -> Batch. `padded` forces the padded size
    (it must hold every image); by default the smallest multiple of `size_divisor` is used."""
    if not samples:
        raise ValueError("collate_images got an empty list of samples")
    sizes = [tuple(sample["image"].shape[-2:]) for sample in samples]
    padded_height, padded_width = padded or padded_size(sizes, size_divisor)
    images = torch.zeros(len(samples), 3, padded_height, padded_width, dtype=torch.float32)
    for image, sample, (height, width) in zip(images, samples, sizes):
        image[:, :height, :width] = sample["image"]
    targets = [make_target(sample, padded_height, padded_width) for sample in samples]
    valid_sizes = torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2)
    return Batch(images, targets, valid_sizes, [int(sample.get("image_id", -1)) for sample in samples])


def collate(samples: list[dict], size_divisor: int = SIZE_DIVISOR) -> Batch | PairBatch:
    """DataLoader collate_fn: image samples -> Batch, frame-pair samples -> PairBatch."""
    if samples and "frames" in samples[0]:
        # Both frames padded to one size so that boxes of t and t + delta share a frame of reference.
        sizes = [tuple(frame["image"].shape[-2:]) for sample in samples for frame in sample["frames"]]
        padded = padded_size(sizes, size_divisor)
        first = collate_images([sample["frames"][0] for sample in samples], size_divisor, padded)
        second = collate_images([sample["frames"][1] for sample in samples], size_divisor, padded)
        return PairBatch(first, second, torch.tensor([int(s["delta"]) for s in samples], dtype=torch.int64))
    return collate_images(samples, size_divisor)
