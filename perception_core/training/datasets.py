"""Instance-segmentation datasets: COCO-format images and YouTube-VIS-format videos.

Both return samples in the format documented in `transforms.py`. Labels are indices into
`dataset.category_names` (categories ordered by id), which is also the prompt list the model is
trained with.

Indexing. `dataset[i]` is deterministic (its transforms get a generator seeded with i). Training
samplers pass `(i, seed)` instead, `seed` being a tuple of ints such as (run seed, epoch, i), so
that the augmentation of a sample depends only on the run seed, the epoch and the index: not on
the worker, the rank or the process that loads it (exact resume, DDP equivalence).

Videos. `YtvisDataset(mode="frames")` exposes every annotated frame as an image sample;
`mode="pairs"` returns {"frames": [sample_t, sample_t+delta], ...} with 1 <= delta <= max_delta,
both frames transformed with identically seeded generators (same flip, crop and scale) and with
track ids in "instance_ids", for temporal query passing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from .annotations import (DatasetError, annotation_format, category_table, check_image_files, decode_segmentations,
                          read_annotation_file, read_image, restrict_categories)

Transform = Callable[[dict, np.random.Generator], dict]


def _split_key(key) -> tuple[int, np.random.Generator]:
    """dataset key (index or (index, seed)) -> (index, generator for the transforms)."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), np.random.default_rng(list(seed) if isinstance(seed, (tuple, list)) else seed)
    return int(key), np.random.default_rng(int(key))


def _empty_instances(sample: dict, height: int, width: int, use_masks: bool) -> dict:
    sample.update(boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                  instance_ids=np.zeros(0, np.int64),
                  masks=np.zeros((0, height, width), bool) if use_masks else None)
    return sample


class CocoDataset(Dataset):
    """COCO instances json (images, annotations, categories); crowd annotations are skipped."""

    def __init__(self, annotation_file: str | os.PathLike, image_root: str | os.PathLike,
                 transforms: Transform | None = None, use_masks: bool = True, check_images: bool = True,
                 data: dict | None = None):
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        data = read_annotation_file(self.annotation_file) if data is None else data
        if annotation_format(data) != "coco":
            raise DatasetError(f"'{annotation_file}' is YouTube-VIS json; use YtvisDataset")
        self.category_names, self.label_of = category_table(data, annotation_file)
        self.images = data["images"]
        self.annotations_of: dict[int, list[dict]] = {int(image["id"]): [] for image in self.images}
        for annotation in data.get("annotations", []):
            if not annotation.get("iscrowd", 0):
                self.annotations_of.setdefault(int(annotation["image_id"]), []).append(annotation)
        self.use_masks = use_masks and any("segmentation" in a for a in data.get("annotations", []))
        if check_images:
            check_image_files(self.image_root, [image["file_name"] for image in self.images], annotation_file)

    def __len__(self) -> int:
        return len(self.images)

    def load_sample(self, index: int) -> dict:
        """Untransformed sample of image `index`."""
        record = self.images[index]
        image = read_image(self.image_root / record["file_name"])
        height, width = image.shape[:2]
        sample = {"image": image, "image_id": int(record["id"]), "file_name": record["file_name"]}
        annotations = [a for a in self.annotations_of[int(record["id"])] if int(a["category_id"]) in self.label_of]
        if not annotations:
            return _empty_instances(sample, height, width, self.use_masks)
        x, y, w, h = np.asarray([a["bbox"] for a in annotations], dtype=np.float32).T
        sample["boxes"] = np.stack([x, y, x + w, y + h], axis=1)
        sample["labels"] = np.asarray([self.label_of[int(a["category_id"])] for a in annotations], np.int64)
        sample["instance_ids"] = np.asarray([int(a.get("id", i)) for i, a in enumerate(annotations)], np.int64)
        sample["masks"] = (decode_segmentations([a["segmentation"] for a in annotations], height, width)
                           if self.use_masks else None)
        return sample

    def __getitem__(self, key) -> dict:
        index, rng = _split_key(key)
        sample = self.load_sample(index)
        return self.transforms(sample, rng) if self.transforms else sample


