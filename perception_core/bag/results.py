"""The result bag of `mobius bag eval`: what the node would have published, as a recording.

Topics (the node's own topic names; headers and bag timestamps copied from the input frame):

    /mobius_segmenter/instances        sensor_msgs/msg/Image mono16, pixel = track id, 0 = background
    /mobius_segmenter/instances_info   mobius_msgs/msg/InstanceInfoArray (track id, label, score, box, ...)

(The YouTube-VIS results come from runtime.ytvis_results, shared with `mobius eval-video` and
`mobius infer`.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import messages
from .reader import BagFrame

NODE_NAMESPACE = "/mobius_segmenter"
ID_IMAGE_TOPIC = f"{NODE_NAMESPACE}/instances"
RECORDS_TOPIC = f"{NODE_NAMESPACE}/instances_info"


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
