"""The ablation from a validated plan to the results dict: train every run, count FLOPs, evaluate
every (run, pruning setting) pair the experiments need, and assemble the tables.

results = {"meta": {...}, "runs": {name: record}, "tab3": [row], "tab3_not_supported": [...],
           "tab14": [row], "fig4": {"model", "run", "rows": [eval]}, "claims": [...]}
A Tab. 3 / Tab. 14 row holds the variant's description, its run, its model config, `flops`
(count_flops at the evaluation size, no pruning) and `eval` (evaluate.evaluate_setting).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..config import to_dict
from ..training.recipe import TrainConfig
from .claims import check_claims
from .data import DataPaths
from .evaluate import EvaluationCache, TestSet, evaluate_setting, load_test_set
from .runs import PlannedRun, load_trained_model, train_run
from .spec import (EXPERIMENTS, FIG4_MODEL, NO_PRUNING, SCALES, TAB3_NOT_SUPPORTED, TAB14, PruningSetting, Scale, fig4_settings,
                   variants_by_name)

FLOPS_KEYS = ("vision_encoder", "pixel_decoder", "modality_fusion", "query_selection", "decoder")


@dataclass(frozen=True)
class Plan:
    scale: Scale
    experiments: tuple[str, ...]
    recipe: Path
    steps: int
    runs: tuple[PlannedRun, ...]
    run_of: dict[str, str]           # variant name -> run name
    runs_dir: Path
    top_k: int

    def run(self, variant: str) -> PlannedRun:
        return next(run for run in self.runs if run.name == self.run_of[variant])


def requests(plan: Plan) -> dict[str, list[PruningSetting]]:
    """run name -> the pruning settings to evaluate it at (in order, no duplicates)."""
    wanted: dict[str, list[PruningSetting]] = {run.name: [] for run in plan.runs}

    def add(variant: str, settings) -> None:
        own = wanted[plan.run_of[variant]]
        own += [s for s in settings if s not in own]

    if "tab3" in plan.experiments:
        for variant in plan.scale.tab3:
            add(variant, [NO_PRUNING])
    if "tab14" in plan.experiments:
        for variant in TAB14:
            add(variant.name, plan.scale.tab14_pruning)
    if "fig4" in plan.experiments:
        add(FIG4_MODEL, fig4_settings(plan.scale))
    return wanted


def prompt_names(config: TrainConfig) -> list[str]:
    """The training prompt list, in label order (what the engine prompts with)."""
    from ..training.datasets import build_dataset

    keep = "seen" if config.data.prompts == "seen" else None
    dataset = build_dataset(config.data.train_annotations, config.data.train_images, None, config.data.use_masks,
                            categories=keep)
    return list(dataset.category_names)


def execute(plan: Plan, data: DataPaths, progress: bool) -> dict:
    """Trains, evaluates and assembles; see the module docstring."""
    from ..training.engine import encode_prompts

    started = time.perf_counter()
    first = plan.runs[0].config
    names = prompt_names(first)
    text = encode_prompts(names, first.model.build_config().text.max_tokens)
    records = {}
    for run in tqdm(plan.runs, desc="ablation runs", unit="run", disable=not progress):
        records[run.name] = train_run(run, text, progress)
    # Only now: decoding images starts OpenCV's thread pool, which DataLoader workers forked
    # later by training would inherit broken (they hang).
    test = load_test_set(data.test_annotations, data.test_images, names, text)
    measured = evaluate_runs(plan, test, progress)
    results = assemble(plan, records, measured)
    results["meta"] = metadata(plan, data, test, time.perf_counter() - started)
    results["claims"] = check_claims(results)
    return results


def evaluate_runs(plan: Plan, test: TestSet, progress: bool) -> dict[str, dict]:
    """run name -> {"flops": count_flops dict, "config": model config, "evals": {setting name: eval}}."""
    from ..model.flops import count_flops
    from .decoder_flops import DecoderCost

    wanted = requests(plan)
    total = sum(len(settings) for settings in wanted.values())
    bar = tqdm(total=total, desc="evaluations", unit="eval", disable=not progress)
    measured = {}
    for run in plan.runs:
        if not wanted[run.name]:
            continue
        model, step = load_trained_model(run)
        size = plan.scale.eval_size
        report = count_flops(model, size, test.num_prompts, test.tokens, prune=False)
        cost = DecoderCost.measure(model, size, test.num_prompts, test.tokens)
        cache = EvaluationCache(run.folder, step, test, size, plan.top_k)
        evals = {}
        for setting in wanted[run.name]:
            result = cache.get(setting)
            if result is None:
                result = evaluate_setting(model, test, setting, size, cost, plan.top_k, progress)
                cache.put(setting, result)
            evals[setting.name] = result
            bar.update(1)
        measured[run.name] = {"flops": {key: getattr(report, key) for key in FLOPS_KEYS},
                              "config": to_dict(model.config), "evals": evals}
    bar.close()
    return measured


def assemble(plan: Plan, records: dict, measured: dict) -> dict:
    by_name = variants_by_name()

    def row(variant_name: str, setting: PruningSetting) -> dict:
        variant, run = by_name[variant_name], plan.run_of[variant_name]
        description = {k: v for k, v in dataclasses.asdict(variant).items() if k != "name"}
        config = measured[run]["config"]
        return {"variant": variant_name, **description, "run": run,
                "num_blocks": config["pixel_decoder"]["num_blocks"], "model_config": config,
                "flops": measured[run]["flops"], "eval": measured[run]["evals"][setting.name]}

    results: dict = {"runs": records, "tab3": [], "tab3_not_supported": [], "tab14": [], "fig4": {}}
    if "tab3" in plan.experiments:
        results["tab3"] = [row(name, NO_PRUNING) for name in plan.scale.tab3]
        results["tab3_not_supported"] = [{"paper_row": r, "label": label, "reason": reason}
                                         for r, label, reason in TAB3_NOT_SUPPORTED]
    if "tab14" in plan.experiments:
        results["tab14"] = [row(v.name, s) for v in TAB14 for s in plan.scale.tab14_pruning]
    if "fig4" in plan.experiments:
        run = plan.run_of[FIG4_MODEL]
        results["fig4"] = {"model": FIG4_MODEL, "run": run, "flops": measured[run]["flops"],
                           "model_config": measured[run]["config"],
                           "rows": [measured[run]["evals"][s.name] for s in fig4_settings(plan.scale)]}
    return results


def metadata(plan: Plan, data: DataPaths, test: TestSet, seconds: float) -> dict:
    config = plan.runs[0].config
    optim, recipe_data = config.optim, config.data
    return {
        "scale": plan.scale.name, "experiments": list(plan.experiments), "recipe": str(plan.recipe),
        "steps": plan.steps, "batch_size": config.batch_size, "seed": config.seed,
        "schedule": {"lr": optim.lr, "warmup_steps": optim.warmup_steps, "milestones": list(optim.milestones),
                     "gamma": optim.gamma, "max_steps": optim.max_steps},
        "train_sizes": list(recipe_data.train_sizes), "max_size": recipe_data.max_size,
        "preset": config.model.preset, "data": data.describe(), "eval_size": plan.scale.eval_size,
        "num_prompts": test.num_prompts, "tokens": test.tokens, "top_k": plan.top_k,
        "runs_dir": str(plan.runs_dir), "wall_seconds": seconds,
        "not_run": {"experiments": [name for name in EXPERIMENTS if name not in plan.experiments],
                    "tab3": [name for name in SCALES[plan.scale.name].tab3
                             if "tab3" in plan.experiments and name not in plan.scale.tab3]},
    }
