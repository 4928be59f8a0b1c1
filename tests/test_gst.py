"""`mobius gst` and its GStreamer plumbing with real pipelines (videotestsrc, encoders, decodebin).

Outputs are decoded with OpenCV (its FFmpeg reads every container written here) and, for the
file -> file case, read back through a second GStreamer pipeline.
"""
import json
import time

import cv2
import numpy as np
import pytest

from perception_core.cli import main as mobius
from perception_core.gst.pipeline import PipelineConfig, PipelineError, run_pipeline
from perception_core.gst.sinks import default_output, file_sink


def decode(path):
    """Frames (BGR) and their timestamps in ms, read by OpenCV."""
    capture = cv2.VideoCapture(str(path))
    frames, stamps = [], []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames, stamps
        frames.append(frame)
        stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC))           # of the frame just read


class Recorder:
    """A frame callback that remembers what it saw and marks a white 8x8 square top-left."""

    def __init__(self):
        self.frames, self.stamps = [], []

    def __call__(self, frame, stamp):
        self.frames.append(frame)
        self.stamps.append(stamp)
        shown = frame.copy()
        shown[:8, :8] = 255
        return shown


def test_videotestsrc_to_file_keeps_frames_colours_and_odd_sizes(tmp_path):
    # 130 px wide: RGB rows of 390 bytes are padded to 392 in GStreamer buffers, both ways
    out = tmp_path / "red.avi"
    recorder = Recorder()
    stats = run_pipeline(PipelineConfig("videotestsrc num-buffers=6 pattern=red ! "
                                        "video/x-raw,format=I420,width=130,height=98,framerate=10/1",
                                        file_sink(out)), recorder)
    assert (stats.frames, stats.width, stats.height, stats.framerate, stats.ended_by) == (6, 130, 98, (10, 1), "eos")
    assert not stats.live
    assert recorder.frames[0].shape == (98, 130, 3)
    red = recorder.frames[0][50, 65]
    assert red[0] > 200 and red[1] < 40 and red[2] < 40            # RGB order, not BGR
    assert recorder.stamps == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    frames, _ = decode(out)
    assert len(frames) == 6 and frames[0].shape == (98, 130, 3)
    assert frames[-1][2:6, 2:6].min() > 200                        # the callback's white mark
    blue, green, red_out = frames[-1][50, 65].astype(int)           # OpenCV gives BGR
    assert red_out > 200 and blue < 60 and green < 60


def test_file_to_file_preserves_frame_count_and_timestamps(tmp_path):
    source = tmp_path / "in.webm"
    run_pipeline(PipelineConfig("videotestsrc num-buffers=9 pattern=ball ! "
                                "video/x-raw,width=96,height=64,framerate=10/1", file_sink(source)),
                 lambda frame, stamp: frame)
    out = tmp_path / "out.avi"
    recorder = Recorder()
    stats = run_pipeline(PipelineConfig(f'filesrc location="{source}" ! decodebin', file_sink(out)), recorder)
    assert stats.frames == 9 and stats.framerate == (10, 1)
    assert recorder.stamps == pytest.approx([t / 10 for t in range(9)], abs=1e-3)
    frames, stamps = decode(out)
    assert len(frames) == 9
    assert np.diff(stamps) == pytest.approx([100.0] * 8, abs=1)     # 10 fps timestamps travelled through
    # and GStreamer itself reads the written file back with all frames
    again = Recorder()
    assert run_pipeline(PipelineConfig(f'filesrc location="{out}" ! decodebin', "fakesink"), again).frames == 9
    assert again.frames[4][2:6, 2:6].min() > 200


def test_mp4_file_source_through_decodebin(tmp_path):
    """The issue's own example, `filesrc location=x.mp4 ! decodebin`: H.264 written by x264enc is
    decoded again by GStreamer (avdec_h264 from gstreamer1.0-libav) with every frame."""
    source = tmp_path / "in.mp4"
    run_pipeline(PipelineConfig("videotestsrc num-buffers=7 pattern=ball ! "
                                "video/x-raw,width=96,height=64,framerate=10/1", file_sink(source)),
                 lambda frame, stamp: frame)
    recorder = Recorder()
    stats = run_pipeline(PipelineConfig(f'filesrc location="{source}" ! decodebin', "fakesink"), recorder)
    assert stats.frames == 7 and len(recorder.frames) == 7
    assert recorder.frames[0].shape == (64, 96, 3)


def test_default_output_is_decodable_and_max_frames_closes_the_file(tmp_path):
    out = default_output(tmp_path / "overlay")
    stats = run_pipeline(PipelineConfig("videotestsrc ! video/x-raw,width=64,height=48", file_sink(out),
                                        max_frames=5), lambda frame, stamp: frame)
    assert stats.ended_by == "max_frames" and stats.frames == 5
    frames, _ = decode(out)                                         # a complete file (trailer written)
    assert len(frames) == 5


