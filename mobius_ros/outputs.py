"""FrameResult -> the node's output messages, each carrying the input image's header.

    ~/instances       sensor_msgs/Image mono16, pixel = track id, 0 = background, input resolution
    ~/instances_info  mobius_msgs/InstanceInfoArray when compiled, else std_msgs/String (JSON, same fields)
    ~/detections      vision_msgs/Detection2DArray (id = track id, class_id = prompt) when installed
    ~/overlay         sensor_msgs/Image rgb8 (masks, ids, labels drawn on the input)
    /diagnostics      diagnostic_msgs/DiagnosticArray from NodeStats

Optional message packages are looked up once (`OptionalTypes`); nothing here fails without them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import messages
from .images import array_to_image
from .node_stats import StatsSnapshot


@dataclass(frozen=True)
class OptionalTypes:
    """Message classes of packages that may be missing (None when they are)."""
    instance_info: tuple[type, type] | None      # (InstanceInfoArray, InstanceInfo) from mobius_msgs
    detections: tuple[type, type, type] | None   # (Detection2DArray, Detection2D, ObjectHypothesisWithPose)
    diagnostics: tuple[type, type, type] | None  # (DiagnosticArray, DiagnosticStatus, KeyValue)

    @classmethod
    def discover(cls) -> "OptionalTypes":
        try:
            from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
            detections = (Detection2DArray, Detection2D, ObjectHypothesisWithPose)
        except ImportError:
            detections = None
        try:
            from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
            diagnostics = (DiagnosticArray, DiagnosticStatus, KeyValue)
        except ImportError:
            diagnostics = None
        return cls(messages.load_compiled(), detections, diagnostics)

    def info_type(self) -> type:
        if self.instance_info is not None:
            return self.instance_info[0]
        from std_msgs.msg import String

        return String


def id_image_msg(result: Any, header: Any) -> Any:
    """The (H, W) uint16 instance-id image as mono16."""
    return array_to_image(result.id_image, "mono16", header)


def info_msg(result: Any, header: Any, prompts: list[str], types: OptionalTypes) -> Any:
    """Per-instance records: the compiled InstanceInfoArray, or the same fields as JSON in a String."""
    record_array = messages.records(header.stamp.sec, header.stamp.nanosec, header.frame_id, prompts,
                                    result.instances)
    if types.instance_info is not None:
        return messages.to_compiled(record_array, header, types.instance_info)
    from std_msgs.msg import String

    return String(data=messages.records_json(record_array))


def detections_msg(result: Any, header: Any, types: OptionalTypes) -> Any | None:
    """vision_msgs/Detection2DArray, or None without vision_msgs."""
    if types.detections is None:
        return None
    array_type, detection_type, hypothesis_type = types.detections
    array = array_type(header=header)
    for instance in result.instances:
        detection = detection_type(header=header, id=str(instance.track_id))
        x1, y1, x2, y2 = instance.box
        center = detection.bbox.center
        if hasattr(center, "position"):  # vision_msgs >= 4 (Humble+): vision_msgs/Pose2D
            center.position.x, center.position.y = (x1 + x2) / 2, (y1 + y2) / 2
        else:                            # vision_msgs 3 (Foxy/Galactic): geometry_msgs/Pose2D
            center.x, center.y = (x1 + x2) / 2, (y1 + y2) / 2
        detection.bbox.size_x, detection.bbox.size_y = float(x2 - x1), float(y2 - y1)
        hypothesis = hypothesis_type()
        hypothesis.hypothesis.class_id = instance.label
        hypothesis.hypothesis.score = float(instance.score)
        detection.results.append(hypothesis)
        array.detections.append(detection)
    return array


def overlay_msg(frame_rgb: np.ndarray, result: Any, header: Any) -> Any:
    """The input with masks, boxes, track ids and labels drawn, as rgb8."""
    from perception_core.runtime import overlay

    return array_to_image(overlay.draw_result(frame_rgb, result), "rgb8", header)


def _latency_text(snapshot: StatsSnapshot) -> str:
    return ", ".join(f"{k} {v:.1f} ms" for k, v in snapshot.latency_ms.items()) or "no frames yet"


def diagnostics_msg(snapshot: StatsSnapshot, node_name: str, state: str, stamp: Any, types: OptionalTypes,
                    hardware_id: str = "cpu") -> Any | None:
    """One DiagnosticStatus 'mobius_segmenter: segmentation' with rate, latency percentiles, drops,
    kept queries and decoder GFLOPs; level WARN on input errors or while active without input."""
    if types.diagnostics is None:
        return None
    array_type, status_type, key_value = types.diagnostics
    level, message = status_type.OK, f"{state}: {snapshot.rate_hz:.1f} Hz, latency {_latency_text(snapshot)}"
    if state == "active" and snapshot.received == 0:
        level, message = status_type.WARN, "active, no images received yet (check input_topic and QoS)"
    elif snapshot.bad_frames or snapshot.failed_frames:
        level = status_type.WARN
        message += f"; {snapshot.bad_frames + snapshot.failed_frames} frames skipped ({snapshot.last_error})"
    values = {
        "state": state,
        "rate_hz": f"{snapshot.rate_hz:.2f}",
        **{f"latency_ms_{k}": f"{v:.2f}" for k, v in snapshot.latency_ms.items()},
        "frames_received": str(snapshot.received),
        "frames_processed": str(snapshot.processed),
        "frames_dropped": str(snapshot.dropped),
        "frames_dropped_by_node": str(snapshot.dropped_by_node),
        "frames_dropped_before_node": str(snapshot.dropped_before_node),
        "frames_bad": str(snapshot.bad_frames),
        "frames_failed": str(snapshot.failed_frames),
        "instances_per_frame": f"{snapshot.instances:.2f}",
        "kept_queries_per_layer": " ".join(map(str, snapshot.kept_per_layer)),
        "decoder_gflops": "" if snapshot.decoder_gflops is None else f"{snapshot.decoder_gflops:.3f}",
        "last_error": snapshot.last_error,
    }
    status = status_type(level=level, name=f"{node_name}: segmentation", message=message,
                         hardware_id=hardware_id,
                         values=[key_value(key=k, value=v) for k, v in values.items()])
    array = array_type(status=[status])
    array.header.stamp = stamp
    return array


def diagnostics_values(msg: Any) -> dict[str, str]:
    """{key: value} of the first status of a DiagnosticArray (for tests and tools)."""
    return {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}
