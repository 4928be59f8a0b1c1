"""The onnxruntime path without torch, as `pip install .` promises (README, setup.py): `mobius infer`,
`bag eval`, `gst` and the ROS node run in an interpreter where torch / transformers / onnx cannot be
imported (tests/without_torch.py), give the same results as the full install, and take new prompts
from a prompt embeddings file written by `mobius prompts`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from perception_core import assets
from ros_process import stop_node_process
from perception_core.cli import main as mobius
from perception_core.training.synth.config import make_config
from perception_core.training.synth.video import generate_video
from perception_core.training.synth.vocabulary import present_names

WITHOUT_TORCH = Path(__file__).with_name("without_torch.py")
NEW_PROMPTS = ["magenta hexagon", "yellow ring", "forklift"]   # the clip's objects, and one it lacks
pytestmark = pytest.mark.skipif(not assets.ONNX.is_file(), reason="needs the shipped ONNX model")


def run_without_torch(module: str, *args: str, tried: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m module args` without torch; asserts which blocked imports were tried (none by default)."""
    result = subprocess.run([sys.executable, str(WITHOUT_TORCH), module, *args], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert f"[without_torch] blocked imports: {sorted(tried)}" in result.stdout, (
        f"unexpected imports of blocked modules:\n{result.stdout}\n{result.stderr}")
    return result


CLIP_CONFIG = make_config("easy", frames=(6, 6), video_size=(96, 128))
SUBSET = ["yellow star", "red circle"]   # of the default prompts, reordered


def write_clip(frames: list[np.ndarray], folder: Path) -> Path:
    video = folder / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return video


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    frames, _ = generate_video(3, CLIP_CONFIG)  # NEW_PROMPTS[:2]
    return write_clip(frames, tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def default_clip(tmp_path_factory) -> Path:
    """The first generated clip showing a SUBSET object, which the default prompts and the subset
    both name, so that the comparison below has detections to compare."""
    for seed in range(200):
        frames, tracks = generate_video(seed, CLIP_CONFIG)
        if set(present_names(tracks)) & set(SUBSET):
            return write_clip(frames, tmp_path_factory.mktemp("default_clip"))
    raise AssertionError(f"no generated clip among 200 seeds shows any of {SUBSET}")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    """Written by the real `mobius prompts` command (MiniLM, torch)."""
    path = tmp_path_factory.mktemp("prompts") / "new.safetensors"
    assert mobius(["prompts", "--out", str(path), *NEW_PROMPTS]) == 0
    return path


@pytest.mark.parametrize("prompts, extra", [
    (",".join(assets.DEFAULT_PROMPTS), []),
    (",".join(SUBSET), ["--kernel-reuse", "3", "--reuse-bottleneck"]),   # a reordered subset, reuse
], ids=["defaults", "subset_reuse"])
def test_infer_without_torch_matches_the_full_install(default_clip, tmp_path, prompts, extra):
    args = ["infer", str(default_clip), "--prompts", prompts, "--threads", "1", "--threshold", "0.1", *extra]
    result = run_without_torch("perception_core.cli", *args, "--json", str(tmp_path / "free.json"))
    assert result.returncode == 0, result.stderr
    assert mobius([*args, "--json", str(tmp_path / "full.json")]) == 0
    free, full = (json.loads((tmp_path / name).read_text()) for name in ("free.json", "full.json"))
    assert free == full and len(free) > 0


def test_prompt_file_serves_new_prompts_without_torch(clip, tmp_path, prompt_file):
    args = ["infer", str(clip), "--prompts", "yellow ring,magenta hexagon", "--threads", "1", "--threshold", "0.1"]
    result = run_without_torch("perception_core.cli", *args, "--prompt-embeddings", str(prompt_file),
                               "--json", str(tmp_path / "free.json"))
    assert result.returncode == 0, result.stderr
    assert mobius([*args, "--prompt-embeddings", str(prompt_file), "--json", str(tmp_path / "full.json")]) == 0
    free = json.loads((tmp_path / "free.json").read_text())
    assert free == json.loads((tmp_path / "full.json").read_text()) and len(free) > 0
    # a prompt neither in the file nor shipped needs the text encoder: a clear error, not a traceback
    missing = run_without_torch("perception_core.cli", *args[:3], "yellow ring,pallet", "--prompt-embeddings",
                                str(prompt_file), "--json", str(tmp_path / "missing.json"), tried=("torch",))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "mobius prompts" in missing.stderr and "text encoder" in missing.stderr
    assert not (tmp_path / "missing.json").exists()


@pytest.mark.ros
def test_bag_eval_without_torch_matches_the_full_install(tmp_path, prompt_file):
    """A real rosbag2 file (db3) read, segmented and scored with trackeval, where torch cannot be imported."""
    bag = tmp_path / "sample"
    assert mobius(["bag", "make-sample", "--out", str(bag), "--frames", "5", "--seed", "3", "--size", "96", "128",
                   "--difficulty", "easy"]) == 0
    args = ["bag", "eval", str(bag), "--prompts", "yellow ring", "magenta hexagon", "--prompt-embeddings",
            str(prompt_file), "--threads", "1", "--threshold", "0.1"]
    result = run_without_torch("perception_core.cli", *args, "--out", str(tmp_path / "free"))
    assert result.returncode == 0, result.stderr
    assert mobius([*args, "--out", str(tmp_path / "full")]) == 0
    free, full = (json.loads((tmp_path / f"{name}_results.json").read_text()) for name in ("free", "full"))
    assert free == full and len(free) > 0
    metrics = json.loads((tmp_path / "free_metrics.json").read_text())
    assert metrics["frames"] == 5 and not metrics["skipped"] and metrics["metrics"]["tracking"]["HOTA"] > 0.5


def test_gst_pipeline_without_torch(tmp_path):
    """A real GStreamer pipeline (videotestsrc -> model -> fakesink) where torch cannot be imported."""
    pytest.importorskip("gi")
    out = tmp_path / "results.json"
    result = run_without_torch("perception_core.cli", "gst", "videotestsrc", "--sink", "fakesink", "--max-frames",
                               "3", "--prompts", "yellow star", "--threads", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["frames"] == 3


@pytest.mark.ros
def test_ros_node_serves_new_prompts_without_torch(prompt_file):
    """The node's console entry point under tests/without_torch.py: the shipped model, two prompts only
    the prompt file holds, a real rclpy publisher and subscriber."""

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from mobius_ros.images import array_to_image

    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
    frames, _ = generate_video(3, make_config("easy", frames=(2, 2), video_size=(96, 128)))
    process = subprocess.Popen(
        [sys.executable, str(WITHOUT_TORCH), "mobius_ros.segment_node", "--ros-args", "--params-file",
         str(Path("config/segment.yaml").resolve()), "-r", "__ns:=/free", "-p", "autostart:=true",
         "-p", "input_topic:=/free/camera/image", "-p", "threads:=1", "-p", "prompts:=['forklift', 'yellow ring']",
         "-p", f"prompt_embeddings:={prompt_file}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    context = rclpy.Context()
    rclpy.init(context=context)
    client = rclpy.create_node("torch_free_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    images: list[Image] = []
    infos: list[String] = []
    subscriptions = [client.create_subscription(Image, "/free/mobius_segmenter/instances", images.append, reliable),
                     client.create_subscription(String, "/free/mobius_segmenter/instances_info", infos.append,
                                                reliable)]
    publisher = client.create_publisher(Image, "/free/camera/image", reliable)
    spinner.start()
    try:
        deadline = time.monotonic() + 60
        while not (publisher.get_subscription_count() and all(s.get_publisher_count() for s in subscriptions)):
            assert time.monotonic() < deadline and process.poll() is None, "the torch-free node did not come up"
            time.sleep(0.1)
        frame = array_to_image(frames[0], "rgb8")
        frame.header.frame_id = "free_0"
        deadline = time.monotonic() + 30
        while not (images and infos) and time.monotonic() < deadline:   # resend until served
            publisher.publish(frame)
            time.sleep(0.3)
        assert images and images[0].header.frame_id == "free_0" and images[0].encoding == "mono16"
        assert (images[0].height, images[0].width) == (96, 128)
        assert json.loads(infos[0].data)["prompts"] == ["forklift", "yellow ring"]
    finally:
        try:
            output = stop_node_process(process, executor, spinner, client)
        finally:
            context.try_shutdown()
    assert process.returncode == 0 and "Traceback" not in output, output
    assert "[without_torch] blocked imports: []" in output, output


# --- prompt embeddings files (runtime/prompts.py, model/prompt_io.py, `mobius prompts`) -----------------

def _encoded(prompts: list[str], max_tokens: int = 16) -> dict[str, np.ndarray]:
    from perception_core.model.text_encoder import MiniLMTextEncoder

    text = MiniLMTextEncoder(max_tokens=max_tokens).encode(prompts)
    return {"text_tokens": text.tokens.numpy(), "text_mask": text.mask.numpy(), "text_pooled": text.pooled.numpy()}


@pytest.mark.parametrize("source", ["written", "shipped"])
def test_rows_of_a_file_equal_encoding_that_subset(prompt_file, source):
    """Any subset, in any order, with padding columns the subset does not use dropped."""
    from perception_core.runtime.prompts import encode_prompts

    subset = ["yellow ring", "forklift"] if source == "written" else ["yellow star", "blue square"]
    names, text = encode_prompts(subset, 16, prompt_file if source == "written" else None)
    expected = _encoded(subset)
    assert names == subset and text["text_mask"].shape == expected["text_mask"].shape
    assert np.array_equal(text["text_mask"], expected["text_mask"])
    for key in ("text_tokens", "text_pooled"):
        assert text[key].dtype == np.float32 and np.abs(text[key] - expected[key]).max() < 1e-5


def test_prompts_longer_than_the_model_takes_are_encoded_again(tmp_path):
    """A file encoded with more tokens than the model's max_tokens is not truncated in place (that would
    drop [SEP] and change the pooled vector): the encoder encodes the prompt for the model instead."""
    from perception_core.model.prompt_io import write_prompt_embeddings
    from perception_core.runtime.prompts import encode_prompts

    long = "a small shiny red metal star with a thin yellow outline lying on the left side of the grey table"
    path = tmp_path / "long.safetensors"
    arrays = _encoded([long], max_tokens=32)
    write_prompt_embeddings(path, [long], {"tokens": arrays["text_tokens"], "mask": arrays["text_mask"],
                                           "pooled": arrays["text_pooled"]})
    assert arrays["text_mask"].sum() > 16
    _, text = encode_prompts([long], 16, path)
    expected = _encoded([long], max_tokens=16)
    assert text["text_mask"].shape == (1, 16) and np.abs(text["text_pooled"] - expected["text_pooled"]).max() < 1e-5


def test_a_named_prompt_file_is_reread_after_it_changes(tmp_path):
    from perception_core.runtime.prompts import encode_prompts

    path = tmp_path / "p.safetensors"
    assert mobius(["prompts", "--out", str(path), "yellow ring"]) == 0
    first = encode_prompts(["yellow ring"], 16, path)[1]["text_pooled"]
    assert mobius(["prompts", "--out", str(path), "magenta hexagon", "yellow ring"]) == 0
    names, text = encode_prompts(["magenta hexagon"], 16, path)          # only the new file has it
    assert names == ["magenta hexagon"] and np.abs(text["text_pooled"] - _encoded(names)["text_pooled"]).max() < 1e-5
    assert np.abs(encode_prompts(["yellow ring"], 16, path)[1]["text_pooled"] - first).max() < 1e-5


@pytest.mark.parametrize("damage, error, message", [
    ("missing", FileNotFoundError, "not found; write one with 'mobius prompts'"),
    ("garbage", ValueError, "not a readable safetensors file"),
    ("format", ValueError, "not a prompt embeddings file"),
    ("shapes", ValueError, "corrupt: inconsistent embeddings"),
    ("count", ValueError, "corrupt: 2 prompts for 1 embeddings"),
    ("empty_row", ValueError, "corrupt: a prompt has no valid token"),
])
def test_a_broken_prompt_file_is_refused_not_skipped(tmp_path, damage, error, message):
    """A file the user named that cannot be used is an error even when the prompts could be encoded."""
    import json as json_lib

    from safetensors.numpy import save_file

    from perception_core.model.prompt_io import FILE_FORMAT
    from perception_core.runtime.prompts import encode_prompts

    path = tmp_path / "broken.safetensors"
    tokens, mask, pooled = np.zeros((1, 3, 384), np.float32), np.ones((1, 3), bool), np.zeros((1, 384), np.float32)
    prompts, metadata = ["yellow star"], {"format": FILE_FORMAT}
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    elif damage != "missing":
        if damage == "format":
            metadata["format"] = "something.else"
        elif damage == "shapes":
            pooled = np.zeros((1, 100), np.float32)
        elif damage == "count":
            prompts = ["yellow star", "blue square"]
        elif damage == "empty_row":
            mask[:] = False
        metadata["prompts"] = json_lib.dumps(prompts)
        save_file({"tokens": tokens, "mask": mask, "pooled": pooled}, str(path), metadata=metadata)
    with pytest.raises(error, match=message):
        encode_prompts(["yellow star"], 16, path)


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/p.onnx", "red star"], "must end in .safetensors"),
    (["--out", "{tmp}/nowhere/p.safetensors", "red star"], "does not exist"),
    (["--out", "{tmp}/p.safetensors", "red star", " red star "], "repeat one"),
    (["--out", "{tmp}/p.safetensors", "red star", "   "], "prompt 1 is empty"),
    (["--out", "{tmp}/p.safetensors", "--preset", "no_such_preset", "red star"], "no_such_preset"),
])
def test_mobius_prompts_refuses_bad_input(tmp_path, capsys, args, message):
    assert mobius(["prompts", *[a.format(tmp=tmp_path) for a in args]]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.safetensors"))


def test_processor_and_node_parameter_take_the_prompt_file(tmp_path, prompt_file):
    """set_prompts after start-up reads the file too; the node parameter names the file or says what is wrong."""
    pytest.importorskip("rclpy")
    from mobius_ros import parameters
    from perception_core.runtime.processor import FrameProcessor

    values = {**parameters.load_defaults(), "threads": 1, "prompt_embeddings": str(prompt_file)}
    processor = FrameProcessor(parameters.processor_config(values), ["forklift"])
    processor.set_prompts(["magenta hexagon", "forklift"])
    assert processor.prompts == ["magenta hexagon", "forklift"] and processor.config.prompt_embeddings == \
        str(prompt_file.resolve())
    for value, error, message in [(str(tmp_path / "p.json"), ValueError, "prompt_embeddings .* must end in"),
                                  (str(tmp_path / "absent.safetensors"), FileNotFoundError, "prompt_embeddings file"),
                                  (str(tmp_path), ValueError, "must end in")]:
        with pytest.raises(error, match=message):
            parameters.processor_config({**values, "prompt_embeddings": value})
