"""`mobius ablate`: the paper's ablations side by side, from one command.

    mobius ablate --out docs/ablations                          # small scale, all experiments
    mobius ablate --out docs/ablations --scale full --data data/synth --resume
    mobius ablate --out /tmp/abl --scale tiny --only tab3,fig4  # smoke run (about a minute)
    mobius ablate --out docs/ablations --scale full --estimate 3  # time 3 training steps per variant

Trains every variant the chosen experiments need (Tab. 3 pixel decoders, Tab. 14 calibration vs
focal loss; Fig. 4 / Tab. 15 reuse the calibration model), evaluates box/mask AP and ECE on the
test split, counts pixel-decoder and decoder FLOPs, and writes OUT/ablations.json, the PNG plots
in OUT and the report (default OUT/../ABLATIONS.md). Every option is checked, and every variant's
config built, before any data is generated or any step is trained.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

from ..config import PACKAGE_ROOT, ConfigError
from .data import DataPaths, existing_data, generate_data, planned_data
from .runs import base_overrides, check_run_folders, plan_runs
from .spec import EXPERIMENTS, SCALES, AblationError, parse_only, parse_tab3, variants_needed

DEFAULT_SCALE = "small"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", default="docs/ablations", help="folder for ablations.json and the PNG plots "
                                                                "(default docs/ablations)")
    parser.add_argument("--markdown", metavar="PATH", help="report path (default: OUT/../ABLATIONS.md)")
    parser.add_argument("--scale", choices=tuple(SCALES), default=DEFAULT_SCALE,
                        help=f"sizes of data, model schedule and sweeps (default {DEFAULT_SCALE}); see spec.py")
    parser.add_argument("--recipe", metavar="YAML", help="training recipe shared by all variants (default: the scale's)")
    parser.add_argument("--steps", type=int, help="training steps per variant (default: the scale's); the recipe's "
                                                  "warmup and lr milestones are stretched to match")
    parser.add_argument("--data", metavar="DIR", help="DIR/train and DIR/test as 'mobius data synth' writes them "
                                                      "(default: generate them at the scale's sizes under RUNS/data)")
    parser.add_argument("--runs", metavar="DIR", help="run folders (default runs/ablations/SCALE)")
    parser.add_argument("--only", metavar="LIST", help="comma-separated subset of tab3,tab14,fig4 (default: all)")
    parser.add_argument("--tab3", metavar="LIST", help="comma-separated subset of the Tab. 3 variants (default: the "
                                                      "scale's), e.g. maskdino_multi,ours_s16_single")
    parser.add_argument("--resume", action="store_true", help="skip finished variants, continue unfinished ones "
                                                              "and reuse cached evaluations")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every variant, repeatable (e.g. batch_size=4)")
    parser.add_argument("--top-k", type=int, default=100, help="detections kept per image (default 100)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--estimate", type=int, metavar="N", help="only time N training steps per variant and "
                                                                  "write OUT/estimate_SCALE.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _find(path: str, what: str) -> Path:
    """A path as given, else relative to the repository root (recipes named in spec.py)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and (PACKAGE_ROOT.parent / candidate).is_file():
        return PACKAGE_ROOT.parent / candidate
    raise AblationError(f"{what} '{path}' not found; pass --recipe with a YAML of training/recipes/")


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise AblationError(f"{option} {value}: must be >= 1")


def runs_folder(args: argparse.Namespace) -> Path:
    return Path(args.runs or f"runs/ablations/{args.scale}")


def make_plan(args: argparse.Namespace, data: DataPaths, check_paths: bool):
    """The validated Plan (pipeline.Plan); AblationError before anything is written. Data paths
    are checked only with check_paths (generated data may not exist yet)."""
    from .pipeline import Plan

    scale = SCALES[args.scale]
    experiments = parse_only(args.only)
    if args.tab3 is not None:
        scale = dataclasses.replace(scale, tab3=parse_tab3(args.tab3))
    for value, option in ((args.steps, "--steps"), (args.top_k, "--top-k"), (args.threads, "--threads"),
                          (args.estimate, "--estimate")):
        _positive(value, option)
    recipe = _find(args.recipe or scale.recipe, "recipe")
    steps = args.steps or scale.steps
    runs_dir = runs_folder(args)
    shared = base_overrides(scale, recipe, steps, data, args.sets)
    # Run names come from all of the scale's variants, so that --only never renames a run folder.
    runs, run_of = plan_runs(variants_needed(SCALES[args.scale], EXPERIMENTS), recipe, shared, runs_dir, check_paths)
    needed = {variant.name for variant in variants_needed(scale, experiments)}
    runs = [run for run in runs if needed & set(run.variants)]
    run_of = {name: run for name, run in run_of.items() if name in needed}
    return Plan(scale, experiments, recipe, steps, tuple(runs), run_of, runs_dir, args.top_k)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["mobius ablate", f"--out {args.out}", f"--scale {args.scale}"]
    for option, value in (("--recipe", args.recipe), ("--steps", args.steps), ("--data", args.data),
                          ("--only", args.only), ("--tab3", args.tab3), ("--markdown", args.markdown)):
        if value is not None:
            parts.append(f"{option} {value}")
    parts += [f"--set {item}" for item in args.sets]
    return " ".join(parts + (["--resume"] if args.resume else []))


