"""PNG plots of the ablation results (matplotlib, Agg backend; AP in points)."""
from __future__ import annotations

from pathlib import Path

COLORS = {"sigmoid": "tab:blue", "exp": "tab:orange", "log": "tab:green",
          "calibration": "tab:blue", "focal": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ap(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * value


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and AP (higher), by ascending cost."""
    front, best = [], float("-inf")
    for cost, ap in sorted(points, key=lambda p: (p[0], -p[1])):
        if ap > best:
            front.append((cost, ap))
            best = ap
    return front


def plot_tab3(rows: list[dict], path: Path) -> Path:
    """Pixel decoder + decoder GFLOPs vs mask AP per Tab. 3 variant, with the Pareto front."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    points = []
    for row in rows:
        cost = row["flops"]["pixel_decoder"] + row["flops"]["decoder"]
        ap = _ap(row["eval"]["mask_AP"])
        points.append((cost, ap))
        marker = "*" if row["pixel_decoder"] == "Ours" else "o"
        axis.scatter(cost, ap, marker=marker, s=90 if marker == "*" else 45, zorder=3)
        axis.annotate(f"{row['paper_row']}) {row['label']}", (cost, ap), textcoords="offset points",
                      xytext=(5, 4), fontsize=8)
    front = pareto_front([p for p in points if p[1] == p[1]])  # NaN-free
    if len(front) > 1:
        axis.plot(*zip(*front), "k--", linewidth=0.8, label="Pareto front")
        axis.legend(loc="lower right", fontsize=8)
    axis.set_xlabel("pixel decoder + decoder GFLOPs per frame")
    axis.set_ylabel("mask AP (test split)")
    axis.set_title("Tab. 3: pixel decoder variants")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_tab14(rows: list[dict], path: Path) -> Path:
    """Mask AP vs decoder GFLOPs for the calibration and focal models at the same pruning settings."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for variant in ("calibration", "focal"):
        own = sorted((r for r in rows if r["variant"] == variant), key=lambda r: -r["eval"]["decoder_gflops"])
        if not own:
            continue
        xs = [r["eval"]["decoder_gflops"] for r in own]
        ys = [_ap(r["eval"]["mask_AP"]) for r in own]
        axis.plot(xs, ys, "o-", color=COLORS[variant], label=f"{variant} loss")
        for r, x, y in zip(own, xs, ys):
            axis.annotate(r["eval"]["setting"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xlabel("decoder GFLOPs per frame (mean over the test split)")
    axis.set_ylabel("mask AP")
    axis.set_title("Tab. 14: calibration vs focal loss under pruning")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_fig4(rows: list[dict], path: Path) -> Path:
    """Left: mask AP vs decoder GFLOPs per schedule (the unpruned model as a star). Right: mean
    queries entering each decoder layer, one line per setting."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    unpruned = [r for r in rows if r["schedule"] is None]
    for row in unpruned:
        left.scatter(row["decoder_gflops"], _ap(row["mask_AP"]), marker="*", s=140, color="k", zorder=4,
                     label="no pruning")
        right.plot(row["kept_per_layer_mean"], "k.-", linewidth=2, label="no pruning")
    for schedule in ("sigmoid", "exp", "log"):
        own = sorted((r for r in rows if r["schedule"] == schedule), key=lambda r: r["decoder_gflops"])
        if not own:
            continue
        left.plot([r["decoder_gflops"] for r in own], [_ap(r["mask_AP"]) for r in own], "o-",
                  color=COLORS[schedule], label=schedule)
        for index, r in enumerate(own):
            right.plot(r["kept_per_layer_mean"], ".-", color=COLORS[schedule], alpha=0.35 + 0.6 * index / max(len(own) - 1, 1),
                       label=schedule if index == len(own) - 1 else None)
    left.set_xlabel("decoder GFLOPs per frame (mean over the test split)")
    left.set_ylabel("mask AP")
    left.set_title("Fig. 4: pruning schedules over a sweep of bounds")
    from matplotlib.ticker import MaxNLocator

    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("decoder layer")
    right.set_ylabel("queries entering the layer (mean)")
    right.set_title("kept queries (darker = higher bounds)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path
