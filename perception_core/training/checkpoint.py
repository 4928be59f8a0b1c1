"""Training checkpoints: what they hold, atomic writes, safe reads, exact restore.

A checkpoint holds model, optimizer, scaler, step counters, every rank's RNG states and the
plain-dict config; only tensors and plain Python values, read back with
torch.load(weights_only=True). `save_checkpoint` writes a temporary file, fsyncs and renames it
into place, so a file at a checkpoint path is always complete.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .distributed import DistInfo, unwrap
from .recipe import to_plain_dict
from .state import TrainState

if TYPE_CHECKING:
    from .engine import Run

log = logging.getLogger("mobius.train")
CHECKPOINT_FORMAT = "mobius.train_checkpoint.v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model."""


def capture_rng_states() -> dict:
    keys, position, has_gauss, cached = np.random.get_state()[1:]
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))


def gather_rng_states(info: DistInfo) -> list[dict]:
    """RNG states of every rank (collective under DDP), index = rank."""
    states = capture_rng_states()
    if not info.distributed:
        return [states]
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def checkpoint_contents(run: "Run", rng_states: list[dict]) -> dict:
    from .engine import lr_at  # the pure schedule lives with the optimizer

    state = run.state
    return {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {"type": "warmup_multistep", "step": state.step, "lr": lr_at(state.step, run.config.optim)},
        "scaler": run.scaler.state_dict(),
        "step": state.step,
        "skipped_steps": state.skipped_steps,
        "consecutive_nonfinite": state.consecutive_nonfinite,
        "rng": rng_states,
        "world_size": run.info.world_size,
        "config": to_plain_dict(run.config),
    }


def save_checkpoint(path: str | os.PathLike, contents: dict) -> Path:
    """Atomic write: a temporary file in the same folder, fsync, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as file:
            torch.save(contents, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a training checkpoint with weights_only=True; CheckpointError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found; list the run's checkpoints/ folder or "
                              f"start without --resume")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, refused global
        # torch's own advice for refused pickles is to set weights_only=False: not for files we
        # cannot trust, so it is left out.
        detail = ("not loadable with weights_only=True" if isinstance(error, pickle.UnpicklingError)
                  else str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt ({detail}); resume from an "
                              f"earlier checkpoint") from None
    found = contents.get("format") if isinstance(contents, dict) else type(contents).__name__
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a MOBIUS training checkpoint (format {found!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}); to load weights only use model.build.load_weights")
    return contents


def restore_checkpoint(run: "Run", contents: dict, path: str | os.PathLike) -> None:
    """Model, optimizer, scaler, counters and this rank's RNG state from `contents`."""
    try:
        unwrap(run.model).load_state_dict(contents["model"])
        run.optimizer.load_state_dict(contents["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint '{path}' does not fit this model/recipe: {str(error)[:300]}") from None
    if contents["scaler"]:
        run.scaler.load_state_dict(contents["scaler"])
    run.state = TrainState(contents["step"], contents["skipped_steps"], contents["consecutive_nonfinite"])
    rng = contents["rng"]
    if len(rng) == run.info.world_size:
        restore_rng_states(rng[run.info.rank])
    else:
        log.warning("checkpoint has RNG states of %d ranks, this run has %d: RNG reseeded, the run "
                    "will not repeat the original exactly", len(rng), run.info.world_size)
        torch.manual_seed(run.config.seed + run.info.rank + contents["step"])
    _warn_config_changes(contents["config"], to_plain_dict(run.config))


_RESUME_SAFE_KEYS = ("optim.max_steps", "output_dir", "num_workers", "log_interval", "eval_interval",
                     "checkpoint_interval")


def _warn_config_changes(saved: dict, current: dict, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            _warn_config_changes(old, new, name + ".")
        elif old != new and name not in _RESUME_SAFE_KEYS:
            log.warning("resuming with %s=%r (checkpoint had %r)", name, new, old)


def _publish(path: Path, link: Path) -> None:
    """Atomically points `link` at the same file as `path` (hard link, else a copy)."""
    temporary = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError:
        import shutil
        shutil.copyfile(path, temporary)
    os.replace(temporary, link)
