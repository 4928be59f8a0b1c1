"""Reading camera frames and ground truth from a rosbag2 (sqlite3 .db3 or .mcap) with `rosbags`.

Message types come from the definitions embedded in the bag (rosbag2 >= Iron and every bag written
here embed them), else from the Jazzy typestore with the ground-truth and record types registered.
A message that does not deserialize or whose image does not decode is skipped and counted
(`SkipLog`), never fatal: one bad frame in a long recording must not cost the rest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..training.synth.vocabulary import categories
from . import messages

IMAGE_TYPES = (messages.IMAGE, messages.COMPRESSED_IMAGE)


@dataclass
class SkipLog:
    """Messages skipped per topic, with the first few reasons (for the report)."""
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, topic: str, index: int, reason: str) -> None:
        self.counts[topic] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{topic} message {index}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class BagFrame:
    index: int              # position among the topic's messages (skipped ones included)
    bag_time_ns: int        # the bag's receive timestamp of the message
    stamp_ns: int           # header.stamp of the image
    frame_id: str           # header.frame_id of the image
    image: np.ndarray       # (H, W, 3) uint8 RGB


def storage_of(bag: str | Path) -> str:
    """'mcap' or 'sqlite3': the storage plugin of an existing bag folder."""
    bag = Path(bag)
    return "mcap" if bag.is_dir() and any(bag.glob("*.mcap")) else "sqlite3"


def open_bag(bag: str | Path):
    """An open rosbags AnyReader; FileNotFoundError/ValueError that say what to check."""
    from rosbags.highlevel import AnyReader, AnyReaderError

    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag '{bag}' not found; record one or run 'mobius bag make-sample --out {bag}'")
    if not (bag / "metadata.yaml").is_file():
        raise ValueError(f"'{bag}' is not a rosbag2 folder (no metadata.yaml); pass the bag folder, not a file in it")
    reader = AnyReader([bag], default_typestore=messages.typestore())
    try:
        reader.open()
    except AnyReaderError as error:
        raise ValueError(f"cannot read bag '{bag}': {error}") from None
    return reader


def topic_connections(reader: Any, topic: str, types: tuple[str, ...]) -> list:
    """Connections of `topic`; ValueError listing the bag's topics when absent or of another type."""
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"
        raise ValueError(f"topic '{topic}' is not in the bag; its topics: {listing}")
    wrong = sorted({c.msgtype for c in connections} - set(types))
    if wrong:
        raise ValueError(f"topic '{topic}' carries {', '.join(wrong)}; expected {' or '.join(types)}")
    return connections


def find_topic(reader: Any, msgtype: str) -> str | None:
    """The first topic carrying `msgtype`, or None."""
    return next((c.topic for c in reader.connections if c.msgtype == msgtype), None)


def _decode(reader: Any, connection, raw: bytes) -> Any:
    try:
        return reader.deserialize(raw, connection.msgtype)
    except Exception as error:  # truncated or garbage CDR: rosbags raises several exception types
        raise ValueError(f"does not deserialize as {connection.msgtype}: {type(error).__name__}: {error}") from None


def read_frames(reader: Any, topic: str, skipped: SkipLog) -> Iterator[BagFrame]:
    """The topic's images in bag order as RGB; undecodable messages go to `skipped`."""
    connections = topic_connections(reader, topic, IMAGE_TYPES)
    for index, (connection, bag_time, raw) in enumerate(reader.messages(connections=connections)):
        try:
            message = _decode(reader, connection, raw)
            image = messages.to_rgb(message)
        except ValueError as error:
            skipped.add(topic, index, str(error))
            continue
        yield BagFrame(index, int(bag_time), messages.stamp_ns(message.header), str(message.header.frame_id), image)


def count_messages(reader: Any, topic: str) -> int:
    return sum(c.msgcount for c in reader.connections if c.topic == topic)


def ground_truth_from_topic(reader: Any, topic: str, skipped: SkipLog) -> dict:
    """GroundTruthFrame messages -> a one-video YouTube-VIS dict (frames = messages, by stamp).

    The video record carries `stamps_ns` so image frames pair with it by header stamp.
    """
    connections = topic_connections(reader, topic, (messages.GROUND_TRUTH_FRAME,))
    frames: list[tuple[int, Any]] = []
    for index, (connection, _, raw) in enumerate(reader.messages(connections=connections)):
        try:
            frames.append((messages.stamp_ns((message := _decode(reader, connection, raw)).header), message))
        except ValueError as error:
            skipped.add(topic, index, str(error))
    if not frames:
        raise ValueError(f"no readable ground truth on topic '{topic}'")
    frames.sort(key=lambda item: item[0])
    height, width = int(frames[0][1].height), int(frames[0][1].width)
    tracks: dict[int, dict] = {}
    for t, (_, message) in enumerate(frames):
        for obj in messages.ground_truth_objects(message):
            track = tracks.setdefault(obj["track_id"], {"category_id": obj["category_id"], "label": obj["label"],
                                                        "segmentations": [None] * len(frames),
                                                        "bboxes": [None] * len(frames), "areas": [None] * len(frames)})
            track["segmentations"][t], track["bboxes"][t], track["areas"][t] = \
                obj["segmentation"], obj["bbox"], obj["area"]
    video = {"id": 1, "name": topic, "length": len(frames), "height": height, "width": width,
             "file_names": [f"{topic}/{t:05d}" for t in range(len(frames))], "stamps_ns": [s for s, _ in frames]}
    annotations = [{"id": n + 1, "video_id": 1, "track_id": track_id, "category_id": t["category_id"],
                    "segmentations": t["segmentations"], "bboxes": t["bboxes"], "areas": t["areas"], "iscrowd": 0,
                    "height": height, "width": width, "length": len(frames)}
                   for n, (track_id, t) in enumerate(sorted(tracks.items()))]
    return {"videos": [video], "annotations": annotations, "categories": _categories(tracks.values())}


def _categories(tracks) -> list[dict]:
    """The benchmark vocabulary when every track's (id, label) is in it, else the categories seen."""
    vocabulary = {c["id"]: c for c in categories()}
    seen = {t["category_id"]: t["label"] for t in tracks}
    if all(vocabulary.get(k, {}).get("name") == name for k, name in seen.items()):
        return list(vocabulary.values())
    return [{"id": k, "name": seen[k]} for k in sorted(seen)]
