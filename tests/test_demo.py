"""`mobius demo` end to end: a real export, real MiniLM prompts, real onnxruntime, a decodable video."""
import json

import cv2

from perception_core.cli import main as mobius


def test_demo_writes_overlay_video_and_summary(tmp_path):
    out = tmp_path / "demo"
    assert mobius(["demo", "--out", str(out), "--size", "128", "--frames", "4", "--prompts", "red circle,star"]) == 0
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["prompts"] == ["red circle", "star"]
    kept = summary["kept_per_layer_mean"]
    assert kept[0] == 64 and kept[-1] <= kept[0]  # 8x8 bottleneck tokens enter the decoder at 128 px
    assert summary["latency_ms_median"] > 0
