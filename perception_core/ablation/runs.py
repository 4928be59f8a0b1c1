"""Training the ablation variants: one recipe per scale, one run folder per distinct config,
resumable.

A run folder (RUNS/NAME) is what `mobius train` writes (checkpoints/, metrics.csv, config.yaml)
plus `ablation_run.json` once training has reached its last step. Variants with identical configs
(e.g. Tab. 3's "ours_s16_single" and Tab. 14's "calibration" when the recipe already uses the
calibration loss) share one run. Without --resume an existing checkpoint is an error (nothing is
overwritten); with --resume a finished run is skipped and an unfinished one continues from its
last checkpoint, provided it was started with the same settings.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from ..config import ConfigError
from ..training.recipe import TrainConfig, load_train_config, to_plain_dict
from .data import DataPaths
from .spec import AblationError, Scale, Variant

log = logging.getLogger("mobius.ablate")
FINISHED = "ablation_run.json"
# Keys that may differ between a run folder and the present command without changing the model.
_NEUTRAL_KEYS = ("output_dir", "num_workers", "log_interval", "checkpoint_interval", "eval_interval",
                 "eval_ap_images")


@dataclass(frozen=True)
class PlannedRun:
    name: str                        # run folder name: the first variant with this config
    variants: tuple[str, ...]        # every variant trained by this run
    config: TrainConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def last_checkpoint(self) -> Path:
        return self.folder / "checkpoints" / "last.pt"


def schedule_overrides(recipe: TrainConfig, steps: int) -> list[str]:
    """The recipe's LR schedule stretched to `steps` steps: warmup and milestones keep their
    fraction of the run."""
    if steps == recipe.optim.max_steps:
        return [f"optim.max_steps={steps}"]
    ratio = steps / recipe.optim.max_steps
    milestones = sorted({max(1, round(m * ratio)) for m in recipe.optim.milestones})
    return [f"optim.max_steps={steps}", f"optim.warmup_steps={round(recipe.optim.warmup_steps * ratio)}",
            f"optim.milestones=[{','.join(str(m) for m in milestones)}]"]


def base_overrides(scale: Scale, recipe: Path, steps: int, data: DataPaths, extra: Sequence[str]) -> list[str]:
    """Overrides shared by every variant: scale, user (--set), data, schedule."""
    shared = [*scale.recipe_overrides, *extra, "eval_interval=0", "data.val_annotations=null", "data.val_images=null",
              f"data.train_annotations={data.train_annotations}", f"data.train_images={data.train_images}"]
    try:
        base = load_train_config(recipe, shared, check_paths=False)
    except ConfigError as error:
        raise AblationError(f"recipe '{recipe}' with the scale's and --set overrides: {error}") from None
    return shared + schedule_overrides(base, steps)


def plan_runs(variants: Sequence[Variant], recipe: Path, shared: Sequence[str], runs_dir: Path,
              check_paths: bool) -> tuple[list[PlannedRun], dict[str, str]]:
    """One PlannedRun per distinct config, and variant name -> run name."""
    runs: dict[str, PlannedRun] = {}
    run_of: dict[str, str] = {}
    for variant in variants:
        overrides = [*shared, *variant.overrides, f"output_dir={runs_dir / variant.name}"]
        try:
            config = load_train_config(recipe, overrides, check_paths=check_paths)
        except ConfigError as error:
            raise AblationError(f"variant '{variant.name}' ({' '.join(variant.overrides)}): {error}") from None
        key = json.dumps(identity(to_plain_dict(config)), sort_keys=True)
        if key in runs:
            run = runs[key]
            runs[key] = PlannedRun(run.name, run.variants + (variant.name,), run.config)
        else:
            runs[key] = PlannedRun(variant.name, (variant.name,), config)
        run_of[variant.name] = runs[key].name
    return list(runs.values()), run_of


def identity(plain: dict) -> dict:
    """A plain config without the keys that do not change what is trained."""
    return {key: value for key, value in plain.items() if key not in _NEUTRAL_KEYS}


def is_finished(run: PlannedRun) -> bool:
    record = run.folder / FINISHED
    if not (record.is_file() and run.last_checkpoint.is_file()):
        return False
    return json.loads(record.read_text()).get("step") == run.config.optim.max_steps


def check_run_folders(runs: Sequence[PlannedRun], resume: bool) -> None:
    """Before any training: without --resume no run folder may hold a checkpoint; with --resume a
    folder's saved config must equal the planned one."""
    for run in runs:
        checkpoints = list((run.folder / "checkpoints").glob("*.pt")) if (run.folder / "checkpoints").is_dir() else []
        if not checkpoints:
            continue
        if not resume:
            raise AblationError(f"run folder '{run.folder}' already holds checkpoints of an earlier ablation; pass "
                                f"--resume to reuse finished variants and continue unfinished ones, or choose "
                                f"another --runs folder")
        saved_path = run.folder / "config.yaml"
        saved = identity(yaml.safe_load(saved_path.read_text()) or {}) if saved_path.is_file() else {}
        planned = identity(json.loads(json.dumps(to_plain_dict(run.config))))
        differing = _differences(saved, planned, _defaults())
        if differing:
            raise AblationError(f"run folder '{run.folder}' was trained with other settings ({', '.join(differing[:6])}"
                                f"); use the same --scale/--steps/--recipe/--data/--set as before, or another --runs folder")


def _defaults() -> dict:
    """TrainConfig defaults as a plain dict (a key newer than a run folder counts as unchanged when
    the planned value is its default)."""
    return json.loads(json.dumps(to_plain_dict(TrainConfig())))


def _differences(old: dict, new: dict, defaults: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, default if isinstance(default, dict) else {}, f"{prefix}{key}.")
        elif key not in old and isinstance(defaults, dict) and key in defaults and b == default:
            continue
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def train_run(run: PlannedRun, prompt_embeddings, progress: bool) -> dict:
    """Trains (or continues) one run to its last step; returns its record (also written to
    RUN/ablation_run.json): step, training seconds and seconds per step of the steps run here."""
    from ..training import engine

    if is_finished(run):
        log.info("run '%s' already finished (%d steps): not retrained", run.name, run.config.optim.max_steps)
        return json.loads((run.folder / FINISHED).read_text())
    resume = run.last_checkpoint if run.last_checkpoint.is_file() else None
    started = time.perf_counter()
    result = engine.train(run.config, resume=resume, prompt_embeddings=prompt_embeddings, show_progress=progress)
    seconds = time.perf_counter() - started
    losses = [step.loss for step in result.history[-10:] if not step.skipped]
    record = {"run": run.name, "variants": list(run.variants), "step": result.final_step,
              "steps_this_call": len(result.step_seconds), "train_seconds": seconds,
              "seconds_per_step": sum(result.step_seconds) / max(len(result.step_seconds), 1),
              "final_loss": sum(losses) / len(losses) if losses else None,
              "resumed_from": str(resume) if resume else None}
    (run.folder / FINISHED).write_text(json.dumps(record, indent=2))
    return record


def load_trained_model(run: PlannedRun):
    """(Mobius model in eval mode with the run's last checkpoint, the checkpoint's step)."""
    from ..model.build import build_model
    from ..training.engine import load_checkpoint

    contents = load_checkpoint(run.last_checkpoint)
    model = build_model(run.config.model.build_config())
    model.load_state_dict(contents["model"])
    return model.eval(), int(contents["step"])
