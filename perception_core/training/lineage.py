"""Where a run's weights started: the steps and training time before it, so that a shipped model counts
every step behind it (docs/MODEL_CARD.md), also after a chain of fine-tunes.

`mobius train` with model.init_weights writes the starting point to `<output_dir>/start.json` when the run
starts (the model.json beside shipped weights is rewritten by the next ship, so it is read then, not later);
`training.ship` reads it back. Runs without that file (older ones) are resolved from their config."""
from __future__ import annotations

import json
from pathlib import Path

from .. import assets

START = "start.json"
_MAX_CHAIN = 32   # runs started from runs' checkpoints; guards against a cycle of run folders


def record_start(config: dict, output_dir: Path) -> dict:
    """Resolves and writes the run's starting point (nothing without model.init_weights); returns it."""
    start = starting_point(config)
    path = Path(output_dir) / START
    if start:
        path.write_text(json.dumps(start, indent=1))
    else:
        path.unlink(missing_ok=True)
    return start


def run_start(run_dir: Path, config: dict, depth: int = 0) -> dict:
    """The starting point recorded in `run_dir` at its start, else resolved from its config now."""
    try:
        return json.loads((Path(run_dir) / START).read_text())
    except (OSError, ValueError):
        return starting_point(config, depth)


def starting_point(config: dict, depth: int = 0) -> dict:
    """{init_weights, step, training} of the run's model.init_weights, or {} without one. For shipped
    weights, the model.json beside them; for another run's training checkpoint, that run's own start plus
    its steps up to the checkpoint. Only init_weights when the steps cannot be known."""
    init = (config.get("model") or {}).get("init_weights")
    if not init:
        return {}
    preset = config["model"]["preset"]
    if Path(init).suffix == ".pt":
        return _checkpoint_start(init, preset, depth)
    try:
        prior = json.loads(Path(init).with_name(assets.INFO.name).read_text())
    except (OSError, ValueError):
        return {"init_weights": init}
    if prior.get("preset") != preset:
        return {"init_weights": init}
    return {"init_weights": init, "step": int(prior.get("step") or 0), "training": prior.get("training")}


def _checkpoint_start(init: str, preset: str, depth: int) -> dict:
    from .checkpoint import CheckpointError, load_checkpoint

    try:
        contents = load_checkpoint(init)
    except CheckpointError:
        return {"init_weights": init}
    config = contents.get("config") if isinstance(contents.get("config"), dict) else {}
    if (config.get("model") or {}).get("preset") != preset or depth >= _MAX_CHAIN:
        return {"init_weights": init}
    _, steps, training = behind_checkpoint(init, config, int(contents["step"]), depth + 1)
    return {"init_weights": init, "step": steps, "training": training}


def behind_checkpoint(checkpoint: str | Path, config: dict, step: int, depth: int = 0) -> tuple[dict, int, dict]:
    """(the start of the checkpoint's run, all steps behind the checkpoint, their training summary) of a
    checkpoint at `step` of the run in `<run_dir>/checkpoints/` whose config is `config`."""
    from .model_card import training_summary

    run_dir = Path(checkpoint).resolve().parents[1]
    before = run_start(run_dir, config, depth)
    earlier = before.get("step", 0)
    return before, earlier + step, combined(before.get("training") or {}, training_summary(run_dir, step), earlier)


def combined(before: dict, run: dict, earlier_steps: int) -> dict:
    """Training summary of the steps before (a fine-tuned model's start) and of this run; {} when a part
    with steps is unknown (the card then says the summary is not available)."""
    if not earlier_steps:
        return run
    if not (before and run):
        return {}
    return {"steps": before["steps"] + run["steps"], "hours": before["hours"] + run["hours"],
            "first_loss": before["first_loss"], "last_loss": run["last_loss"]}


def runs_behind(checkpoint: str | Path, config: dict, step: int) -> tuple[dict[Path, int], dict]:
    """The run folders behind a checkpoint, newest first, each with the step it was used to, followed
    through the runs' recorded starts while those are loadable run checkpoints; and the start of the
    oldest one (the steps and training recorded before it, as `run_start` gives them)."""
    from .checkpoint import CheckpointError, load_checkpoint

    used: dict[Path, int] = {}
    for _ in range(_MAX_CHAIN):
        run_dir = Path(checkpoint).resolve().parents[1]
        if run_dir in used:
            break
        used[run_dir] = step
        start = run_start(run_dir, config)
        init = start.get("init_weights")
        if not init or Path(init).suffix != ".pt":
            return used, start
        try:
            contents = load_checkpoint(init)
        except CheckpointError:
            return used, start
        checkpoint, config, step = init, contents.get("config") or {}, int(contents["step"])
    raise ValueError(f"the runs behind '{checkpoint}' form a cycle or a chain of more than {_MAX_CHAIN}")


def union_behind(ingredients: list[tuple[str | Path, dict, int]]) -> tuple[list[int], int, dict]:
    """For several (checkpoint, config, step): the steps behind each, and the steps and training summary
    behind all of them together, each run counted once up to the furthest step any of them used (two
    fine-tunes of one checkpoint share everything before it). The summary is {} when a part is unknown."""
    from .model_card import training_summary

    used: dict[Path, int] = {}
    roots: dict[Path, dict] = {}
    totals, newest = [], []
    for checkpoint, config, step in ingredients:
        runs, start = runs_behind(checkpoint, config, step)
        for run_dir, run_step in runs.items():
            used[run_dir] = max(used.get(run_dir, 0), run_step)
        roots[list(runs)[-1]] = start
        totals.append(sum(runs.values()) + int(start.get("step") or 0))
        newest.append(next(iter(runs)))
    steps = sum(used.values()) + sum(int(start.get("step") or 0) for start in roots.values())
    parts = {run_dir: training_summary(run_dir, run_step) for run_dir, run_step in used.items()}
    before = [start.get("training") or {} for start in roots.values() if start.get("step")]
    if not all(parts.values()) or not all(before):
        return totals, steps, {}
    oldest = before[0] if before else parts[next(iter(roots))]
    deepest = newest[max(range(len(totals)), key=totals.__getitem__)]
    summed = list(parts.values()) + before
    training = {"steps": sum(p["steps"] for p in summed), "hours": sum(p["hours"] for p in summed),
                "first_loss": oldest["first_loss"], "last_loss": parts[deepest]["last_loss"]}
    return totals, steps, training
