"""FLOPs per component (paper Fig. 2 / Tab. 10 / Tab. 12 layout) of mobius_mini_m vs the GLEE
baselines at 384 and 800 px, 80 prompts x 8 tokens, random weights (FLOPs depend only on shapes,
except which queries pruning keeps: random weights keep the configured min_kept; the pruning
section measures kept counts on real frames). Goal: pixel decoder <= 45% of the MaskDINO-style one.
"""
from __future__ import annotations

import os

import numpy as np

from perf_common import Section, Settings, build_random, goal, machine_line

MODELS = ("mobius_mini_m", "glee_maskdino_mini_m", "glee_rtdetr_mini_m")
PARTS = (("vision encoder", lambda r: r.vision_encoder),
         ("pixel decoder w/o fusion", lambda r: r.pixel_decoder_without_fusion),
         ("modality fusion", lambda r: r.modality_fusion),
         ("decoder (pruned)", lambda r: r.decoder_pruned))


def flops_reports(sizes) -> dict[int, dict]:
    """{size: {model: FlopsReport}}."""
    from perception_core.model.flops import count_flops

    return {size: {name: count_flops(build_random(name), size) for name in MODELS} for size in sizes}


def plot(reports: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(reports)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        bottom = np.zeros(len(MODELS))
        for label, get in PARTS:
            values = np.array([get(reports[size][m]) for m in MODELS])
            axis.bar(MODELS, values, bottom=bottom, label=label)
            bottom += values
        axis.set_title(f"GFLOPs per component at {size}px (80 prompts)")
        axis.tick_params(axis="x", labelrotation=15)
        axis.set_ylabel("GFLOPs")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(settings: Settings) -> Section:
    load = os.getloadavg()
    sizes = [384] if settings.quick else [384, 800]
    reports = flops_reports(sizes)
    settings.docs.mkdir(parents=True, exist_ok=True)
    plot(reports, settings.docs / "flops_components.png")
    return Section("flops", "FLOPs per component", render(reports, load), ["flops_components.png"],
                   {size: {m: r.to_dict() for m, r in per.items()} for size, per in reports.items()})


def render(reports: dict, load) -> str:
    from perception_core.model.flops import format_table

    lines = [f"Random weights (FLOPs do not depend on them); pruned decoder columns use the configured min_kept "
             f"(see the next sections for kept counts on real frames). Counting machine: {machine_line(load)}.", ""]
    for size, per in reports.items():
        lines += [f"### {size}x{size}", "", format_table(per), ""]
    lines.append("MOBIUS / MaskDINO-style ratios:")
    for size, per in reports.items():
        ours, base = per["mobius_mini_m"], per["glee_maskdino_mini_m"]
        pixel = ours.pixel_decoder / base.pixel_decoder
        lines.append(f"- {size}px: pixel decoder {pixel:.1%} (goal <= 45%: {goal(pixel <= 0.45)}), decoder with "
                     f"pruning {ours.decoder_pruned / base.decoder_pruned:.1%} of glee_maskdino_mini_m "
                     f"(random weights: min_kept queries)")
    lines += ["", "![components](flops_components.png)", ""]
    return "\n".join(lines)
