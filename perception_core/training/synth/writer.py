"""Writes a generated split to disk as COCO (images) and YouTube-VIS (videos) json.

Layout (file names in the json are relative to the folder named in "info"):

    DIR/{split}/instances.json      COCO: images, annotations (RLE), categories, info
    DIR/{split}/images/000000.jpg   image_root "images"
    DIR/{split}/videos.json         YouTube-VIS: videos, annotations (per-frame RLE or None)
    DIR/{split}/videos/video_00000/00000.jpg   video_root "videos"

Item i of a split is generated from the seed sequence (seed, split code, kind, i), so the output
does not depend on the number of workers or the order they finish in; with the same arguments
(and the same installed sample photos, see backgrounds.py) every byte is the same.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .backgrounds import photo_labels
from .config import SPLITS, SynthConfig, excluded_compositions, make_config, validate
from .scene import generate_image
from .video import generate_video
from .vocabulary import SIZE_THRESHOLDS, categories

GENERATOR_VERSION = "1.0"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
IMAGE_KIND, VIDEO_KIND = 0, 1
IMAGE_ROOT, VIDEO_ROOT = "images", "videos"


@dataclass(frozen=True)
class SplitPaths:
    root: Path                # DIR/{split}
    instances: Path | None    # COCO json, None when no images were generated
    videos: Path | None       # YouTube-VIS json, None when no videos were generated


def item_seed(seed: int, split: str, kind: int, index: int) -> tuple[int, int, int, int]:
    """The seed sequence of one image (kind 0) or clip (kind 1) of a split."""
    return int(seed), SPLIT_CODES[split], int(kind), int(index)


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE {"size": [H, W], "counts": str} (json-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def save_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    """Writes uint8 RGB as JPEG (OpenCV's encoder: deterministic for a given build)."""
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"could not encode '{path}' as JPEG")
    path.write_bytes(encoded.tobytes())


def _image_job(root: Path, split: str, seed: int, config: SynthConfig, index: int):
    """Generates and saves image `index`; returns its record and annotations (ids unset)."""
    image, instances = generate_image(item_seed(seed, split, IMAGE_KIND, index), config, split)
    file_name = f"{index:06d}.jpg"
    save_jpeg(root / IMAGE_ROOT / file_name, image, config.output_quality)
    record = {"file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
    annotations = [{"category_id": item["category_id"], "segmentation": encode_mask(item["mask"]),
                    "area": item["area"], "bbox": item["bbox"], "iscrowd": 0,
                    "attributes": item["attributes"],
                    "visible_fraction": item["visible_fraction"]} for item in instances]
    return record, annotations


def _video_job(root: Path, split: str, seed: int, config: SynthConfig, index: int):
    """Generates and saves clip `index`; returns its record and annotations (ids unset)."""
    frames, tracks = generate_video(item_seed(seed, split, VIDEO_KIND, index), config, split)
    name = f"video_{index:05d}"
    (root / VIDEO_ROOT / name).mkdir(parents=True, exist_ok=True)
    file_names = []
    for t, frame in enumerate(frames):
        file_names.append(f"{name}/{t:05d}.jpg")
        save_jpeg(root / VIDEO_ROOT / file_names[-1], frame, config.output_quality)
    height, width = frames[0].shape[:2]
    record = {"name": name, "file_names": file_names, "height": height, "width": width,
              "length": len(frames)}
    annotations = [{"category_id": track["category_id"], "track_id": track["track_id"],
                    "segmentations": [None if m is None else encode_mask(m)
                                      for m in track["masks"]],
                    "bboxes": track["bboxes"], "areas": track["areas"], "iscrowd": 0,
                    "height": height, "width": width, "length": len(frames),
                    "attributes": track["attributes"]} for track in tracks]
    return record, annotations


def _quiet_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _run(job: Callable[[int], tuple], count: int, workers: int, label: str, unit: str,
         progress: bool) -> list[tuple]:
    """Results of job(0..count-1) in index order, on `workers` processes, with a progress bar."""
    bar = tqdm(total=count, desc=label, unit=unit, disable=not progress)
    with bar:
        if workers <= 1 or count <= 1:
            results = []
            for index in range(count):
                results.append(job(index))
                bar.update()
            return results
        # spawn, not fork: the caller may hold threads (torch, OpenCV) that fork would break
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, count), initializer=_quiet_worker) as pool:
            results = []
            for result in pool.imap(job, range(count), chunksize=2):
                results.append(result)
                bar.update()
            return results


