"""A uniform "model soup" (Wortsman et al., ICML 2022): the element-wise mean of the weights of several
training checkpoints of one model that share a start, e.g. fine-tunes of the same checkpoint with other
seeds or learning rates. Often better than each of them, at no inference cost. `training.ship` ships
one from several `--checkpoint`s; choose the ingredients on val, report on test.

    python -m perception_core.training.ship --checkpoint runs/a/checkpoints/last.pt runs/b/checkpoints/last.pt
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .checkpoint import CheckpointError, load_checkpoint


def model_section(config: dict) -> tuple[str, dict]:
    """What decides the architecture in a checkpoint's config: the preset and its overrides."""
    model = config.get("model") or {}
    return model.get("preset"), dict(model.get("overrides") or {})


def load_ingredients(checkpoints: Sequence[str | Path]) -> list[dict]:
    """The checkpoints' contents; ValueError unless there are two or more readable checkpoints of one
    architecture with the same weight names and shapes."""
    if len(checkpoints) < 2:
        raise ValueError(f"a soup needs at least 2 checkpoints, got {len(checkpoints)}")
    ingredients = []
    for path in checkpoints:
        try:
            ingredients.append(load_checkpoint(path))
        except CheckpointError as error:
            raise ValueError(f"soup ingredient: {error}") from None
    first = model_section(ingredients[0]["config"])
    shapes = {name: tensor.shape for name, tensor in ingredients[0]["model"].items()}
    for path, contents in zip(checkpoints[1:], ingredients[1:]):
        if model_section(contents["config"]) != first:
            raise ValueError(f"soup ingredient '{path}' is model {model_section(contents['config'])}, the first "
                             f"is {first}: only checkpoints of one architecture can be averaged")
        other = {name: tensor.shape for name, tensor in contents["model"].items()}
        if other != shapes:
            names = sorted(set(other) ^ set(shapes)) or sorted(n for n in shapes if other[n] != shapes[n])
            raise ValueError(f"soup ingredient '{path}' has other weights than the first ({', '.join(names[:5])})")
    return ingredients


def average_states(states: Sequence[dict]) -> dict:
    """Element-wise mean of floating-point tensors (accumulated in float64); integer buffers (BatchNorm's
    num_batches_tracked) take their largest value."""
    averaged = {}
    for name, first in states[0].items():
        tensors = [state[name] for state in states]
        if first.is_floating_point():
            averaged[name] = (sum(t.double() for t in tensors) / len(tensors)).to(first.dtype)
        else:
            averaged[name] = torch.stack(tensors).amax(0)
    return averaged
