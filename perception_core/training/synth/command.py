"""`mobius data synth`: write a split of the procedural benchmark.

    mobius data synth --out data/synth --split train --images 2000 --videos 100 --seed 0 \\
        --holdout-compositions "red star,blue ring" --difficulty normal --workers 2

writes data/synth/train/instances.json + images/ (COCO) and videos.json + videos/ (YouTube-VIS).
Generate val and test with the same --holdout-compositions: there those compositions appear
normally, so the gap between seen and held-out compositions can be measured.
"""
from __future__ import annotations

import argparse
import sys

from .config import DIFFICULTIES, SPLITS, make_config
from .vocabulary import VocabularyError, parse_compositions
from .writer import check_request, write_split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `synth` subcommand under `mobius data`."""
    subparsers = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    synth = subparsers.add_parser("synth", help="generate images and clips with annotations",
                                  description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    synth.add_argument("--out", required=True, help="output folder (DIR/{split}/... is written)")
    synth.add_argument("--split", required=True, choices=SPLITS)
    synth.add_argument("--images", type=int, default=0, metavar="N", help="still images")
    synth.add_argument("--videos", type=int, default=0, metavar="M", help="video clips")
    synth.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    synth.add_argument("--holdout-compositions", default="", metavar="LIST",
                       help='comma-separated compositions never shown in train, e.g. '
                            '"red star,blue ring"')
    synth.add_argument("--difficulty", choices=DIFFICULTIES, default="normal",
                       help="scales clutter, object count, occlusion and noise (default normal)")
    synth.add_argument("--image-size", type=int, nargs=2, default=(384, 384), metavar=("H", "W"),
                       help="still image size (default 384 384)")
    synth.add_argument("--video-size", type=int, nargs=2, default=(288, 384), metavar=("H", "W"),
                       help="video frame size (default 288 384)")
    synth.add_argument("--frames", type=int, default=0, metavar="F",
                       help="frames per clip (default: 16 to 24, varying per clip)")
    synth.add_argument("--workers", type=int, default=1, metavar="K",
                       help="processes; the output does not depend on it (default 1)")
    synth.add_argument("--no-photos", action="store_true",
                       help="no photo backgrounds (outputs then do not depend on which "
                            "packages ship sample photos)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(data_parser=parser)


def _config_from(args: argparse.Namespace):
    """SynthConfig from the arguments; raises ValueError with a message for the user."""
    overrides = {"image_size": tuple(args.image_size), "video_size": tuple(args.video_size),
                 "holdout_compositions": parse_compositions(args.holdout_compositions),
                 "use_photos": not args.no_photos}
    if args.frames:
        if args.frames < 1:
            raise ValueError(f"--frames {args.frames}: need at least 1")
        overrides["frames"] = (args.frames, args.frames)
    return make_config(args.difficulty, **overrides)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "synth":
        args.data_parser.print_help()
        return 2
    try:
        config = _config_from(args)
        if args.images + args.videos == 0:
            raise ValueError("nothing to generate: pass --images N and/or --videos M")
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: need at least 1")
        check_request(args.split, args.images, args.videos, args.seed, config)
    except (ValueError, VocabularyError) as error:
        print(f"mobius data synth: error: {error}", file=sys.stderr)
        return 2
    paths = write_split(args.out, args.split, args.images, args.videos, args.seed, config,
                        workers=args.workers, progress=not args.quiet)
    for path in (paths.instances, paths.videos):
        if path is not None:
            print(f"wrote {path}")
    return 0
