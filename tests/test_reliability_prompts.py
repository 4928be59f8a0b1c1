"""Bad prompts (issue 8): validated with a clear error or handled, never a crash, nothing lost.

At the FrameProcessor API and through the running node's `prompts` parameter (a real parameter
client over Fast DDS): empty list, empty / whitespace / invisible strings, control characters, lone
surrogates, 1000 prompts, very long and non-ASCII text. A refused list leaves the previous prompts in
use (the next frame is labelled with them); an accepted one labels the next frame.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import rclpy
from rcl_interfaces.msg import Log
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from test_ros_node import Rig, header, wait_until

from mobius_ros.images import array_to_image
from perception_core.model.prompt_io import MAX_PROMPT_CHARS, MAX_PROMPTS
from runtime_models import tiny_weights

PROMPTS = ["red star", "blue circle"]
NON_ASCII = ["красная звезда", "赤い星", "🔴⭐", "نجمة حمراء", "e\u0301toile rouge", "\ufeffgrüner Würfel"]

# (prompts, what the error must say)
REFUSED = {
    "empty list": ([], "prompts is empty"),
    "empty string": ([""], "prompt 0 is empty"),
    "whitespace only": (["red star", " \t\u00a0\u2003"], "prompt 1 is empty or whitespace-only"),
    "zero-width space only": (["\u200b\u200d"], "prompt 0 has no visible characters"),
    "NUL byte inside": (["red\x00star"], "control character U+0000"),
    "newline inside": (["red\nstar"], "control character U+000A"),
    "lone surrogate": (["red \ud800 star"], "lone surrogate"),
    "1000 prompts": ([f"thing {i}" for i in range(1000)], f"got 1000 prompts; at most {MAX_PROMPTS}"),
    "very long text": (["red star " * 2000], f"characters; at most {MAX_PROMPT_CHARS}"),
    "not a string": (["red star", None], "prompt 1 is NoneType"),
    "a single string": ("red star", "single str"),
}
HANDLED = {
    "non-ASCII": NON_ASCII,
    f"{MAX_PROMPTS} prompts (the maximum)": [f"thing number {i}" for i in range(MAX_PROMPTS)],
    f"{MAX_PROMPT_CHARS} characters (truncated to the token limit)": [("a red star " * 60)[:MAX_PROMPT_CHARS]],
    "duplicates": ["red star", "red star"],
    "surrounding whitespace": ["  red star\t", "\u3000blue circle "],
}


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.video import generate_video

    frames, _ = generate_video(11, make_config("easy", frames=(3, 3), video_size=(64, 80)))
    return frames


@pytest.fixture(scope="module")
def config():
    from perception_core.runtime.processor import ProcessorConfig

    model = tiny_weights()
    return ProcessorConfig(backend="torch", model=str(model.weights), preset=str(model.preset), threads=1,
                           score_threshold=0.0, size=64)


@pytest.fixture(scope="module")
def processor(config):
    from perception_core.runtime.processor import FrameProcessor

    return FrameProcessor(config, PROMPTS)


@pytest.mark.parametrize("name", list(REFUSED))
def test_processor_refuses_with_a_clear_error_and_keeps_its_prompts(processor, clip, name):
    prompts, message = REFUSED[name]
    before = processor.prompts
    with pytest.raises(ValueError, match=re.escape(message)):
        processor.set_prompts(prompts)
    assert processor.prompts == before
    result = processor.process(clip[0])
    assert result.instances and {i.label for i in result.instances} <= set(before)


@pytest.mark.parametrize("name", list(HANDLED))
def test_processor_handles_unusual_but_valid_prompts(processor, clip, name):
    prompts = HANDLED[name]
    processor.set_prompts(prompts)
    result = processor.process(clip[1])
    wanted = [p.strip() for p in prompts]
    assert processor.prompts == wanted
    assert result.instances and {i.label for i in result.instances} <= set(wanted)
    assert all(0 <= i.label_index < len(wanted) and wanted[i.label_index] == i.label for i in result.instances)
    processor.set_prompts(PROMPTS)


def test_processor_is_not_built_with_bad_prompts(config):
    from perception_core.runtime.processor import FrameProcessor

    for prompts, message in (REFUSED["empty list"], REFUSED["1000 prompts"], REFUSED["lone surrogate"]):
        with pytest.raises(ValueError, match=re.escape(message)):
            FrameProcessor(config, prompts)


# ----------------------------------------------------------------------------- through the node

@pytest.fixture(scope="module")
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()


def set_prompts(client: AsyncParameterClient, value, kind=Parameter.Type.STRING_ARRAY):
    future = client.set_parameters([Parameter("prompts", kind, value)])
    wait_until(future.done, what="set_parameters")
    return future.result().results[0]


def test_node_rejects_bad_prompt_parameters_and_keeps_serving(context, clip):
    model = tiny_weights()
    r = Rig(context, "rel_prompts", {"backend": "torch", "model_path": str(model.weights),
                                     "preset": str(model.preset), "input_size": 64, "threads": 1,
                                     "score_threshold": 0.0, "prompts": PROMPTS, "autostart": False,
                                     "publish_overlay": False, "qos_reliability": "reliable"})
    try:
        r.wait_for_rosout()
        r.start()
        client = AsyncParameterClient(r.client, "/rel_prompts/mobius_segmenter")
        assert client.wait_for_services(10)
        index = 0

        def served_prompts() -> tuple[list[str], set[str]]:
            nonlocal index
            index += 1
            info = r.info[r.send(array_to_image(clip[index % len(clip)], "rgb8", header(index)))]
            return info["prompts"], {rec["label"] for rec in info["instances"]}

        assert served_prompts()[0] == PROMPTS
        refused = {name: value for name, value in REFUSED.items()
                   if name not in ("lone surrogate", "not a string", "a single string", "NUL byte inside")}
        for name, (prompts, message) in refused.items():
            result = set_prompts(client, prompts)
            assert not result.successful and message in result.reason, (name, result.reason)
        wrong_type = set_prompts(client, "red star", Parameter.Type.STRING)
        assert not wrong_type.successful
        prompts, labels = served_prompts()
        assert prompts == PROMPTS and labels and labels <= set(PROMPTS)
        assert r.node.get_parameter("prompts").value == PROMPTS

        for name in ("non-ASCII", "duplicates", f"{MAX_PROMPTS} prompts (the maximum)"):
            result = set_prompts(client, HANDLED[name])
            assert result.successful, (name, result.reason)
            prompts, labels = served_prompts()
            wanted = [p.strip() for p in HANDLED[name]]
            assert prompts == wanted and labels and labels <= set(wanted), name
        assert not r.node_logs(Log.ERROR), r.node_logs(Log.ERROR)
    finally:
        r.close()


def test_nul_and_surrogates_cannot_reach_the_node(context):
    """rclpy refuses these before the node sees them (ROS strings are UTF-8 C strings); the node's own
    validation refuses them too when set in-process."""
    model = tiny_weights()
    node = None
    from mobius_ros.segment_node import SegmentNode

    node = SegmentNode(context=context, namespace="rel_prompts_local", start_parameter_services=False,
                       parameter_overrides=[Parameter("model_path", value=str(model.weights)),
                                            Parameter("backend", value="torch")])
    try:
        for name in ("NUL byte inside", "lone surrogate"):
            prompts, message = REFUSED[name]
            try:
                results = node.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, prompts)])
            except (ValueError, UnicodeError) as error:  # refused while converting to a ROS message
                assert "null" in str(error).lower() or "surrogate" in str(error).lower(), error
                continue
            assert not results[0].successful and message in results[0].reason, results[0].reason
        assert node.get_parameter("prompts").value == node.values()["prompts"]
        assert "\x00" not in "".join(node.get_parameter("prompts").value)
    finally:
        node.destroy_node()
