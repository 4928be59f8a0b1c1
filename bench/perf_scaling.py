"""Scaling: latency vs input size (256-800 px) and vs the number of prompts (1-80) for mobius_mini_m
vs glee_maskdino_mini_m (torch on the CPU: one graph for every size, where ONNX would need an export
per size), and how the pixel decoder's FLOPs (count_flops) grow with the input size.

The bottleneck pixel decoder attends over the stride-16 tokens only, the MaskDINO-style one over all
four scales (stride 8 dominates): both grow ~ quadratically in the side, but with a 4-5x smaller
constant for MOBIUS; `growth_exponent` fits FLOPs ~ side^k on a log-log scale to check that.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from perf_common import Section, Settings, build_random, machine_line, time_interleaved

MODELS = ("mobius_mini_m", "glee_maskdino_mini_m")
TOKENS = 8


def growth_exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """k of the least-squares fit log(value) = k * log(size) + c; ValueError for < 2 points."""
    if len(sizes) < 2 or len(sizes) != len(values) or min(sizes) <= 0 or min(values) <= 0:
        raise ValueError(f"need >= 2 positive (size, value) pairs, got {list(sizes)} and {list(values)}")
    slope, _ = np.polyfit(np.log(sizes), np.log(values), 1)
    return float(slope)


def _inputs(model, size: int, prompts: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    dim = model.config.text.dim
    return (torch.randn(1, 3, size, size, generator=generator), torch.randn(prompts, TOKENS, dim, generator=generator),
            torch.ones(prompts, TOKENS, dtype=torch.bool), torch.randn(prompts, dim, generator=generator))


def _call(model, inputs):
    import torch

    def forward():
        with torch.inference_mode():
            model(*inputs)
    return forward


def latency_sweep(models: dict, sizes: Sequence[int], prompts: Sequence[int], fixed_prompts: int,
                  fixed_size: int, repeats: int) -> tuple[dict, dict]:
    """Median ms per model: {size: {model: ms}} at fixed_prompts, {prompts: {model: ms}} at fixed_size."""
    by_size, by_prompts = {}, {}
    for size in sizes:
        calls = {name: _call(model, _inputs(model, size, fixed_prompts)) for name, model in models.items()}
        by_size[size] = {n: t.median for n, t in time_interleaved(calls, repeats, 1).items()}
    for count in prompts:
        calls = {name: _call(model, _inputs(model, fixed_size, count)) for name, model in models.items()}
        by_prompts[count] = {n: t.median for n, t in time_interleaved(calls, repeats, 1).items()}
    return by_size, by_prompts


def pixel_decoder_flops(models: dict, settings: Sequence[tuple[int, int]]) -> dict:
    """{(size, prompts): {model: (pixel decoder GFLOPs, of which modality fusion)}} by count_flops."""
    from perception_core.model.flops import count_flops

    result = {}
    for size, prompts in settings:
        result[size, prompts] = {}
        for name, model in models.items():
            report = count_flops(model, size, prompts, TOKENS, prune=False)
            result[size, prompts][name] = (report.pixel_decoder, report.modality_fusion)
    return result


def plot(data: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    panels = ((data["by_size"], "input side (px)", f"latency, {data['fixed_prompts']} prompts", "ms"),
              (data["by_prompts"], "prompts", f"latency at {data['fixed_size']}px", "ms"),
              ({s: {m: v[0] for m, v in row.items()} for s, row in data["flops"].items()}, "input side (px)",
               f"pixel decoder GFLOPs (count_flops, {data['fixed_prompts']} prompts)", "GFLOPs"))
    for axis, (table, xlabel, title, ylabel) in zip(axes, panels):
        xs = sorted(table)
        for name in MODELS:
            axis.plot(xs, [table[x][name] for x in xs], marker="o", label=name)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"torch CPU, {data['threads']} threads, random weights (medians; shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(settings: Settings) -> Section:
    import torch

    load = os.getloadavg()
    torch.set_num_threads(settings.threads)
    sizes = [256, 384] if settings.quick else [256, 384, 512, 640, 800]
    prompts = [1, 80] if settings.quick else [1, 4, 16, 40, 80]
    models = {name: build_random(name) for name in MODELS}
    repeats = 1 if settings.quick else 3
    by_size, by_prompts = latency_sweep(models, sizes, prompts, 4, 384, repeats)
    counted = pixel_decoder_flops(models, [(size, 4) for size in sizes] + [(384, count) for count in prompts])
    flops = {size: counted[size, 4] for size in sizes}
    prompt_flops = {count: counted[384, count] for count in prompts}
    data = {"by_size": by_size, "by_prompts": by_prompts, "flops": flops, "prompt_flops": prompt_flops,
            "fixed_prompts": 4, "fixed_size": 384,
            "threads": settings.threads, "repeats": repeats}
    settings.docs.mkdir(parents=True, exist_ok=True)
    plot(data, settings.docs / "bench_scaling.png")
    return Section("scaling", "Scaling with input size and prompts", render(data, load), ["bench_scaling.png"], data)


def render(data: dict, load) -> str:
    base, ours = "glee_maskdino_mini_m", "mobius_mini_m"
    sizes = sorted(data["by_size"])
    lines = [f"Conditions: torch CPU, {data['threads']} threads, random weights, configured pruning (mobius keeps "
             f"min_kept), {data['repeats']} interleaved run(s) after 1 warm-up, median; prompts of {TOKENS} tokens; "
             f"{machine_line(load)}.", "",
             f"Latency vs input side ({data['fixed_prompts']} prompts) and pixel decoder GFLOPs (count_flops):", "",
             f"| side | {ours} ms | {base} ms | time ratio | {ours} pix. dec. GFLOPs | {base} pix. dec. GFLOPs "
             f"| FLOPs ratio |", "|---|---|---|---|---|---|---|"]
    for size in sizes:
        t, f = data["by_size"][size], data["flops"][size]
        lines.append(f"| {size} | {t[ours]:.0f} | {t[base]:.0f} | {t[ours] / t[base]:.2f} | {f[ours][0]:.2f} "
                     f"| {f[base][0]:.2f} | {f[ours][0] / f[base][0]:.1%} |")
    lines += ["", f"Latency vs prompts at {data['fixed_size']}px:", "",
              f"| prompts | {ours} ms | {base} ms | time ratio | {ours} pix. dec. GFLOPs (fusion) "
              f"| {base} pix. dec. GFLOPs (fusion) |", "|---|---|---|---|---|---|"]
    for count in sorted(data["by_prompts"]):
        t, f = data["by_prompts"][count], data["prompt_flops"][count]
        lines.append(f"| {count} | {t[ours]:.0f} | {t[base]:.0f} | {t[ours] / t[base]:.2f} "
                     f"| {f[ours][0]:.2f} ({f[ours][1]:.2f}) | {f[base][0]:.2f} ({f[base][1]:.2f}) |")
    growth = {name: growth_exponent(sizes, [data["flops"][s][name][0] for s in sizes]) for name in MODELS}
    latency_growth = {name: growth_exponent(sizes, [data["by_size"][s][name] for s in sizes]) for name in MODELS}
    first, last = sizes[0], sizes[-1]
    lines += ["", f"Growth from {first} to {last} px (fit value ~ side^k): pixel decoder FLOPs k = "
                  f"{growth[ours]:.2f} ({ours}) vs {growth[base]:.2f} ({base}); latency k = "
                  f"{latency_growth[ours]:.2f} vs {latency_growth[base]:.2f}. Pixel decoder FLOPs x"
                  f"{data['flops'][last][ours][0] / data['flops'][first][ours][0]:.1f} ({ours}) vs x"
                  f"{data['flops'][last][base][0] / data['flops'][first][base][0]:.1f} ({base}) for "
                  f"x{(last / first) ** 2:.1f} pixels.", "", "![scaling](bench_scaling.png)", ""]
    return "\n".join(lines)

