"""`make demo`'s ROS job (mobius_ros/demo.py) end to end on a short clip: real nodes, real DDS."""
from __future__ import annotations

import json

import cv2
import pytest

from mobius_ros.demo import main as ros_demo

pytestmark = pytest.mark.ros


def test_ros_demo_streams_segments_and_writes_the_overlay_video(tmp_path):
    out = tmp_path / "demo"
    assert ros_demo(["--out", str(out), "--frames", "8", "--fps", "10", "--timeout", "50"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    capture = cv2.VideoCapture(summary["video"])
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == summary["overlay_frames_written"] >= 1
    assert summary["frames_published"] == 8
    assert 1 <= summary["frames_processed"] and summary["frames_processed"] + summary["frames_dropped"] <= 8
    # the demo asks for the objects of its generated clip, and every label is one of those prompts
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.video import generate_video

    _, tracks = generate_video(7, make_config("normal", frames=(8, 8)))
    assert summary["prompts"] == sorted({f"{t['attributes']['color']} {t['attributes']['shape']}" for t in tracks})
    assert set(summary["instances_per_label"]) <= set(summary["prompts"])
    assert summary["node_latency_ms"]["p50"] > 0 and summary["kept_queries_per_layer"]


@pytest.mark.parametrize("flags", [["--reuse-bottleneck"], ["--kernel-reuse", "0"]])
def test_ros_demo_refuses_a_reuse_setting_the_node_would_refuse(flags, capsys):
    with pytest.raises(SystemExit) as stop:
        ros_demo(flags)
    assert stop.value.code == 2 and "--kernel-reuse" in capsys.readouterr().err
