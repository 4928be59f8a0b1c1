"""The node's parameters: what each one means and allows (here) and its default (config/segment.yaml).

Defaults live ONLY in `config/segment.yaml`. This module holds, per parameter, its type, a
description, its range or choices and whether a change applies at once ("dynamic") or at the next
configure; `load_defaults` reads the YAML and refuses one that disagrees with this table, so the two
cannot drift apart. `processor_config` turns parameter values into the runtime's ProcessorConfig.

ROS-free (no rclpy): the node turns `SPECS` into ParameterDescriptors.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from perception_core.model.prune_schedule import SCHEDULES

CONFIG_NAME = "segment.yaml"
NODE_NAME = "mobius_segmenter"
QOS_CHOICES = ("best_effort", "reliable")


@dataclass(frozen=True)
class ParamSpec:
    kind: str                                   # "string" | "string_array" | "double" | "integer" | "bool"
    description: str
    low: float | None = None                    # inclusive range for numbers
    high: float | None = None
    choices: tuple[str, ...] | None = None      # allowed values for strings
    dynamic: bool = False                       # True: applies to the next frame; False: at next configure


def _tracker(description: str, low: float, high: float, kind: str = "double") -> ParamSpec:
    return ParamSpec(kind, f"tracker: {description}", low, high)


SPECS: dict[str, ParamSpec] = {
    # model (on configure)
    "model_path": ParamSpec("string", "model file: .onnx (backend onnx) or .safetensors weights (backend torch); "
                                      "empty = the shipped default model"),
    "backend": ParamSpec("string", "inference backend", choices=("onnx", "torch")),
    "preset": ParamSpec("string", "model config name (config/models/<preset>.yaml) for the torch backend "
                                  "and the pruning defaults of an ONNX model"),
    "input_size": ParamSpec("integer", "network input side in pixels for the torch backend (an ONNX model "
                                       "fixes its own); multiple of 32", 64, 2048),
    "threads": ParamSpec("integer", "inference threads", 1, 64),
    "prompts": ParamSpec("string_array", "text prompts: what to segment, e.g. ['red star', 'person']; "
                                         "a change applies to the next frame", dynamic=True),
    "prompt_embeddings": ParamSpec("string", "prompt embeddings file (.safetensors, written by 'mobius prompts'): "
                                             "prompts found in it need no text model (torch); empty = only the "
                                             "shipped defaults' embeddings"),
    "score_threshold": ParamSpec("double", "instances with a lower score are dropped", 0.0, 1.0),
    "calibrated_scores": ParamSpec("bool", "scores through the calibration stored in the model file ('mobius "
                                           "calibrate'): a score estimates the mask IoU; false = the model's own "
                                           "confidence"),
    "prune_schedule": ParamSpec("string", "query pruning schedule (paper Eq. 5-8); empty = the model's own",
                                choices=("", *SCHEDULES)),
    "prune_bound_low": ParamSpec("double", "pruning threshold b_low; negative = the model's own (set both "
                                           "bounds or neither)", -1.0, 1.0),
    "prune_bound_high": ParamSpec("double", "pruning threshold b_high; negative = the model's own", -1.0, 1.0),
    "prune_min_kept": ParamSpec("integer", "queries always kept per decoder layer; negative = the model's own",
                                -1, 10000),
    "kernel_reuse": ParamSpec("integer", "full decode every T frames, reuse mask kernels in between "
                                         "(1 = decode every frame)", 1, 100),
    "reuse_bottleneck": ParamSpec("bool", "with kernel_reuse > 1, frames between keyframes also reuse the "
                                          "keyframe's coarse mask features (moved after each object) and "
                                          "recompute only the stride-4 map: over 10x cheaper than kernel "
                                          "reuse alone"),
    "tracker.keep_score": _tracker("a carried query continues its track while its score is at least this",
                                   0.0, 1.0),
    "tracker.continue_iou": _tracker("... and while its mask overlaps the track's last mask at least this much",
                                     0.0, 1.0),
    "tracker.relabel_iou": _tracker("... or this much when its prompt changed (else it drifted to a neighbour)",
                                    0.0, 1.0),
    "tracker.confirm_hits": _tracker("matches in a row that confirm a new track", 1, 1000, "integer"),
    "tracker.max_age": _tracker("frames a lost track waits to be re-identified before removal", 0, 100000,
                                "integer"),
    "tracker.embedding_weight": _tracker("association similarity = w * query cosine + (1 - w) * mask IoU",
                                         0.0, 1.0),
    "tracker.match_threshold": _tracker("lowest similarity the association accepts", 0.0, 1.0),
    "tracker.label_mismatch": _tracker("association similarity factor when the prompts differ", 0.0, 1.0),
    "tracker.duplicate_iou": _tracker("a new detection overlapping an accepted one this much is dropped",
                                      0.0, 1.0),
    "tracker.max_track_queries": _tracker("at most this many tracks are carried into the next frame",
                                          0, 10000, "integer"),
    # input (on configure)
    "input_topic": ParamSpec("string", "camera image topic (sensor_msgs/Image); with input_compressed the node "
                                       "subscribes to <input_topic>/compressed (image_transport naming)"),
    "input_compressed": ParamSpec("bool", "subscribe to sensor_msgs/CompressedImage (jpeg/png) on "
                                          "<input_topic>/compressed instead of raw images"),
    "qos_reliability": ParamSpec("string", "reliability of the image subscription (history is always keep-last 1); "
                                           "best_effort also accepts reliable publishers", choices=QOS_CHOICES),
    # runtime behaviour (dynamic)
    "max_rate": ParamSpec("double", "at most this many frames per second are processed; 0 = as many as arrive "
                                    "and the model allows", 0.0, 1000.0, dynamic=True),
    "publish_overlay": ParamSpec("bool", "publish ~/overlay (computed only while someone subscribes)",
                                 dynamic=True),
    "diagnostics_period": ParamSpec("double", "seconds between /diagnostics messages", 0.1, 3600.0),
    "autostart": ParamSpec("bool", "configure and activate by itself at startup (no lifecycle manager needed)"),
}
TRACKER_PREFIX = "tracker."


def find_config() -> Path:
    """config/segment.yaml: the source tree, else the installed share folder (colcon or pip)."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / CONFIG_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("mobius_ros")) / "config" / CONFIG_NAME)
    except Exception:  # ament_index_python absent, or mobius_ros not in AMENT_PREFIX_PATH
        pass
    candidates.append(Path(sys.prefix) / "share" / "mobius_ros" / "config" / CONFIG_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{CONFIG_NAME} not found in " + ", ".join(map(str, candidates))
                            + "; reinstall the mobius_ros package")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_defaults(path: Path | None = None) -> dict[str, Any]:
    """{parameter name: default} from a ROS parameter file laid out as `/**: ros__parameters: ...`
    (nested keys joined with '.'). ValueError when it does not match SPECS exactly."""
    path = Path(path) if path is not None else find_config()
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:  # includes refused tags such as !!python/object
        raise ValueError(f"{path} is not valid YAML (read with yaml.safe_load): {error}") from None
    try:
        values = _flatten(tree["/**"]["ros__parameters"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: expected the layout '/**: ros__parameters: {{...}}'") from None
    missing, unknown = sorted(set(SPECS) - set(values)), sorted(set(values) - set(SPECS))
    if missing or unknown:
        raise ValueError(f"{path}: parameters missing {missing}, unknown {unknown}; "
                         f"keep it in sync with mobius_ros/parameters.py SPECS")
    for name, value in values.items():
        error = check(name, value)
        if error:
            raise ValueError(f"{path}: {error}")
    return values


def _kind_of(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return "string_array"
    return None


def check(name: str, value: Any) -> str | None:
    """None if `value` is allowed for parameter `name`, else a one-line reason."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    kind = _kind_of(value)
    if kind != spec.kind and not (spec.kind == "double" and kind == "integer"):
        return f"{name} must be {spec.kind.replace('_', ' ')}, got {value!r}"
    if spec.low is not None and not spec.low <= value <= spec.high:
        return f"{name}={value} is outside [{spec.low}, {spec.high}]"
    if spec.choices is not None and value not in spec.choices:
        return f"{name}={value!r}; choose one of {list(spec.choices)}"
    return None


def validate_model_path(model_path: str, backend: str) -> str | None:
    """The model file as an absolute path (None = shipped default); FileNotFoundError/ValueError otherwise."""
    suffixes = (".onnx",) if backend == "onnx" else (".safetensors", ".pt", ".pth")
    return _file_parameter("model_path", model_path, suffixes, f" for backend '{backend}'",
                           "(or '' for the shipped model), or run 'mobius export'")


def _file_parameter(name: str, value: str, suffixes: tuple[str, ...], context: str, remedy: str) -> str | None:
    """Parameter `name` as an absolute path of an existing file ('' -> None); FileNotFoundError/ValueError."""
    if not value:
        return None
    if "\0" in value:
        raise ValueError(f"{name} {value!r} contains a NUL byte; set it to a plain file path")
    path = Path(value).expanduser()
    if path.suffix not in suffixes:
        raise ValueError(f"{name} '{value}' must end in {' or '.join(suffixes)}{context}")
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise ValueError(f"{name} '{value}' is {kind}; set it to a {'/'.join(suffixes)} file")
    if not path.is_file():
        raise FileNotFoundError(f"{name} file '{path}' not found; set parameter {name} to an existing "
                                f"{'/'.join(suffixes)} file {remedy}")
    return str(path.resolve())


def processor_config(values: dict[str, Any]) -> Any:
    """Parameter values -> perception_core.runtime.processor.ProcessorConfig (ValueError when inconsistent)."""
    from perception_core.runtime.processor import ProcessorConfig
    from perception_core.runtime.tracker import TrackerConfig

    low, high = values["prune_bound_low"], values["prune_bound_high"]
    if (low < 0) != (high < 0):
        raise ValueError(f"prune_bound_low={low} and prune_bound_high={high}: set both (0 <= low <= high <= 1) "
                         f"or both negative for the model's own bounds")
    tracker_names = {f.name for f in fields(TrackerConfig)}
    tracker = {name[len(TRACKER_PREFIX):]: value for name, value in values.items() if name.startswith(TRACKER_PREFIX)}
    if set(tracker) != tracker_names:
        raise ValueError(f"tracker parameters {sorted(tracker)} do not match TrackerConfig fields "
                         f"{sorted(tracker_names)}; update mobius_ros/parameters.py and config/{CONFIG_NAME}")
    return ProcessorConfig(
        backend=values["backend"],
        model=validate_model_path(values["model_path"], values["backend"]),
        preset=values["preset"],
        threads=int(values["threads"]),
        score_threshold=float(values["score_threshold"]),
        calibrated_scores=bool(values["calibrated_scores"]),
        prune_schedule=values["prune_schedule"] or None,
        prune_bounds=None if low < 0 else (float(low), float(high)),
        prune_min_kept=None if values["prune_min_kept"] < 0 else int(values["prune_min_kept"]),
        kernel_reuse=int(values["kernel_reuse"]),
        reuse_bottleneck=bool(values["reuse_bottleneck"]),
        tracker=TrackerConfig(**tracker),
        size=int(values["input_size"]),
        prompt_embeddings=_file_parameter("prompt_embeddings", values["prompt_embeddings"], (".safetensors",), "",
                                          "(or '' for none), written by 'mobius prompts'"),
    )
