"""The shipped default model: where its files live inside the installed package.

    mobius_nano.safetensors   weights (loaded without pickle)
    mobius_nano.onnx          the same model exported at SIZE px (dynamo, opset 19), with its
                              companion graphs mobius_nano.masks.onnx and mobius_nano.lateral.onnx
    default_prompts.safetensors  MiniLM embeddings of DEFAULT_PROMPTS (no text model needed to deploy)
    model.json                preset, input size, training prompts, recipe and metrics (the model card's numbers)

Every front end (eval, infer, eval-video, gst, bag, the ROS node) uses these when no model is given.
"""
from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
PRESET = "mobius_nano"
SIZE = 384
WEIGHTS = ASSETS / "mobius_nano.safetensors"
ONNX = ASSETS / "mobius_nano.onnx"
PROMPT_EMBEDDINGS = ASSETS / "default_prompts.safetensors"
INFO = ASSETS / "model.json"
DEFAULT_PROMPTS: tuple[str, ...] = ("red circle", "blue square", "green triangle", "yellow star")


class MissingModelError(FileNotFoundError):
    """The shipped model file is not in this installation."""


def require(path: Path) -> Path:
    """`path` if it exists, else a clear error naming what to do."""
    if not path.is_file():
        raise MissingModelError(
            f"the shipped default model file '{path}' is missing from this installation; "
            f"reinstall the package or pass a model explicitly (--weights / --onnx)")
    return path


def info() -> dict:
    """model.json: preset, size, prompts it was trained with, metrics; {} when absent."""
    if not INFO.is_file():
        return {}
    return json.loads(INFO.read_text(encoding="utf-8"))