class YtvisDataset(Dataset):
    """YouTube-VIS json (videos with file_names, per-track annotations with per-frame
    segmentations/bboxes, categories), as single frames or as (t, t + delta) frame pairs."""

    def __init__(self, annotation_file: str | os.PathLike, image_root: str | os.PathLike,
                 transforms: Transform | None = None, use_masks: bool = True, mode: str = "frames",
                 max_delta: int = 5, check_images: bool = True, data: dict | None = None):
        if mode not in ("frames", "pairs"):
            raise ValueError(f"mode must be 'frames' or 'pairs', got {mode!r}")
        if max_delta < 1:
            raise ValueError(f"max_delta must be >= 1, got {max_delta}")
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.transforms, self.mode, self.max_delta = transforms, mode, max_delta
        data = read_annotation_file(self.annotation_file) if data is None else data
        if annotation_format(data) != "ytvis":
            raise DatasetError(f"'{annotation_file}' is COCO json; use CocoDataset")
        self.category_names, self.label_of = category_table(data, annotation_file)
        self.videos = data["videos"]
        self.tracks_of: dict[int, list[dict]] = {int(video["id"]): [] for video in self.videos}
        for track in data.get("annotations", []):
            if not track.get("iscrowd", 0) and int(track["category_id"]) in self.label_of:
                self.tracks_of.setdefault(int(track["video_id"]), []).append(track)
        self.use_masks = use_masks and any("segmentations" in t for t in data.get("annotations", []))
        last = 1 if mode == "pairs" else 0  # a pair needs a later frame
        self.index = [(v, t) for v, video in enumerate(self.videos)
                      for t in range(len(video["file_names"]) - last)]
        if check_images:
            names = [name for video in self.videos for name in video["file_names"]]
            check_image_files(self.image_root, names, annotation_file)

    def __len__(self) -> int:
        return len(self.index)

    def load_frame(self, video_index: int, frame: int) -> dict:
        """Untransformed sample of one frame; instance_ids are track ids."""
        video = self.videos[video_index]
        image = read_image(self.image_root / video["file_names"][frame])
        height, width = image.shape[:2]
        sample = {"image": image, "image_id": int(video["id"]) * 100_000 + frame,
                  "video_id": int(video["id"]), "frame": frame, "file_name": video["file_names"][frame]}
        tracks = [t for t in self.tracks_of[int(video["id"])]
                  if t["bboxes"][frame] is not None and (not self.use_masks or t["segmentations"][frame])]
        if not tracks:
            return _empty_instances(sample, height, width, self.use_masks)
        x, y, w, h = np.asarray([t["bboxes"][frame] for t in tracks], dtype=np.float32).T
        sample["boxes"] = np.stack([x, y, x + w, y + h], axis=1)
        sample["labels"] = np.asarray([self.label_of[int(t["category_id"])] for t in tracks], np.int64)
        sample["instance_ids"] = np.asarray([int(t["id"]) for t in tracks], np.int64)
        sample["masks"] = (decode_segmentations([t["segmentations"][frame] for t in tracks], height, width)
                           if self.use_masks else None)
        return sample

    def __getitem__(self, key) -> dict:
        index, rng = _split_key(key)
        video_index, frame = self.index[index]
        if self.mode == "frames":
            sample = self.load_frame(video_index, frame)
            return self.transforms(sample, rng) if self.transforms else sample
        length = len(self.videos[video_index]["file_names"])
        delta = int(rng.integers(1, self.max_delta + 1))
        later = min(frame + delta, length - 1)
        # Both frames get a generator in the same state: identical geometric augmentation.
        state = rng.bit_generator.state
        frames = []
        for t in (frame, later):
            sample = self.load_frame(video_index, t)
            if self.transforms:
                frame_rng = np.random.default_rng()
                frame_rng.bit_generator.state = state
                sample = self.transforms(sample, frame_rng)
            frames.append(sample)
        return {"frames": frames, "delta": later - frame}


def build_dataset(annotation_file: str | os.PathLike, image_root: str | os.PathLike,
                  transforms: Transform | None = None, use_masks: bool = True,
                  video_mode: str = "frames", categories: str | Sequence[str] | None = None,
                  max_delta: int = 5) -> CocoDataset | YtvisDataset:
    """COCO or YouTube-VIS dataset, detected from the json's keys.

    categories: None keeps every category of the json; "seen" keeps those with at least one
    annotation (open-vocabulary training: held-out compositions are then never shown as negatives
    either); a list of names keeps exactly those. Annotations of dropped categories are ignored."""
    data = read_annotation_file(annotation_file)
    if categories is not None:
        data = dict(data, categories=restrict_categories(data, categories, annotation_file))
    try:
        if annotation_format(data) == "coco":
            return CocoDataset(annotation_file, image_root, transforms, use_masks, data=data)
        return YtvisDataset(annotation_file, image_root, transforms, use_masks, mode=video_mode, max_delta=max_delta, data=data)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"annotation file '{annotation_file}' is malformed: {error!r}") from None
