"""Two (or more) exports of the same model, timed against each other: is a graph change faster, and
does it compute the same thing?

    python bench/ab_onnx.py old.onnx new.onnx [--threads 2] [--repeats 60]

Every file gets the same feed (one letterboxed frame of the generated test clip, the default prompts,
the configured pruning; bench/perf_efficiency.model_feed) and runs in round-robin blocks
(perf_common.time_interleaved), so load from other jobs hits every contender alike. Prints each
output's largest absolute difference from the first file, then median / p90 ms and the speed-up
over the first file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf_common import BLOCK, clip_frames, onnx_session, time_interleaved  # noqa: E402


def output_differences(first: list[np.ndarray], other: list[np.ndarray], names: list[str]) -> dict[str, float | str]:
    """Largest absolute difference per output name; 'shape a vs b' where the shapes differ."""
    result: dict[str, float | str] = {}
    for name, a, b in zip(names, first, other):
        if a.shape != b.shape:
            result[name] = f"shape {a.shape} vs {b.shape}"
        else:
            result[name] = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", nargs="+", help="ONNX files of the same model (the first is the reference)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if len(args.onnx) < 2:
        parser.error("give at least two ONNX files")
    from perf_efficiency import model_feed

    frames, _ = clip_frames(3)
    feed = model_feed(args.onnx[0], frames[2])
    sessions = {path: onnx_session(path, args.threads) for path in args.onnx}
    names = [output.name for output in sessions[args.onnx[0]].get_outputs()]
    outputs = {path: session.run(None, feed) for path, session in sessions.items()}
    for path in args.onnx[1:]:
        print(f"{path} vs {args.onnx[0]}: largest |difference| per output")
        for name, value in output_differences(outputs[args.onnx[0]], outputs[path], names).items():
            print(f"  {name}: {value if isinstance(value, str) else f'{value:.3g}'}")
    timings = time_interleaved({path: (lambda s=s: s.run(None, feed)) for path, s in sessions.items()},
                               args.repeats, args.warmup, BLOCK)
    base = timings[args.onnx[0]].median
    print(f"\n{args.threads} threads, {args.repeats} runs each in round-robin blocks of {BLOCK}")
    for path, timing in timings.items():
        print(f"  {path}: median {timing.median:.2f} ms, p90 {timing.percentile(90):.2f} ms, "
              f"{base / timing.median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
