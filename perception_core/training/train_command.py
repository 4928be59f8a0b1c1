"""`mobius train --config training/recipes/NAME.yaml [key=value ...]`

Examples:
    mobius train --config training/recipes/mobius_nano_synth.yaml
    mobius train --config training/recipes/mobius_nano_synth.yaml optim.lr=2e-4 batch_size=4
    mobius train --config training/recipes/mobius_nano_synth.yaml --resume auto
    mobius train --config training/recipes/mobius_nano_synth.yaml --prompt-embeddings prompts.safetensors
    torchrun --nproc_per_node=2 -m perception_core.cli train --config training/recipes/mobius_nano_synth.yaml
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("--config", required=True, help="training recipe YAML (training/recipes/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. optim.lr=2e-4 model.overrides.decoder.num_queries=50")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="checkpoint to resume from; 'auto' = OUTPUT_DIR/checkpoints/last.pt if it exists")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="training device (default: CUDA when available)")
    parser.add_argument("--prompt-embeddings", default=None, metavar="FILE",
                        help="read the category names' text embeddings from this file ('mobius prompts') "
                             "instead of running MiniLM: train where the text encoder is not installed")
    parser.add_argument("--check", action="store_true",
                        help="validate the recipe and the data files, then exit without training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for log files)")


def resolve_resume(resume: str | None, output_dir: str) -> Path | None:
    if resume != "auto":
        return Path(resume) if resume else None
    last = Path(output_dir) / "checkpoints" / "last.pt"
    return last if last.is_file() else None


def run(args: argparse.Namespace) -> int:
    # Imported here: torch and the model stack load only when training actually runs.
    from ..config import ConfigError
    from .distributed import cleanup
    from .engine import CheckpointError, NonFiniteLossError, build_loaders, train
    from .recipe import load_train_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        config = load_train_config(args.config, args.overrides)
        if args.check:
            from .distributed import DistInfo
            build_loaders(config, DistInfo())
            print(f"recipe '{args.config}' and its data are valid")
            return 0
        resume = resolve_resume(args.resume, config.output_dir)
        result = train(config, device=args.device, resume=resume, show_progress=not args.no_progress,
                       prompt_file=args.prompt_embeddings)
    except ConfigError as error:
        print(f"mobius train: invalid recipe: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteLossError) as error:
        print(f"mobius train: {error}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    if result.checkpoint is not None:
        print(f"trained to step {result.final_step} ({result.skipped_steps} skipped); "
              f"checkpoint: {result.checkpoint}")
    return 0
