"""The per-instance record message: one definition (`msg/*.msg`), three encodings.

The record types are defined once, as ROS `.msg` text in the repository's `msg/` folder
(installed to `share/mobius_ros/msg`):

    mobius_msgs/msg/InstanceInfo        track_id, label, label_index, score, box, area, age
    mobius_msgs/msg/InstanceInfoArray   header, prompts, instances

and used three ways:
  * compiled, when a colcon workspace builds the `mobius_msgs` message package from these files
    (`load_compiled()` finds it; the node then publishes `InstanceInfoArray`);
  * as JSON in `std_msgs/String` where no compiled package is installed (`records_json`), with
    exactly the field names and order of the `.msg` files;
  * registered in a `rosbags` typestore (`register_rosbags_types`), to write and read bags offline.

This module imports neither rclpy nor rosbags at module level: the bag tools use it without ROS.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

MSG_PACKAGE = "mobius_msgs"
INSTANCE_INFO = f"{MSG_PACKAGE}/msg/InstanceInfo"
INSTANCE_INFO_ARRAY = f"{MSG_PACKAGE}/msg/InstanceInfoArray"
_MSG_FILES = {INSTANCE_INFO: "InstanceInfo.msg", INSTANCE_INFO_ARRAY: "InstanceInfoArray.msg"}
# bump when the JSON layout changes; readers check it
JSON_FORMAT = "mobius_msgs/InstanceInfoArray/json/1"


def msg_dir() -> Path:
    """The folder holding the `.msg` files: the source tree, else the installed share folder."""
    candidates = [Path(__file__).resolve().parents[1] / "msg"]
    try:  # a colcon install: <prefix>/share/mobius_ros/msg
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("mobius_ros")) / "msg")
    except Exception:  # ament_index_python absent, or the package is not in AMENT_PREFIX_PATH
        pass
    candidates.append(Path(sys.prefix) / "share" / "mobius_ros" / "msg")  # pip install (data_files)
    for folder in candidates:
        if (folder / "InstanceInfo.msg").is_file():
            return folder
    raise FileNotFoundError(
        "the message definitions (InstanceInfo.msg) were not found in "
        + ", ".join(str(c) for c in candidates) + "; reinstall the mobius_ros package")


def msg_text(type_name: str) -> str:
    """The `.msg` text of INSTANCE_INFO or INSTANCE_INFO_ARRAY."""
    if type_name not in _MSG_FILES:
        raise ValueError(f"unknown message type {type_name!r}; known: {sorted(_MSG_FILES)}")
    return (msg_dir() / _MSG_FILES[type_name]).read_text(encoding="utf-8")


def msg_definitions() -> dict[str, str]:
    """{full type name: .msg text} for both record types."""
    return {name: msg_text(name) for name in _MSG_FILES}


def field_names(type_name: str) -> list[str]:
    """Field names of a record type in declaration order (comments and constants skipped)."""
    names = []
    for line in msg_text(type_name).splitlines():
        line = line.split("#", 1)[0].strip()
        if line and "=" not in line:  # "type name"; constants ("type NAME=value") are not fields
            names.append(line.split()[1])
    return names


def register_rosbags_types(typestore: Any) -> Any:
    """Registers both record types in a rosbags typestore (e.g. `get_typestore(Stores.LATEST)`)."""
    from rosbags.typesys import get_types_from_msg

    types: dict = {}
    for name, text in msg_definitions().items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


def load_compiled() -> tuple[type, type] | None:
    """(InstanceInfoArray, InstanceInfo) from a built `mobius_msgs` package, or None."""
    try:
        from mobius_msgs.msg import InstanceInfo, InstanceInfoArray  # type: ignore[import-not-found]
    except ImportError:
        return None
    return InstanceInfoArray, InstanceInfo


def instance_record(instance: Any) -> dict[str, Any]:
    """One TrackedInstance (perception_core.runtime.processor) -> an InstanceInfo field dict."""
    return {
        "track_id": int(instance.track_id),
        "label": str(instance.label),
        "label_index": int(instance.label_index),
        "score": float(instance.score),
        "box": [float(v) for v in instance.box],
        "area": int(instance.area),
        "age": int(instance.age),
    }


def records(stamp_sec: int, stamp_nanosec: int, frame_id: str, prompts: Sequence[str],
            instances: Iterable[Any]) -> dict[str, Any]:
    """An InstanceInfoArray field dict: header (input stamp and frame_id), prompts, instances."""
    return {
        "header": {"stamp": {"sec": int(stamp_sec), "nanosec": int(stamp_nanosec)}, "frame_id": str(frame_id)},
        "prompts": [str(p) for p in prompts],
        "instances": [instance_record(inst) for inst in instances],
    }


def records_json(record_array: dict[str, Any]) -> str:
    """The std_msgs/String payload: the InstanceInfoArray dict plus a format tag."""
    return json.dumps({"format": JSON_FORMAT, **record_array}, separators=(",", ":"))


def parse_records_json(text: str) -> dict[str, Any]:
    """Inverse of records_json; ValueError naming the problem for anything else."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"instance records are not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise ValueError(f"instance records JSON must carry format {JSON_FORMAT!r}, got "
                         f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}")
    data.pop("format")
    expected = field_names(INSTANCE_INFO_ARRAY)
    if list(data) != expected:
        raise ValueError(f"instance records JSON has keys {list(data)}, expected {expected}")
    return data


def to_compiled(record_array: dict[str, Any], header: Any, classes: tuple[type, type]) -> Any:
    """An InstanceInfoArray message of the compiled package; `header` is the input's std_msgs/Header."""
    array_type, info_type = classes
    message = array_type()
    message.header = header
    message.prompts = list(record_array["prompts"])
    message.instances = [info_type(**record) for record in record_array["instances"]]
    return message


def to_rosbags(record_array: dict[str, Any], typestore: Any) -> Any:
    """An InstanceInfoArray message of a rosbags typestore (register_rosbags_types first)."""
    import numpy as np

    header_type = typestore.types["std_msgs/msg/Header"]
    time_type = typestore.types["builtin_interfaces/msg/Time"]
    info_type = typestore.types[INSTANCE_INFO]
    array_type = typestore.types[INSTANCE_INFO_ARRAY]
    head = record_array["header"]
    header = header_type(stamp=time_type(sec=head["stamp"]["sec"], nanosec=head["stamp"]["nanosec"]),
                         frame_id=head["frame_id"])
    instances = [info_type(**{**r, "box": np.asarray(r["box"], dtype=np.float32)})
                 for r in record_array["instances"]]
    return array_type(header=header, prompts=list(record_array["prompts"]), instances=instances)
