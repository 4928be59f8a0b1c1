"""Would a wider default model meet the speed goal and the FLOP/s goal at once?

The shipped mobius_nano runs its matmuls and convolutions at a good rate, but most of its node time
goes to nodes that carry no counted FLOPs (perf_efficiency's profile), so it reaches well under half of
the sgemm peak. Widening the model makes each matmul bigger and raises the fraction, but it also makes
every frame slower. This sweep measures that trade on the same code: mobius_nano with its backbone and
its transformer widened step by step (RANDOM weights, seed 0, the nano's configured pruning; random
weights prune to about min_kept, as the trained model does), exported as the latency section does and
timed in round-robin blocks at 2 threads. Each width is judged on both goals: model-only FPS >= 60 and
achieved FLOP/s >= 50% of the sgemm peak timed in the same run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from perf_common import BLOCK, Settings, cached_onnx, fmt_ms, onnx_session, random_feed, time_interleaved
from perf_efficiency import Efficiency

FPS_GOAL = 60.0
SHARE_GOAL = 0.5
SIZE = 384
PROMPTS = 4
TOKENS = 8
# (label, config overrides of mobius_nano): backbone width first, then the transformer's width
WIDTHS = (
    ("nano (backbone x0.5, 128-d)", ()),
    ("backbone x0.75, 128-d", ("backbone.width_multiplier=0.75",)),
    ("backbone x1.0, 128-d", ("backbone.width_multiplier=1.0",)),
    ("backbone x1.0, 192-d", ("backbone.width_multiplier=1.0", "hidden_dim=192", "pixel_decoder.ffn_dim=768",
                              "decoder.ffn_dim=768")),
    ("backbone x1.0, 256-d", ("backbone.width_multiplier=1.0", "hidden_dim=256", "pixel_decoder.ffn_dim=1024",
                              "decoder.ffn_dim=1024")),
)
QUICK = (0, 4)    # indices of WIDTHS in quick mode


@dataclass(frozen=True)
class WidthRow(Efficiency):
    """One width: perf_efficiency's Efficiency (count_flops at the kept counts the graph returned, its
    median model-only latency, the sgemm peak timed in the same run) with its label and kept counts."""
    label: str = ""
    kept: tuple[int, ...] = ()

    @property
    def fps(self) -> float:
        return 1000.0 / self.latency_ms

    @property
    def meets_both(self) -> bool:
        return self.fps >= FPS_GOAL and self.fraction >= SHARE_GOAL


def measure(settings: Settings, peak_gflops_s: float, widths: Sequence[tuple[str, tuple[str, ...]]] | None = None
            ) -> list[WidthRow]:
    """One row per width: exported once (cached by code hash), timed in round-robin blocks."""
    from perf_common import build_random, model_pruning

    from perception_core.model.flops import count_flops

    if widths is None:
        widths = [WIDTHS[i] for i in QUICK] if settings.quick else list(WIDTHS)
    runs, kept, gflops = {}, {}, {}
    for label, overrides in widths:
        session = onnx_session(cached_onnx("mobius_nano", SIZE, settings.cache, overrides), settings.threads)
        layers = session.get_inputs()[6].shape[0]
        feed = random_feed(session, PROMPTS, TOKENS, prune=model_pruning("mobius_nano", layers))
        kept[label] = tuple(int(k) for k in session.run(["kept_per_layer"], feed)[0])
        gflops[label] = count_flops(build_random("mobius_nano", overrides), SIZE, PROMPTS, TOKENS,
                                    kept=list(kept[label])).total
        runs[label] = lambda s=session, f=feed: s.run(None, f)
    latency = time_interleaved(runs, max(3, settings.repeats // 2), settings.warmup, BLOCK)
    return [WidthRow(gflops[label], latency[label].median, peak_gflops_s, label=label, kept=kept[label])
            for label, _ in widths]


def lines(rows: Sequence[WidthRow], threads: int) -> list[str]:
    """The table, the verdict and the plot link (empty without rows)."""
    if not rows:
        return []
    out = ["", f"### Width: speed goal against FLOP/s goal ({threads} threads)", "",
           "mobius_nano widened step by step, RANDOM weights, the nano's pruning, "
           f"{SIZE}x{SIZE}, {PROMPTS} prompts of {TOKENS} tokens, exported as in the latency section, round-robin "
           "(bench/perf_width.py). A wider model runs bigger matmuls, so it reaches more of the peak, but each frame "
           "takes longer:", "",
           "| model | kept per layer | GFLOPs (count_flops) | median ms | FPS | fraction of peak "
           f"| FPS >= {FPS_GOAL:.0f} and >= {SHARE_GOAL:.0%} of peak |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        out.append(f"| {row.label} | {','.join(map(str, row.kept))} | {row.gflops:.2f} | {fmt_ms(row.latency_ms)} "
                   f"| {row.fps:.1f} | {row.fraction:.1%} | {'yes' if row.meets_both else 'no'} |")
    both = [row for row in rows if row.meets_both]
    if both:
        out += ["", "Widths that meet both goals: " + ", ".join(row.label for row in both) +
                ". The default model could be retrained at such a width."]
    else:
        out += ["", "No width meets both goals in this run. " + " ".join(shortfall(rows))]
    out += ["", "![width](efficiency_width.png)"]
    return out


def shortfall(rows: Sequence[WidthRow]) -> list[str]:
    """Why no width meets both goals: the best fraction among the fast widths, the speed of the first
    width at the fraction goal, or that none reaches it."""
    fast = [row for row in rows if row.fps >= FPS_GOAL]
    dense = [row for row in rows if row.fraction >= SHARE_GOAL]
    parts = []
    if fast:
        best = max(fast, key=lambda row: row.fraction)
        parts.append(f"Of the widths at >= {FPS_GOAL:.0f} FPS, the most efficient ({best.label}) reaches "
                     f"{best.fraction:.1%} of peak.")
    if dense:
        first = min(dense, key=lambda row: row.latency_ms)
        parts.append(f"The fastest width at >= {SHARE_GOAL:.0%} of peak ({first.label}) runs at {first.fps:.1f} FPS: "
                     "retraining the default model that wide would trade the speed goal for the FLOP/s goal.")
    else:
        parts.append(f"No width reaches {SHARE_GOAL:.0%} of peak.")
    return parts


def plot(rows: Sequence[WidthRow], path) -> None:
    """Fraction of peak against latency, one point per width, the region meeting both goals shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5))
    goal_ms = 1000.0 / FPS_GOAL
    axis.axvline(goal_ms, color="tab:green", linestyle="--", label=f"{FPS_GOAL:.0f} FPS")
    axis.axhline(100 * SHARE_GOAL, color="tab:red", linestyle="--", label=f"{SHARE_GOAL:.0%} of sgemm peak")
    xs, ys = [row.latency_ms for row in rows], [100 * row.fraction for row in rows]
    axis.plot(xs, ys, marker="o", color="tab:blue")
    for i, (row, x, y) in enumerate(zip(rows, xs, ys)):    # labels alternate below and above the line
        axis.annotate(f"{row.label}, {row.gflops:.2f} GFLOPs", (x, y), textcoords="offset points",
                      xytext=(8, -12) if i % 2 == 0 else (-8, 8), ha="left" if i % 2 == 0 else "right", fontsize=7)
    axis.fill_between([0, goal_ms], 100 * SHARE_GOAL, 100, color="tab:green", alpha=0.15,
                      label="both goals met")
    axis.set_xlim(0, max(xs + [goal_ms]) * 1.25)
    axis.set_ylim(0, max(ys + [100 * SHARE_GOAL]) * 1.2)
    axis.set_xlabel("model-only median latency (ms)")
    axis.set_ylabel("achieved FLOP/s, % of sgemm peak")
    axis.set_title("mobius_nano widened (random weights, onnxruntime)")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