def test_live_source_keeps_only_fresh_frames():
    stamps = []

    def slow(frame, stamp):
        stamps.append(stamp)
        time.sleep(0.1)                                             # a model slower than the 30 fps camera
        return frame

    stats = run_pipeline(PipelineConfig("videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=30/1",
                                        "fakesink", max_frames=4), slow)
    assert stats.live and stats.frames == 4
    # stale frames were dropped: consecutive processed frames are more than one camera frame apart
    assert min(np.diff(stamps)) > 1.5 / 30


@pytest.mark.parametrize("source, sink, words", [
    ("videotestsrc ! nosuchfilter", "fakesink", ["source", "nosuchfilter"]),
    ("videotestsrc num-buffers=3", "fakesink nosuchprop=1", ["sink", "nosuchprop", "fakesink"]),
    ("videotestsrc !", "fakesink", ["source", "syntax"]),
    ("audiotestsrc num-buffers=3", "fakesink", ["source", "video"]),
    ("filesrc location=/nonexistent/clip.mkv ! decodebin", "fakesink", ["filesrc", "/nonexistent/clip.mkv"]),
    ("videotestsrc num-buffers=3", "filesink location=/nonexistent/dir/out.raw", ["filesink", "/nonexistent/dir"]),
])
def test_broken_pipelines_name_the_failing_element(source, sink, words):
    with pytest.raises(PipelineError) as error:
        run_pipeline(PipelineConfig(source, sink), lambda frame, stamp: frame)
    for word in words:
        assert word in str(error.value)


def test_callback_returning_the_wrong_shape_is_a_clear_error():
    with pytest.raises(PipelineError, match="must return a uint8 array of shape"):
        run_pipeline(PipelineConfig("videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48"),
                     lambda frame, stamp: frame[:10])


def test_unknown_file_suffix_is_refused(tmp_path):
    with pytest.raises(PipelineError, match="suffix"):
        file_sink(tmp_path / "out.xyz")


@pytest.fixture(scope="module")
def tiny_model_args(tmp_path_factory):
    """CLI arguments for a tiny random model on the torch backend (an ONNX export would take too long)."""
    import torch
    import yaml

    from runtime_models import SIZE, TINY
    from perception_core.config import load_model_config, to_dict
    from perception_core.model.build import build_from_name, save_weights

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_weights(build_from_name("mobius_nano", TINY), folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(to_dict(load_model_config("mobius_nano", TINY))))
    return ["--backend", "torch", "--weights", str(folder / "tiny.safetensors"), "--preset", str(folder / "tiny.yaml"),
            "--size", str(SIZE), "--threads", "1"]


def test_mobius_gst_runs_the_frame_processor_and_writes_results(tmp_path, tiny_model_args):
    out = tmp_path / "overlay.mkv"
    code = mobius(["gst", "videotestsrc num-buffers=4 pattern=ball ! video/x-raw,width=160,height=120",
                   "--out", str(out), *tiny_model_args, "--threshold", "0.0", "--prompts", "red circle,blue square"])
    assert code == 0
    frames, _ = decode(out)
    assert len(frames) == 4 and frames[0].shape == (120, 160, 3)
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["frames"] == 4 and results["prompts"] == ["red circle", "blue square"]
    assert [f["frame"] for f in results["per_frame"]] == [0, 1, 2, 3]
    assert results["per_frame"][1]["stamp"] > results["per_frame"][0]["stamp"]
    instances = [inst for f in results["per_frame"] for inst in f["instances"]]
    assert instances, "threshold 0 keeps every query: some instances must be reported"
    assert all(inst["label"] in ("red circle", "blue square") and inst["track_id"] >= 1 for inst in instances)
    assert results["latency_ms"]["p50"] > 0


def test_mobius_gst_reports_a_bad_source_and_exits_nonzero(tmp_path, tiny_model_args, capsys):
    code = mobius(["gst", "videotestsrc ! notanelement", "--sink", "fakesink", *tiny_model_args,
                   "--json", str(tmp_path / "r.json")])
    assert code == 1
    assert "notanelement" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_mobius_gst_with_kernel_and_bottleneck_reuse(tmp_path, tiny_model_args, capsys):
    """Between keyframes the tracks of the keyframe go on with their ids; a reuse setting the
    processor refuses is a clear error before the pipeline starts."""
    out = tmp_path / "overlay.mkv"
    code = mobius(["gst", "videotestsrc num-buffers=4 pattern=ball ! video/x-raw,width=160,height=120",
                   "--out", str(out), *tiny_model_args, "--threshold", "0.0", "--prompts", "red circle",
                   "--kernel-reuse", "3", "--reuse-bottleneck"])
    assert code == 0
    per_frame = json.loads(out.with_suffix(".json").read_text())["per_frame"]
    ids = [{inst["track_id"] for inst in frame["instances"]} for frame in per_frame]
    assert ids[0] and ids[1] <= ids[0] and ids[2] <= ids[0] and ids[1]      # frames 1-2 reuse frame 0's tracks
    code = mobius(["gst", "videotestsrc num-buffers=2", "--sink", "fakesink", *tiny_model_args,
                   "--reuse-bottleneck", "--json", str(tmp_path / "r.json")])
    assert code == 1 and "kernel_reuse >= 2" in capsys.readouterr().err
