"""`make bench`: every performance benchmark of issue 9, written to docs/BENCHMARKS.md (+ PNGs in docs/).

    python bench/run_all.py                       # everything (~10 min on 2 idle cores, more under load)
    python bench/run_all.py --quick               # smoke run: few repeats, small sweeps (~1.5 min)
    python bench/run_all.py --only latency int8   # redo some sections; the others stay in the file

Sections (bench/perf_*.py, each a `run(Settings) -> Section`):
  flops       FLOPs per component, mobius_mini_m vs GLEE MaskDINO / RT-DETR baselines (384, 800 px)
  latency     onnxruntime latency of the three configs; default model FPS, end-to-end FPS with
              tracking, p99, kernel reuse T=3 speed-up (alone and with bottleneck reuse)
  reuse       between keyframes: cost of the mask and lateral graphs, mask IoU with ground truth of
              full decode / kernel reuse / kernel + bottleneck reuse / frozen masks (PNG)
  node        the ROS 2 node end to end (rclpy, Fast DDS) with a 60 fps camera: rate, latency, drops
  runtime     `mobius bench`'s per-stage table: onnxruntime vs torch, 1 vs 2 threads, T=1 vs 3
  pruning     pruned decoder FLOPs from kept queries measured on a generated clip
  efficiency  sgemm peak vs achieved FLOP/s (one stream over fresh processes, streams side by side),
              onnxruntime profile by op type, session options and the deformable sampling layout
  int8        onnxruntime dynamic / static QDQ int8: speed-up and mask AP change
  peers       Grounding DINO and Mask2Former (transformers, torch) vs MOBIUS
  scaling     latency vs input size and prompts, pixel decoder FLOPs growth (PNG)

Numbers are printed and written; nothing here asserts a speed. Exported graphs are cached in
.bench_cache/ (gitignored) under a hash of the code that determines them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from perf_common import CACHE, DOCS, Settings  # noqa: E402
from perf_report import ORDER, render  # noqa: E402

MODULES = {"flops": "perf_flops", "latency": "perf_latency", "reuse": "perf_reuse", "node": "perf_node",
           "runtime": "perf_runtime",
           "pruning": "perf_pruning", "efficiency": "perf_efficiency", "int8": "perf_int8", "peers": "perf_peers",
           "scaling": "perf_scaling"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few repeats and small sweeps")
    parser.add_argument("--only", nargs="+", choices=ORDER, metavar="SECTION",
                        help=f"run only these sections ({', '.join(ORDER)}); the rest of the file is kept")
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--out", default=str(DOCS), help="folder of BENCHMARKS.md and the PNGs (default docs/)")
    parser.add_argument("--cache", default=str(CACHE), help="exported graphs etc. (default .bench_cache/)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads {args.threads} must be >= 1")
    return args


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    settings = Settings.make(args.quick, args.threads, Path(args.out), Path(args.cache))
    settings.docs.mkdir(parents=True, exist_ok=True)
    target = settings.docs / "BENCHMARKS.md"
    keys = args.only or list(ORDER)
    failed = []
    for key in tqdm(keys, desc="bench sections", unit="section"):
        start = time.perf_counter()
        try:
            section = importlib.import_module(MODULES[key]).run(settings)
        except Exception:  # one broken section must not lose the others' numbers
            failed.append(key)
            tqdm.write(f"[bench] section {key} FAILED:\n{traceback.format_exc()}")
            continue
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section.body = (f"_Run {stamp}, {'quick' if settings.quick else 'full'} mode, "
                        f"{time.perf_counter() - start:.0f} s._\n\n{section.body}")
        previous = target.read_text(encoding="utf-8") if target.is_file() else None
        target.write_text(render([section], previous), encoding="utf-8")   # after every section
        tqdm.write(f"\n## {section.title}\n\n{section.body}")
    print(f"[bench] wrote {target}" + (f"; FAILED sections: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
