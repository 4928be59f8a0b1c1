"""Message types of the bag tools and conversions between them and numpy / json records.

Standard types (sensor_msgs/Image, CompressedImage, std_msgs/Header) come from the rosbags
typestore of a ROS 2 distribution (Jazzy, else Humble). Two custom types carry ground truth; their
`.msg` text is defined once, here, and registered in the typestore (and embedded in every bag that
uses them, so any reader can decode them):

    mobius_msgs/msg/GroundTruthFrame      header, height, width, GroundTruthInstance[] instances
    mobius_msgs/msg/GroundTruthInstance   track_id, category_id, label, bbox, area, mask_rle

The node's per-instance records (mobius_msgs/msg/InstanceInfoArray) are defined by the repository's
msg/*.msg files and registered through mobius_ros.messages (pure Python, no ROS needed).
"""
from __future__ import annotations

from typing import Any

import numpy as np

GROUND_TRUTH_INSTANCE = "mobius_msgs/msg/GroundTruthInstance"
GROUND_TRUTH_FRAME = "mobius_msgs/msg/GroundTruthFrame"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"

GROUND_TRUTH_INSTANCE_MSG = """\
# One annotated object in one frame of a recorded clip (written by `mobius bag make-sample`).
uint32 track_id      # >= 1, stable over the clip
uint32 category_id   # category id of the clip's YouTube-VIS json
string label         # category name, e.g. "red star"
float32[4] bbox      # x, y, w, h in pixels (COCO convention)
uint32 area          # mask pixels
string mask_rle      # COCO RLE counts (pycocotools, column-major) of the (height, width) mask
"""

GROUND_TRUTH_FRAME_MSG = """\
# Ground truth of one image: pairs with the image message of the same header stamp.
std_msgs/Header header           # stamp and frame_id of the image it annotates
uint32 height                    # image size the masks are encoded at
uint32 width
GroundTruthInstance[] instances  # objects visible in this frame
"""


def typestore() -> Any:
    """A rosbags typestore (ROS 2 Jazzy, else Humble) with the ground-truth and record types."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from mobius_ros.messages import register_rosbags_types

    store = get_typestore(Stores.ROS2_JAZZY if hasattr(Stores, "ROS2_JAZZY") else Stores.ROS2_HUMBLE)
    types = dict(get_types_from_msg(GROUND_TRUTH_INSTANCE_MSG, GROUND_TRUTH_INSTANCE))
    types.update(get_types_from_msg(GROUND_TRUTH_FRAME_MSG, GROUND_TRUTH_FRAME))
    store.register(types)
    return register_rosbags_types(store)


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) of builtin_interfaces/Time."""
    return int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000)


def stamp_ns(header: Any) -> int:
    """std_msgs/Header -> its stamp in nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def header(store: Any, stamp: int, frame_id: str) -> Any:
    """std_msgs/Header at `stamp` nanoseconds."""
    sec, nanosec = split_stamp(stamp)
    time_type = store.types["builtin_interfaces/msg/Time"]
    return store.types["std_msgs/msg/Header"](stamp=time_type(sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_message(store: Any, image: np.ndarray, head: Any, encoding: str) -> Any:
    """(H, W, 3) uint8 ("rgb8"/"bgr8") or (H, W) uint16 ("mono16") -> sensor_msgs/Image."""
    image = np.ascontiguousarray(image)
    if image.dtype.byteorder == ">":
        image = image.astype(image.dtype.newbyteorder("<"))
    height, width = image.shape[:2]
    return store.types[IMAGE](header=head, height=height, width=width, encoding=encoding, is_bigendian=0,
                              step=image.strides[0], data=image.view(np.uint8).reshape(-1))


def compressed_message(store: Any, image_rgb: np.ndarray, head: Any, quality: int = 90) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage (JPEG, image_transport's format string)."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"could not JPEG-encode an image of shape {image_rgb.shape}")
    return store.types[COMPRESSED_IMAGE](header=head, format="rgb8; jpeg compressed bgr8",
                                         data=encoded.reshape(-1))


def to_rgb(message: Any) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> (H, W, 3) uint8 RGB; ValueError if undecodable."""
    from rosbags.image import message_to_cvimage

    try:
        image = message_to_cvimage(message, "rgb8")
    except Exception as error:  # bad encoding, truncated data, an undecodable JPEG (rosbags asserts)
        raise ValueError(f"undecodable image message: {type(error).__name__}: {error}") from None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image message decodes to {getattr(image, 'shape', None)}, not an RGB8 image")
    return np.ascontiguousarray(image)


def ground_truth_message(store: Any, head: Any, height: int, width: int, objects: list[dict]) -> Any:
    """objects: dicts with track_id, category_id, label, bbox [x, y, w, h], area, mask (H, W) bool."""
    from ..training.synth.writer import encode_mask

    instance_type = store.types[GROUND_TRUTH_INSTANCE]
    instances = [instance_type(track_id=int(o["track_id"]), category_id=int(o["category_id"]),
                               label=str(o["label"]), bbox=np.asarray(o["bbox"], dtype=np.float32),
                               area=int(o["area"]), mask_rle=encode_mask(o["mask"])["counts"])
                 for o in objects]
    return store.types[GROUND_TRUTH_FRAME](header=head, height=int(height), width=int(width),
                                           instances=instances)


def ground_truth_objects(message: Any) -> list[dict]:
    """GroundTruthFrame -> dicts with track_id, category_id, label, bbox, area, segmentation (RLE)."""
    size = [int(message.height), int(message.width)]
    return [{"track_id": int(i.track_id), "category_id": int(i.category_id), "label": str(i.label),
             "bbox": [float(v) for v in i.bbox], "area": int(i.area),
             "segmentation": {"size": size, "counts": str(i.mask_rle)}} for i in message.instances]
