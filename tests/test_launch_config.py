"""config/segment.yaml, the node's declared parameters and launch/segment.launch.py agree.

launch/launch_ros are not installed here, so the launch file is checked by parsing it (ast): every
launch argument is a declared node parameter (or one of the two launch-only arguments), defaults to
"" (= keep the YAML's value), and no YAML default is repeated in it. The YAML is fed to a real
rclpy node as a --params-file, as `mobius-segment --ros-args --params-file ...` would.
"""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import rclpy
import yaml
from rcl_interfaces.msg import ParameterType

from mobius_ros import parameters
from mobius_ros.segment_node import SegmentNode

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "segment.launch.py"
CONFIG = ROOT / "config" / "segment.yaml"
pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()


def _node(context, *cli_args: str) -> SegmentNode:
    return SegmentNode(context=context, cli_args=list(cli_args) or None, start_parameter_services=False)


def test_yaml_matches_the_parameter_table():
    defaults = parameters.load_defaults(CONFIG)
    assert set(defaults) == set(parameters.SPECS)
    assert all(parameters.check(name, value) is None for name, value in defaults.items())


def test_yaml_prompts_are_the_shipped_models_prompts():
    """So the default node start needs no text model (the embeddings ship with the model)."""
    from perception_core import assets

    assert tuple(parameters.load_defaults(CONFIG)["prompts"]) == tuple(assets.DEFAULT_PROMPTS)


def test_tracker_parameters_cover_tracker_config():
    from dataclasses import fields

    from perception_core.runtime.tracker import TrackerConfig

    names = {n[len(parameters.TRACKER_PREFIX):] for n in parameters.SPECS if n.startswith(parameters.TRACKER_PREFIX)}
    assert names == {f.name for f in fields(TrackerConfig)}


def test_node_declares_exactly_the_yaml_with_descriptions_and_ranges(context):
    node = _node(context)
    try:
        defaults = parameters.load_defaults(CONFIG)
        assert node.values() == defaults
        for name, descriptor in zip(parameters.SPECS, node.describe_parameters(list(parameters.SPECS))):
            spec = parameters.SPECS[name]
            assert descriptor.description.startswith(spec.description), name
            if spec.kind == "double" and spec.low is not None:
                assert (descriptor.floating_point_range[0].from_value,
                        descriptor.floating_point_range[0].to_value) == (spec.low, spec.high), name
            if spec.kind == "integer" and spec.low is not None:
                assert descriptor.integer_range[0].from_value == spec.low, name
        assert node.describe_parameters(["prompts"])[0].type == ParameterType.PARAMETER_STRING_ARRAY
        # ranges are enforced by rclpy itself: an out-of-range update is refused
        result = node.set_parameters([rclpy.Parameter("score_threshold", value=1.5)])[0]
        assert not result.successful and node.values()["score_threshold"] == defaults["score_threshold"]
        result = node.set_parameters([rclpy.Parameter("qos_reliability", value="sometimes")])[0]
        assert not result.successful and "best_effort" in result.reason
    finally:
        node.destroy_node()


def test_rcl_accepts_the_yaml_as_params_file(context, tmp_path):
    """The file works with standard rclpy argument handling, and a params file overrides it."""
    node = _node(context, "--ros-args", "--params-file", str(CONFIG))
    try:
        assert node.values() == parameters.load_defaults(CONFIG)
    finally:
        node.destroy_node()
    tree = yaml.safe_load(CONFIG.read_text())
    tree["/**"]["ros__parameters"]["input_topic"] = "/front/image_raw"
    tree["/**"]["ros__parameters"]["tracker"]["max_age"] = 7
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump(tree))
    node = _node(context, "--ros-args", "--params-file", str(custom), "-p", "prompts:=[person, cup]")
    try:
        values = node.values()
        assert values["input_topic"] == "/front/image_raw" and values["tracker.max_age"] == 7
        assert values["prompts"] == ["person", "cup"]
    finally:
        node.destroy_node()


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _assigned(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{LAUNCH.name} assigns no {name}")


def test_launch_arguments_map_to_declared_parameters():
    tree = _launch_tree()
    parameter_arguments = _assigned(tree, "PARAMETER_ARGUMENTS")
    launch_only = _assigned(tree, "LAUNCH_ONLY_ARGUMENTS")
    assert set(parameter_arguments) <= set(parameters.SPECS)
    assert {"model_path", "prompts", "input_topic", "autostart"} <= set(parameter_arguments)
    assert set(launch_only) == {"params_file", "namespace"} and not set(launch_only) & set(parameters.SPECS)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"]
    assert calls, "no DeclareLaunchArgument in the launch file"
    for call in calls:  # every argument defaults to "" (= the YAML's value)
        default = next(k.value for k in call.keywords if k.arg == "default_value")
        assert isinstance(default, ast.Constant) and default.value == ""
    assert _assigned(tree, "NODE_NAME") == parameters.NODE_NAME
    assert _assigned(tree, "PACKAGE") == ET.parse(ROOT / "package.xml").getroot().findtext("name")


def test_launch_file_repeats_no_default():
    constants = {n.value for n in ast.walk(_launch_tree()) if isinstance(n, ast.Constant)}
    repeated = []
    for name, value in parameters.load_defaults(CONFIG).items():
        values = value if isinstance(value, list) else [value]
        repeated += [(name, v) for v in values
                     if not isinstance(v, bool) and v not in ("", 0, 1) and v in constants]
    assert not repeated, f"defaults repeated in {LAUNCH.name}: {repeated}"


def test_launch_argument_strings_convert_to_valid_parameter_values():
    """Runs the launch file's own `_value` (extracted from its source) on typical argument strings."""
    tree = _launch_tree()
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_value")
    namespace: dict = {"yaml": yaml}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(LAUNCH), "exec"), namespace)
    convert = namespace["_value"]
    cases = {("prompts", "red star, person"): ["red star", "person"],
             ("prompts", "['a b', 'c']"): ["a b", "c"],
             ("autostart", "False"): False, ("input_compressed", "true"): True,
             ("input_topic", "/cam/image"): "/cam/image", ("model_path", "/m/x.onnx"): "/m/x.onnx"}
    for (name, text), want in cases.items():
        got = convert(name, text)
        assert got == want and parameters.check(name, got) is None
    with pytest.raises(ValueError, match="true or false"):
        convert("autostart", "yes please")


def test_entry_point_and_package_dependencies():
    setup_text = (ROOT / "setup.py").read_text()
    assert '"mobius-segment = mobius_ros.segment_node:main"' in setup_text
    assert "msg/*.msg" in setup_text  # the record definitions are installed with the package
    root = ET.parse(ROOT / "package.xml").getroot()
    depends = {e.text for e in root if e.tag in ("exec_depend", "depend")}
    assert {"rclpy", "lifecycle_msgs", "rcl_interfaces", "sensor_msgs", "std_msgs", "builtin_interfaces",
            "diagnostic_msgs", "launch", "launch_ros", "ament_index_python"} <= depends
