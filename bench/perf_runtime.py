"""The runtime's per-stage table (`mobius bench`, perception_core/bench_command.py) as a section of
docs/BENCHMARKS.md: FrameProcessor preprocess / inference / postprocess / tracking on the shipped
model, onnxruntime vs torch, 1 vs 2 threads, every frame vs kernel reuse T=3 vs kernel + bottleneck
reuse T=3."""
from __future__ import annotations

import argparse

from perf_common import Section, Settings


def run(settings: Settings) -> Section:
    from perception_core.bench_command import add_arguments, measure

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--frames", "8" if settings.quick else "24", "--repeats", "1" if settings.quick else "3"])
    text = measure(args)
    title, _, body = text.partition("\n")      # measure() starts with its own level-2 heading
    return Section("runtime", title.lstrip("# ").strip(), body.strip() + "\n", data={})
