"""`mobius flops`: FLOPs per model component (MOBIUS Tab. 10 / Tab. 12 layout) for one or more configs.

    mobius flops --config mobius_mini_m glee_maskdino_mini_m glee_rtdetr_mini_m --size 800
    mobius flops --config mobius_nano --size 384 --prompts 20 --tokens 6 --json
    mobius flops --config mobius_mini_m --kept 300,250,200,150,100,100,100,100,100

The first config is the baseline of the percentages. Weights are random (FLOPs depend only on the
shapes), so the pruned decoder column shows what random weights keep (about pruning.min_kept) unless
--kept gives the queries entering each decoder layer, e.g. `kept_per_layer` of a real run. Counting
conventions (grid_sample included) are in perception_core/model/flops.py.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from ..config import ConfigError
from .build import build_from_name
from .flops import FlopsReport, count_flops, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", nargs="+", action="extend", metavar="NAME",
                        help="model preset(s) or YAML path(s); the first one is the baseline "
                             "(default: mobius_nano)")
    parser.add_argument("--size", type=int, default=384, help="square input size in pixels (default: 384)")
    parser.add_argument("--prompts", type=int, default=80,
                        help="number of text prompts P (default: 80, the COCO categories)")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per prompt T (default: 8)")
    parser.add_argument("--kept", type=_parse_kept, default=None, metavar="N[,N...]",
                        help="queries entering each decoder layer for the pruned column: L comma-separated "
                             "counts starting with K, or one N meaning K then N for every later layer")
    parser.add_argument("--no-prune", dest="prune", action="store_false",
                        help="report the decoder without pruning in both decoder columns")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every config, e.g. pixel_decoder.text_fusion=false")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")


def _parse_kept(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kept {text!r} must be comma-separated integers, e.g. 300,200,100")
    if any(n < 0 for n in counts):
        raise argparse.ArgumentTypeError(f"--kept {text!r} must not contain negative counts")
    return counts


def measure(names: list[str], args: argparse.Namespace) -> dict[str, FlopsReport]:
    reports = {}
    for name in tqdm(names, desc="counting FLOPs", unit="model", disable=len(names) < 2, file=sys.stderr):
        torch.manual_seed(0)  # random weights decide what pruning keeps: same table on every run
        model = build_from_name(name, args.override)
        kept = args.kept[0] if args.kept is not None and len(args.kept) == 1 else args.kept
        reports[name] = count_flops(model, args.size, args.prompts, args.tokens, prune=args.prune, kept=kept)
    return reports


def run(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.config or ["mobius_nano"]))  # unique, order kept
    if args.size <= 0 or args.prompts <= 0 or args.tokens <= 0:
        print("mobius flops: --size, --prompts and --tokens must be positive", file=sys.stderr)
        return 2
    if args.kept is not None and not args.prune:
        print("mobius flops: --kept and --no-prune contradict each other; drop one", file=sys.stderr)
        return 2
    try:
        reports = measure(names, args)
    except (ConfigError, ValueError) as error:
        print(f"mobius flops: {error}", file=sys.stderr)
        return 2
    if args.json:
        payload = {
            "unit": "GFLOPs (2 x GMACs)",
            "image_size": [args.size, args.size],
            "num_prompts": args.prompts,
            "tokens": args.tokens,
            "baseline": names[0],
            "models": {name: report.to_dict() for name, report in reports.items()},
        }
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(reports))
    return 0
