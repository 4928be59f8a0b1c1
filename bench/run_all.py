"""`make bench`: component FLOPs of MOBIUS vs the GLEE baselines (paper Fig. 2 / Tab. 10 / Tab. 12)
and ONNX latency of the deployment model; writes docs/BENCHMARKS.md and docs/flops_components.png.

Numbers are printed and written; nothing here asserts a speed (see README: targets live here, not
in unit tests). Latency is the median of repeated runs on this machine and only comparable within
one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perception_core.model.build import build_from_name  # noqa: E402
from perception_core.model.flops import count_flops, format_table  # noqa: E402

MODELS = ["mobius_mini_m", "glee_maskdino_mini_m", "glee_rtdetr_mini_m"]


def flops_tables(sizes: list[int]) -> tuple[str, dict]:
    sections, reports = [], {}
    for size in sizes:
        torch.manual_seed(0)
        per_size = {name: count_flops(build_from_name(name), size) for name in MODELS}
        reports[size] = per_size
        sections.append(f"### {size}x{size}\n\n{format_table(per_size)}\n")
    return "\n".join(sections), reports


def plot(reports: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(reports)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    parts = [("vision encoder", lambda r: r.vision_encoder),
             ("pixel decoder w/o fusion", lambda r: r.pixel_decoder_without_fusion),
             ("modality fusion", lambda r: r.modality_fusion),
             ("decoder (pruned)", lambda r: r.decoder_pruned)]
    for axis, size in zip(axes[0], sizes):
        bottom = np.zeros(len(MODELS))
        for label, get in parts:
            values = np.array([get(reports[size][m]) for m in MODELS])
            axis.bar(MODELS, values, bottom=bottom, label=label)
            bottom += values
        axis.set_title(f"GFLOPs per component at {size}px (80 prompts)")
        axis.tick_params(axis="x", labelrotation=15)
        axis.set_ylabel("GFLOPs")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def onnx_latency(config: str, size: int, threads: int, repeats: int) -> dict:
    from perception_core.runtime.export import example_inputs, export_onnx
    from perception_core.runtime.io_names import INPUT_NAMES
    from perception_core.runtime.onnx_engine import OnnxEngine

    torch.manual_seed(0)
    model = build_from_name(config)
    with tempfile.TemporaryDirectory() as tmp:
        engine = OnnxEngine(export_onnx(model, Path(tmp) / "m.onnx", size), threads=threads)
        feed = {n: a.numpy() for n, a in zip(INPUT_NAMES, example_inputs(model, size, prompts=8, tracks=0))}
        for _ in range(3):
            engine(feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine(feed)
            times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 800])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables, reports = flops_tables(args.sizes)
    plot(reports, out / "flops_components.png")
    latency = {t: onnx_latency("mobius_nano", 384, t, args.repeats) for t in (1, 2)}
    ratios = [f"- {size}px: pixel decoder {reports[size]['mobius_mini_m'].pixel_decoder / reports[size]['glee_maskdino_mini_m'].pixel_decoder:.1%}"
              f", decoder with pruning {reports[size]['mobius_mini_m'].decoder_pruned / reports[size]['glee_maskdino_mini_m'].decoder_pruned:.1%}"
              f" of glee_maskdino_mini_m" for size in args.sizes]
    lines = ["# Benchmarks", "", "Written by `make bench` (bench/run_all.py). Random weights: FLOPs do not depend on",
             "them; pruned decoder FLOPs use the configured min_kept (a trained model on real frames keeps",
             "a scene-dependent number; see kept-per-layer column).", "", "## FLOPs per component", "", tables,
             "MOBIUS / MaskDINO-style ratios:", *ratios, "", "![components](flops_components.png)", "",
             "## ONNX latency, mobius_nano, 384x384, 8 prompts, onnxruntime CPU", "",
             "| threads | median ms | p90 ms |", "|---|---|---|",
             *[f"| {t} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} |" for t, v in latency.items()], ""]
    (out / "BENCHMARKS.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