def _info(split: str, seed: int, config: SynthConfig) -> dict:
    small, medium = SIZE_THRESHOLDS
    return {
        "description": "MOBIUS procedural benchmark (perception_core.training.synth)",
        "version": GENERATOR_VERSION, "split": split, "seed": int(seed),
        "difficulty": config.difficulty,
        "holdout_compositions": list(config.holdout_compositions),
        "excluded_compositions": list(excluded_compositions(config, split)),
        "image_root": IMAGE_ROOT, "video_root": VIDEO_ROOT,
        "size_attribute": {"small": f"visible area < {small:g} of the frame",
                           "medium": f"{small:g} <= visible area < {medium:g} of the frame",
                           "large": f"visible area >= {medium:g} of the frame"},
        "photo_backgrounds": photo_labels() if config.use_photos else [],
        "config": dataclasses.asdict(config),
    }


def _write_json(path: Path, data: dict) -> None:
    """Compact json, written to a temporary file first so a crash never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file, separators=(",", ":"))
    os.replace(temporary, path)


def _number(results: list[tuple], owner_key: str) -> tuple[list[dict], list[dict]]:
    """Assigns ids 1.. to records and annotations (annotations point at their record)."""
    records, annotations = [], []
    for record_id, (record, items) in enumerate(results, start=1):
        records.append({"id": record_id, **record})
        for item in items:
            annotations.append({"id": len(annotations) + 1, owner_key: record_id, **item})
    return records, annotations


def check_request(split: str, n_images: int, n_videos: int, seed: int,
                  config: SynthConfig) -> None:
    """Raises ValueError saying what is wrong with a write_split request (nothing is written)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    if n_images < 0 or n_videos < 0:
        raise ValueError(f"counts must not be negative (images={n_images}, videos={n_videos})")
    if n_images == 0 and n_videos == 0:
        raise ValueError("nothing to generate: ask for at least one image or video")
    if int(seed) < 0:
        raise ValueError(f"seed {seed}: seeds must be non-negative integers")
    validate(config)


def write_split(out_dir: str | Path, split: str, n_images: int, n_videos: int, seed: int,
                config: SynthConfig | None = None, workers: int = 1,
                progress: bool = True) -> SplitPaths:
    """Generates `n_images` images and `n_videos` clips of `split` under out_dir/split.

    Everything is validated before anything is written. Existing files of the same names are
    overwritten; the json files list exactly the items of this run.
    """
    config = config or make_config()
    check_request(split, n_images, n_videos, seed, config)
    root = Path(out_dir) / split
    instances_path = videos_path = None
    base = {"info": _info(split, seed, config), "licenses": []}
    if n_images:
        (root / IMAGE_ROOT).mkdir(parents=True, exist_ok=True)
        job = partial(_image_job, root, split, int(seed), config)
        results = _run(job, n_images, workers, f"{split} images", "image", progress)
        images, annotations = _number(results, "image_id")
        instances_path = root / "instances.json"
        _write_json(instances_path, {**base, "images": images, "annotations": annotations,
                                     "categories": categories()})
    if n_videos:
        (root / VIDEO_ROOT).mkdir(parents=True, exist_ok=True)
        job = partial(_video_job, root, split, int(seed), config)
        results = _run(job, n_videos, workers, f"{split} videos", "clip", progress)
        videos, annotations = _number(results, "video_id")
        videos_path = root / "videos.json"
        _write_json(videos_path, {**base, "videos": videos, "annotations": annotations,
                                  "categories": categories()})
    return SplitPaths(root, instances_path, videos_path)
