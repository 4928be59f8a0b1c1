"""`mobius bag make-sample`: a generated clip recorded as a rosbag2 with its ground truth.

Topics (all stamped with the same header per frame, `fps` apart):

    /camera/image_raw               sensor_msgs/msg/Image (rgb8)
    /camera/image_raw/compressed    sensor_msgs/msg/CompressedImage (jpeg)
    /ground_truth                   mobius_msgs/msg/GroundTruthFrame (masks as COCO RLE)

and next to the bag the same clip as a one-video YouTube-VIS dataset: `<bag>_gt.json` (its video
record also lists the frame stamps in `stamps_ns`, so frames pair with bag messages by stamp) and
the frames as lossless PNG files in `<bag>_frames/` (the json's info.video_root), so that
`mobius eval-video --data <bag>_gt.json` sees exactly the pixels of the rgb8 topic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import messages

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
GROUND_TRUTH_TOPIC = "/ground_truth"
STORAGES = ("sqlite3", "mcap")


@dataclass(frozen=True)
class SampleConfig:
    frames: int = 12                        # clip length
    seed: int = 0                           # generator seed (same seed, same clip)
    size: tuple[int, int] = (144, 192)      # (H, W) of the frames
    difficulty: str = "easy"                # synth preset: easy | normal | hard
    storage: str = "sqlite3"                # rosbag2 storage plugin: sqlite3 (.db3) | mcap
    fps: float = 10.0                       # frame rate of the stamps
    start_ns: int = 1_700_000_000_000_000_000  # stamp of the first frame (ns since the epoch)
    frame_id: str = "camera"                # header.frame_id of every message
    jpeg_quality: int = 90                  # of the compressed topic


def storage_plugin(name: str):
    """'sqlite3' | 'mcap' -> rosbags StoragePlugin; ValueError for anything else."""
    from rosbags.rosbag2 import StoragePlugin

    if name not in STORAGES:
        raise ValueError(f"unknown bag storage '{name}'; use one of {', '.join(STORAGES)}")
    return StoragePlugin.SQLITE3 if name == "sqlite3" else StoragePlugin.MCAP


def ground_truth_path(bag: str | Path) -> Path:
    """Where make-sample writes the YouTube-VIS json of a bag: <bag>_gt.json beside it."""
    bag = Path(bag)
    return bag.with_name(bag.name + "_gt.json")


def _frame_objects(tracks: list[dict], t: int, names: dict[int, str]) -> list[dict]:
    return [{"track_id": tr["track_id"], "category_id": tr["category_id"], "label": names[tr["category_id"]],
             "bbox": tr["bboxes"][t], "area": tr["areas"][t], "mask": tr["masks"][t]}
            for tr in tracks if tr["masks"][t] is not None]


def frames_path(bag: str | Path) -> Path:
    """Where make-sample writes the PNG frames of a bag: <bag>_frames/ beside it."""
    bag = Path(bag)
    return bag.with_name(bag.name + "_frames")


def youtube_vis(name: str, frames: list[np.ndarray], tracks: list[dict], stamps: list[int],
                video_root: str) -> dict:
    """The clip's ground truth as a one-video YouTube-VIS json (same layout as `mobius data synth`);
    file_names are f"{t:05d}.png" under video_root."""
    from ..training.synth.vocabulary import categories
    from ..training.synth.writer import encode_mask

    height, width = frames[0].shape[:2]
    video = {"id": 1, "name": name, "file_names": [f"{t:05d}.png" for t in range(len(frames))],
             "height": height, "width": width, "length": len(frames), "stamps_ns": stamps}
    annotations = [{"id": index + 1, "video_id": 1, "category_id": tr["category_id"], "track_id": tr["track_id"],
                    "segmentations": [None if m is None else encode_mask(m) for m in tr["masks"]],
                    "bboxes": tr["bboxes"], "areas": tr["areas"], "iscrowd": 0, "height": height,
                    "width": width, "length": len(frames), "attributes": tr["attributes"]}
                   for index, tr in enumerate(tracks)]
    return {"info": {"description": "MOBIUS sample bag ground truth (mobius bag make-sample)",
                     "video_root": video_root},
            "videos": [video], "annotations": annotations, "categories": categories()}


def _write_bag(out: Path, config: SampleConfig, frames: list[np.ndarray], tracks: list[dict],
               stamps: list[int], names: dict[int, str]) -> None:
    from rosbags.rosbag2 import Writer

    store = messages.typestore()
    height, width = frames[0].shape[:2]
    with Writer(out, version=9, storage_plugin=storage_plugin(config.storage)) as writer:
        raw = writer.add_connection(IMAGE_TOPIC, messages.IMAGE, typestore=store)
        compressed = writer.add_connection(COMPRESSED_TOPIC, messages.COMPRESSED_IMAGE, typestore=store)
        truth = writer.add_connection(GROUND_TRUTH_TOPIC, messages.GROUND_TRUTH_FRAME, typestore=store)
        for t, (frame, stamp) in enumerate(tqdm(list(zip(frames, stamps)), desc="writing bag", unit="frame")):
            head = messages.header(store, stamp, config.frame_id)
            writer.write(raw, stamp, store.serialize_cdr(messages.image_message(store, frame, head, "rgb8"),
                                                         messages.IMAGE))
            jpeg = messages.compressed_message(store, frame, head, config.jpeg_quality)
            writer.write(compressed, stamp, store.serialize_cdr(jpeg, messages.COMPRESSED_IMAGE))
            gt = messages.ground_truth_message(store, head, height, width, _frame_objects(tracks, t, names))
            writer.write(truth, stamp, store.serialize_cdr(gt, messages.GROUND_TRUTH_FRAME))


def _write_frames(folder: Path, frames: list[np.ndarray]) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        if not cv2.imwrite(str(folder / f"{t:05d}.png"), frame[:, :, ::-1]):
            raise OSError(f"could not write frame '{folder / f'{t:05d}.png'}'")


def make_sample(out: str | Path, config: SampleConfig = SampleConfig()) -> tuple[Path, Path]:
    """Generates the clip and writes the bag `out` (a new folder), its json and PNG frames; returns
    (bag, json)."""
    import json

    from ..training.synth.config import make_config
    from ..training.synth.video import generate_video
    from ..training.synth.vocabulary import categories

    out = Path(out)
    storage_plugin(config.storage)  # validate before generating anything
    if out.exists():
        raise FileExistsError(f"'{out}' exists already; rosbag2 writers never overwrite: remove it or "
                              f"choose another --out")
    if config.frames < 1 or config.fps <= 0:
        raise ValueError(f"need frames >= 1 and fps > 0, got frames={config.frames} fps={config.fps}")
    synth = make_config(config.difficulty, frames=(config.frames, config.frames), video_size=config.size,
                        use_photos=False)
    frames, tracks = generate_video(int(config.seed), synth, "val")
    stamps = [config.start_ns + round(t * 1e9 / config.fps) for t in range(len(frames))]
    names = {c["id"]: c["name"] for c in categories()}
    _write_bag(out, config, frames, tracks, stamps, names)
    _write_frames(frames_path(out), frames)
    gt_path = ground_truth_path(out)
    gt_path.write_text(json.dumps(youtube_vis(out.name, frames, tracks, stamps, frames_path(out).name)))
    return out, gt_path
