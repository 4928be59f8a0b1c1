"""What `mobius bag eval` writes: a result bag like a recording of the node, and YouTube-VIS results.

Result bag topics (the node's own topic names; headers and bag timestamps copied from the input):

    /mobius_segmenter/instances        sensor_msgs/msg/Image mono16, pixel = track id, 0 = background
    /mobius_segmenter/instances_info   mobius_msgs/msg/InstanceInfoArray (track id, label, score, box, ...)

YouTube-VIS results: one record per track, {"video_id", "category_id", "score", "segmentations"};
the category is the prompt the track was labelled with most confidently (prompts map to
ground-truth categories by name), the score its mean confidence over the frames it was seen in.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import messages
from .reader import BagFrame

NODE_NAMESPACE = "/mobius_segmenter"
ID_IMAGE_TOPIC = f"{NODE_NAMESPACE}/instances"
RECORDS_TOPIC = f"{NODE_NAMESPACE}/instances_info"


@dataclass
class _Track:
    segmentations: list            # per frame: COCO RLE or None
    label_scores: dict = field(default_factory=lambda: defaultdict(float))  # label -> summed score
    scores: list = field(default_factory=list)


class TrackResults:
    """Accumulates FrameResults of one video into YouTube-VIS result records."""

    def __init__(self, length: int, label_to_category: dict[str, int], video_id: int = 1):
        self.length, self.video_id = length, video_id
        self.label_to_category = dict(label_to_category)
        self.tracks: dict[int, _Track] = {}

    def add(self, frame_index: int, instances: Sequence[Any]) -> None:
        """instances: TrackedInstance list of the video frame `frame_index` (0..length-1)."""
        from ..training.synth.writer import encode_mask

        if not 0 <= frame_index < self.length:
            raise ValueError(f"frame index {frame_index} outside the video's {self.length} frames")
        for inst in instances:
            track = self.tracks.setdefault(inst.track_id, _Track([None] * self.length))
            track.segmentations[frame_index] = encode_mask(inst.mask)
            track.label_scores[inst.label] += float(inst.score)
            track.scores.append(float(inst.score))

    def results(self) -> list[dict]:
        """Records of the tracks whose label maps to a category, in track id order."""
        records = []
        for track_id in sorted(self.tracks):
            track = self.tracks[track_id]
            label = max(track.label_scores, key=lambda name: track.label_scores[name])
            if label not in self.label_to_category:
                continue
            records.append({"video_id": self.video_id, "category_id": self.label_to_category[label],
                            "score": float(np.mean(track.scores)), "track_id": track_id,
                            "segmentations": track.segmentations})
        return records


class ResultBagWriter:
    """Writes id images and instance records, one pair per processed frame, with the input's stamps."""

    def __init__(self, path: str | Path, storage: str):
        from rosbags.rosbag2 import Writer

        from .sample import storage_plugin

        path = Path(path)
        if path.exists():
            raise FileExistsError(f"output bag '{path}' exists already; remove it or choose another --out")
        self.store = messages.typestore()
        self.writer = Writer(path, version=9, storage_plugin=storage_plugin(storage))
        self.ids = self.records = None
        self.frames = 0

    def __enter__(self) -> "ResultBagWriter":
        from mobius_ros.messages import INSTANCE_INFO_ARRAY

        self.writer.open()
        self.ids = self.writer.add_connection(ID_IMAGE_TOPIC, messages.IMAGE, typestore=self.store)
        self.records = self.writer.add_connection(RECORDS_TOPIC, INSTANCE_INFO_ARRAY, typestore=self.store)
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def write(self, frame: BagFrame, result: Any, prompts: Sequence[str]) -> None:
        from mobius_ros.messages import INSTANCE_INFO_ARRAY, records, to_rosbags

        head = messages.header(self.store, frame.stamp_ns, frame.frame_id)
        ids = messages.image_message(self.store, result.id_image.astype(np.uint16), head, "mono16")
        self.writer.write(self.ids, frame.bag_time_ns, self.store.serialize_cdr(ids, messages.IMAGE))
        sec, nanosec = messages.split_stamp(frame.stamp_ns)
        array = to_rosbags(records(sec, nanosec, frame.frame_id, prompts, result.instances), self.store)
        self.writer.write(self.records, frame.bag_time_ns, self.store.serialize_cdr(array, INSTANCE_INFO_ARRAY))
        self.frames += 1