def run(args: argparse.Namespace) -> int:
    from ..training.engine import CheckpointError, NonFiniteLossError

    try:
        return _run(args)
    except (AblationError, ConfigError) as error:
        print(f"mobius ablate: error: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteLossError) as error:  # a run folder's checkpoint, or a diverged run
        print(f"mobius ablate: error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import torch

    given = existing_data(Path(args.data)) if args.data else None
    data = given or planned_data(runs_folder(args) / "data")
    plan = make_plan(args, data, check_paths=given is not None)  # every option and variant config
    if args.estimate is None:
        check_run_folders(plan.runs, args.resume)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.quiet
    if given is None:
        forks = any(run.config.num_workers > 0 for run in plan.runs)  # see generate_data
        data = generate_data(data.root, plan.scale, 2 if forks else 1, progress)
        plan = make_plan(args, data, check_paths=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.estimate is not None:
        return _estimate(plan, args.estimate, out, progress)
    from . import plots, report
    from .pipeline import execute

    results = execute(plan, data, progress)
    results["meta"]["command"] = _command_line(args)
    pictures = {}
    if results["tab3"]:
        pictures["tab3"] = plots.plot_tab3(results["tab3"], out / report.PLOTS["tab3"])
    if results["tab14"]:
        pictures["tab14"] = plots.plot_tab14(results["tab14"], out / report.PLOTS["tab14"])
    if results["fig4"]:
        pictures["fig4"] = plots.plot_fig4(results["fig4"]["rows"], out / report.PLOTS["fig4"])
    json_path = report.write_json(results, out)
    markdown = Path(args.markdown) if args.markdown else out.parent / "ABLATIONS.md"
    estimates = [json.loads(p.read_text()) for p in sorted(out.glob("estimate_*.json"))]
    report.write_markdown(results, markdown, pictures, results["meta"]["command"], estimates)
    print(f"wrote {markdown}, {json_path} and {len(pictures)} plot(s) in {out}")
    for claim in results["claims"]:
        print(f"  {claim['verdict']:>13}: {claim['id']}")
    return 0


def _estimate(plan, steps: int, out: Path, progress: bool) -> int:
    """Times `steps` training steps of every planned run in a scratch folder (deleted afterwards)
    and extrapolates to the plan's steps."""
    from ..training import engine
    from .pipeline import prompt_names

    first = plan.runs[0].config
    text = engine.encode_prompts(prompt_names(first), first.model.build_config().text.max_tokens)
    scratch = plan.runs_dir / "estimate"
    runs = {}
    try:
        for run in plan.runs:
            config = dataclasses.replace(run.config, output_dir=str(scratch / run.name),
                                         optim=dataclasses.replace(run.config.optim, max_steps=steps))
            started = time.perf_counter()
            result = engine.train(config, prompt_embeddings=text, show_progress=progress)
            timed = result.step_seconds[1:] or result.step_seconds  # the first step warms up
            per_step = sum(timed) / len(timed)
            runs[run.name] = {"seconds_per_step": per_step, "steps": plan.steps, "hours": per_step * plan.steps / 3600,
                              "wall_seconds": time.perf_counter() - started, "variants": list(run.variants)}
            print(f"{run.name:24} {per_step:7.2f} s/step -> {runs[run.name]['hours']:.1f} h for {plan.steps} steps")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    estimate = {"scale": plan.scale.name, "measured_steps": steps, "date": datetime.date.today().isoformat(),
                "runs": runs}
    path = out / f"estimate_{plan.scale.name}.json"
    path.write_text(json.dumps(estimate, indent=1))
    print(f"wrote {path}")
    return 0
