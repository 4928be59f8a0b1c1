"""Start the MOBIUS segmentation lifecycle node with config/segment.yaml.

    ros2 launch mobius_ros segment.launch.py
    ros2 launch mobius_ros segment.launch.py input_topic:=/camera/color/image_raw prompts:="red star,person"
    ros2 launch mobius_ros segment.launch.py params_file:=/path/my.yaml namespace:=front autostart:=false

Every default lives in config/segment.yaml (passed to the node as its parameter file). The launch
arguments that name a node parameter default to "", meaning "keep the parameter file's value"; a
non-empty value overrides that one parameter. `autostart` (a node parameter) makes the node
configure and activate itself, so no lifecycle manager or transition events are needed; with
autostart:=false it waits in 'unconfigured' for a lifecycle manager.

Arguments: model_path (.onnx or .safetensors), prompts ("a,b,c" or "['a', 'b']"), input_topic,
input_compressed (true/false), autostart (true/false), params_file, namespace.
"""
from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

PACKAGE = "mobius_ros"
NODE_NAME = "mobius_segmenter"
# launch arguments that override the node parameter of the same name (when not "")
PARAMETER_ARGUMENTS = ("model_path", "prompts", "input_topic", "input_compressed", "autostart")
# launch arguments that are not node parameters
LAUNCH_ONLY_ARGUMENTS = {
    "params_file": "ROS parameter file; empty = the installed config/segment.yaml",
    "namespace": "namespace of the node (e.g. one per camera); empty = none",
}


def _value(name: str, text: str):
    """A launch argument string -> the node parameter's type."""
    if name == "prompts":
        if text.lstrip().startswith("["):
            return [str(p) for p in yaml.safe_load(text)]
        return [part.strip() for part in text.split(",") if part.strip()]
    if name in ("input_compressed", "autostart"):
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"launch argument {name}:={text!r} must be true or false")
        return lowered == "true"
    return text


def _launch_node(context):
    params_file = LaunchConfiguration("params_file").perform(context)
    if not params_file:
        params_file = str(Path(get_package_share_directory(PACKAGE)) / "config" / "segment.yaml")
    overrides = {}
    for name in PARAMETER_ARGUMENTS:
        text = LaunchConfiguration(name).perform(context)
        if text != "":
            overrides[name] = _value(name, text)
    node = LifecycleNode(
        package=PACKAGE,
        executable="mobius-segment",
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace").perform(context),
        output="screen",
        parameters=[params_file, overrides] if overrides else [params_file],
    )
    return [node]


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(name, default_value="",
                                       description=f"node parameter {name}; empty = the value in params_file")
                 for name in PARAMETER_ARGUMENTS]
    arguments += [DeclareLaunchArgument(name, default_value="", description=text)
                  for name, text in LAUNCH_ONLY_ARGUMENTS.items()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_launch_node)])
