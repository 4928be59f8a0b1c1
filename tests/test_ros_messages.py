"""The record messages: one .msg definition, used by rosbags (CDR round trip) and by the JSON fallback."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from mobius_ros import messages


@dataclass
class _Instance:  # the fields of processor.TrackedInstance that records carry
    track_id: int
    label: str
    label_index: int
    score: float
    box: tuple
    area: int
    age: int


INSTANCES = [_Instance(3, "red star", 0, 0.91, (1.0, 2.5, 30.0, 40.0), 812, 5),
             _Instance(7, "blue circle", 1, 0.42, (50.0, 10.0, 70.0, 33.0), 301, 0)]


def _records() -> dict:
    return messages.records(12, 345, "camera_optical", ["red star", "blue circle"], INSTANCES)


def test_json_uses_the_msg_field_names_in_order():
    data = json.loads(messages.records_json(_records()))
    assert list(data)[1:] == messages.field_names(messages.INSTANCE_INFO_ARRAY) == ["header", "prompts", "instances"]
    for record in data["instances"]:
        assert list(record) == messages.field_names(messages.INSTANCE_INFO)
    assert data["header"] == {"stamp": {"sec": 12, "nanosec": 345}, "frame_id": "camera_optical"}
    assert messages.parse_records_json(messages.records_json(_records())) == _records()


def test_field_names_agree_with_the_rosbags_parser():
    from rosbags.typesys import get_types_from_msg

    for name, text in messages.msg_definitions().items():
        parsed = get_types_from_msg(text, name)[name][1]
        assert [field for field, _ in parsed] == messages.field_names(name)


def test_rosbags_typestore_round_trip():
    from rosbags.typesys import Stores, get_typestore

    store = messages.register_rosbags_types(get_typestore(Stores.LATEST))
    message = messages.to_rosbags(_records(), store)
    raw = store.serialize_cdr(message, messages.INSTANCE_INFO_ARRAY)
    back = store.deserialize_cdr(raw, messages.INSTANCE_INFO_ARRAY)
    assert back.header.stamp.sec == 12 and back.header.frame_id == "camera_optical"
    assert back.prompts == ["red star", "blue circle"]
    assert [i.track_id for i in back.instances] == [3, 7] and back.instances[1].label == "blue circle"
    np.testing.assert_allclose(back.instances[0].box, INSTANCES[0].box)
    assert back.instances[0].area == 812 and back.instances[0].age == 5
    assert back.instances[0].score == pytest.approx(0.91, abs=1e-6)


@pytest.mark.parametrize("text, reason", [
    ("{not json", "not valid JSON"),
    ('{"format": "something/else"}', "must carry format"),
    ('[1, 2]', "must carry format"),
    (json.dumps({"format": messages.JSON_FORMAT, "header": {}}), "has keys"),
])
def test_parse_records_json_rejects_other_payloads(text, reason):
    with pytest.raises(ValueError, match=reason):
        messages.parse_records_json(text)


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="unknown message type"):
        messages.msg_text("mobius_msgs/msg/Nope")
