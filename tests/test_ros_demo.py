"""`make demo`'s ROS job (mobius_ros/demo.py) end to end on a short clip: real nodes, real DDS."""
from __future__ import annotations

import json

import cv2
import pytest

from mobius_ros import parameters
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
    assert set(summary["instances_per_label"]) <= set(parameters.load_defaults()["prompts"])
    assert summary["node_latency_ms"]["p50"] > 0 and summary["kept_queries_per_layer"]
