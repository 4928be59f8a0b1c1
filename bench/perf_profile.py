"""Where the default model's time goes on onnxruntime, and which cheap fixes pay.

- `profile_ops`: onnxruntime's own profiler (SessionOptions.enable_profiling) over a few runs; its
  JSON trace is aggregated by operator type (`aggregate_profile`: per-run ms, share, node count) and
  by node (the heaviest single nodes with their input shapes).
- `option_sweep`: session options timed in round-robin against the runtime's settings
  (runtime/onnx_engine.session_options): intra-op spinning, graph optimization level, parallel
  execution mode; `contention_check`: spinning vs not vs 1 thread with one core kept busy;
  `alternation_check`: the model and its mask graph alternating (kernel reuse) vs in blocks.
- `deform_layout`: the deformable-attention sampling core of the pixel decoder in two layouts,
  exported alone at the model's shapes: the one the model used before (per-level grid_sample,
  concat along the sample axis, permute, matmul with the weights) and the concat-free one that
  model/deform_attn.deform_sample now uses (per-level weighted sum directly in grid_sample's
  (B*heads, C_h, Q, P) layout). Same result, different memory traffic.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from perf_common import BLOCK, onnx_session, time_interleaved

# Operator types that carry the FLOPs count_flops counts (matmuls and convolutions).
GEMM_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "MatMul", "FusedMatMul", "Gemm", "MatMulInteger",
                      "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul",
                      "MatMulIntegerToFloat", "QGemm", "Attention", "MultiHeadAttention"})


@dataclass(frozen=True)
class OpStat:
    op_type: str
    ms_per_run: float      # summed node time of this type, divided by the number of runs
    share: float           # of all node time
    nodes: int             # nodes of this type executed per run


def aggregate_profile(events: list[dict], runs: int) -> list[OpStat]:
    """onnxruntime profile events -> per-op-type time per run, heaviest first.

    Only node kernel events count ({"cat": "Node", "name": "<node>_kernel_time", "dur": us,
    "args": {"op_name": ...}}); session and fence events are ignored."""
    if runs < 1:
        raise ValueError(f"runs={runs} must be >= 1")
    total_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        total_us[op] += float(event.get("dur", 0))
        count[op] += 1
    grand = sum(total_us.values()) or 1.0
    stats = [OpStat(op, us / runs / 1000.0, us / grand, round(count[op] / runs)) for op, us in total_us.items()]
    return sorted(stats, key=lambda s: s.ms_per_run, reverse=True)


def heaviest_nodes(events: list[dict], runs: int, top: int = 8) -> list[tuple[str, str, float, str]]:
    """(node name, op type, ms per run, input shapes) of the `top` slowest nodes."""
    total: dict[str, float] = defaultdict(float)
    info: dict[str, tuple[str, str]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        total[name] += float(event.get("dur", 0))
        args = event.get("args", {})
        shapes = ["x".join(map(str, next(iter(s.values())))) for s in args.get("input_type_shape", [])]
        info[name] = (args.get("op_name", "?"), ", ".join(shapes))
    ranked = sorted(total.items(), key=lambda item: item[1], reverse=True)[:top]
    return [(name[:-len("_kernel_time")], info[name][0], us / runs / 1000.0, info[name][1]) for name, us in ranked]


def last_runs(events: list[dict], runs: int) -> list[dict]:
    """The node events of the last `runs` runs: each run is a Session event named "model_run"
    spanning [ts, ts + dur]; earlier runs (warm-up) and session set-up are dropped."""
    windows = sorted((int(e["ts"]), int(e["ts"]) + int(e["dur"])) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(windows) < runs:
        raise ValueError(f"the profile holds {len(windows)} runs, fewer than the {runs} asked for")
    windows = windows[len(windows) - runs:]
    return [e for e in events if e.get("cat") == "Node"
            and any(start <= int(e.get("ts", -1)) <= stop for start, stop in windows)]


def profile_ops(path: str | Path, feed: dict, threads: int, runs: int, folder: Path,
                warmup: int = 2) -> tuple[list[OpStat], list]:
    """Profiles `warmup` + `runs` runs of the graph at `path`; aggregates the last `runs`."""
    folder.mkdir(parents=True, exist_ok=True)
    session = onnx_session(path, threads, profile_prefix=str(folder / "ort_profile"))
    for _ in range(warmup + runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = last_runs(json.loads(trace.read_text()), runs)
    trace.unlink()
    return aggregate_profile(events, runs), heaviest_nodes(events, runs)


SWEEP = {  # name -> onnx_session keyword arguments on top of the runtime's options (threads added by the caller)
    "runtime (ALL, inter 1, sequential, spin in runs, stop after)": {},
    "keep spinning after runs (onnxruntime default)": {"stop_spinning": False},
    "no intra-op spinning": {"spinning": False},
    "optimization EXTENDED": {"level": "extended"},
    "optimization BASIC": {"level": "basic"},
    "parallel execution, inter 2": {"parallel": True, "inter_threads": 2},
}


def option_sweep(path: str | Path, feed: dict, threads: int, repeats: int, warmup: int) -> dict[str, float]:
    """Median ms of each SWEEP variant, timed in round-robin."""
    sessions = {name: onnx_session(path, threads, **kwargs) for name, kwargs in SWEEP.items()}
    timings = time_interleaved({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()},
                               repeats, warmup, BLOCK)
    return {name: t.median for name, t in timings.items()}


def contention_check(path: str | Path, feed: dict, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median ms of {2 threads spinning, 2 threads not spinning, 1 thread} on the machine as it is and
    with one core kept busy by a spinning child process (another node on the robot): whether to turn
    spinning off or use fewer threads when the cores are shared."""
    import subprocess
    import sys

    sessions = {"2 threads, spinning": onnx_session(path, 2, spinning=True),
                "2 threads, no spinning": onnx_session(path, 2, spinning=False),
                "1 thread": onnx_session(path, 1)}
    calls = {name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}
    result = {"as is": {n: t.median for n, t in time_interleaved(calls, repeats, warmup, BLOCK).items()}}
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        result["one core busy"] = {n: t.median for n, t in time_interleaved(calls, repeats, warmup, BLOCK).items()}
    finally:
        burner.terminate()
        burner.wait(timeout=10)
    return result


def alternation_check(model_path: str | Path, mask_path: str | Path, feed: dict, mask_feed: dict, threads: int,
                      repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """The model and its kernel-reuse mask graph, each its own session, as kernel reuse runs them
    (alternating call by call) and each in blocks: median ms per graph, with the runtime's options,
    with onnxruntime's default (workers keep spinning after a run) and without spinning."""
    variants = {"runtime": {}, "keep spinning after runs": {"stop_spinning": False}, "no spinning": {"spinning": False}}
    result = {}
    for label, kwargs in variants.items():
        full, mask = onnx_session(model_path, threads, **kwargs), onnx_session(mask_path, threads, **kwargs)
        calls = {"model": lambda: full.run(None, feed), "mask graph": lambda: mask.run(None, mask_feed)}
        for mode, block in (("alternating", 1), ("in blocks", BLOCK)):
            timings = time_interleaved(calls, repeats, warmup, block)
            result[f"{label}, {mode}"] = {name: t.median for name, t in timings.items()}
    return result


def helps(baseline_ms: float, variant_ms: float, margin: float = 0.05) -> bool:
    """A variant 'measurably helps' when it is at least `margin` (5%) faster than the baseline."""
    return variant_ms <= baseline_ms * (1.0 - margin)


# ----------------------------------------------------------------------------- deformable layout

def _layouts():
    import torch
    import torch.nn.functional as F

    class Current(torch.nn.Module):
        """The model's sampling and weighting before deform_attn.deform_sample (concat + permute + matmul).
        Inputs: L values (BH, C, H_l, W_l), L grids (BH, Q, P, 2) in [-1, 1], weights (BH, Q, L*P, 1)."""

        def forward(self, *tensors):
            levels = (len(tensors) - 1) // 2
            values, grids, weights = tensors[:levels], tensors[levels:2 * levels], tensors[-1]
            sampled = [F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
                       for v, g in zip(values, grids)]
            stacked = torch.cat(sampled, dim=-1).permute(0, 2, 1, 3)        # (BH, Q, C, L*P)
            return torch.matmul(stacked, weights).squeeze(-1)              # (BH, Q, C)

    class ConcatFree(torch.nn.Module):
        """Weighted sum per level in grid_sample's own layout; one transpose of the (BH, C, Q) result."""

        def forward(self, *tensors):
            levels = (len(tensors) - 1) // 2
            values, grids, weights = tensors[:levels], tensors[levels:2 * levels], tensors[-1]
            points = grids[0].shape[2]
            w = weights.squeeze(-1).unsqueeze(1)                           # (BH, Q, L*P, 1) -> (BH, 1, Q, L*P)
            total = None
            for level, (v, g) in enumerate(zip(values, grids)):
                sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
                part = (sampled * w[..., level * points:(level + 1) * points]).sum(-1)   # (BH, C, Q)
                total = part if total is None else total + part
            return total.transpose(1, 2)                                   # (BH, Q, C)

    return Current(), ConcatFree()


def deform_layout(size: int, dim: int, heads: int, points: int, threads: int, repeats: int,
                  warmup: int) -> dict:
    """Both layouts at the bottleneck pixel decoder's multi-scale cross-attention shapes (queries =
    stride-16 tokens, levels S3..S6): median ms each and the max abs difference of their outputs."""
    import torch

    shapes = [(size // s, size // s) for s in (8, 16, 32, 64)]
    queries, head_dim, batch_heads = (size // 16) ** 2, dim // heads, heads
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(batch_heads, head_dim, h, w, generator=generator) for h, w in shapes]
    grids = [torch.rand(batch_heads, queries, points, 2, generator=generator) * 2 - 1 for _ in shapes]
    weights = torch.rand(batch_heads, queries, len(shapes) * points, 1, generator=generator).softmax(2)
    current, concat_free = _layouts()
    inputs = (*values, *grids, weights)
    with torch.no_grad():
        difference = float((current(*inputs) - concat_free(*inputs)).abs().max())
    names = [f"v{i}" for i in range(len(shapes))] + [f"g{i}" for i in range(len(shapes))] + ["w"]
    feed = {n: t.numpy() for n, t in zip(names, inputs)}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for label, module in (("concat + permute + matmul (before)", current),
                              ("concat-free weighted sum (the model's)", concat_free)):
            path = Path(tmp) / f"{len(sessions)}.onnx"
            torch.onnx.export(module, inputs, str(path), dynamo=True, opset_version=18, input_names=names,
                              output_names=["out"], verbose=False)
            sessions[label] = onnx_session(path, threads)
        timings = time_interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, repeats, warmup,
                                   BLOCK)
    return {"ms": {k: t.median for k, t in timings.items()}, "max_abs_difference": difference,
            "shape": f"{batch_heads} x {head_dim} channels, {queries} queries, {len(shapes)} levels "
                     f"{shapes}, {points} points"}


# ----------------------------------------------------------------------------- sampler A/B

def sampler_ab(model, feed: dict, threads: int, repeats: int, warmup: int, cache: Path) -> dict:
    """The default model as exported (pixel-decoder deformable attention as DeformConv, the default
    `mobius export --sampler deform_conv`) against the same weights exported with
    `--sampler grid_sample`, round-robin: median ms each, node counts, largest output difference."""
    import onnx
    from ab_onnx import output_differences
    from perf_common import code_hash

    from perception_core.ablation.data import file_digest
    from perception_core.model.build import build_from_name, load_weights
    from perception_core.runtime.export import export_onnx

    digest = code_hash(file_digest(Path(model.weights)))
    portable = Path(cache) / "onnx" / f"{model.preset}_grid_sample_{digest}.onnx"
    if not portable.is_file():
        print(f"[bench] exporting {model.weights} with --sampler grid_sample ...", flush=True)
        size = int(feed["images"].shape[2])
        tmp = portable.with_suffix(".partial.onnx")
        export_onnx(load_weights(build_from_name(model.preset), model.weights), tmp, size, "grid_sample")
        tmp.replace(portable)
    paths = {"grid_sample": portable, "deform_conv": Path(model.onnx)}
    sessions = {name: onnx_session(path, threads) for name, path in paths.items()}
    outputs = {name: session.run(None, feed) for name, session in sessions.items()}
    names = [output.name for output in sessions["deform_conv"].get_outputs()]
    differences = output_differences(outputs["grid_sample"], outputs["deform_conv"], names)
    # outputs of different shapes (a query kept by one graph only) are left out, as before
    difference = max(v for v in differences.values() if not isinstance(v, str))
    timings = time_interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, repeats, warmup,
                               BLOCK)
    ops = {name: [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
           for name, path in paths.items()}
    return {"ms": {k: t.median for k, t in timings.items()}, "max_abs_difference": difference,
            "nodes": {k: len(v) for k, v in ops.items()},
            "sampling_nodes": {k: {op: v.count(op) for op in ("GridSample", "DeformConv")} for k, v in ops.items()}}


def gemm_ms(stats: list[OpStat]) -> float:
    """Per-run node time of the operator types that carry counted FLOPs (GEMM_OPS)."""
    return sum(s.ms_per_run for s in stats if s.op_type in GEMM_OPS)


def op_table(stats: list[OpStat], top: int = 12) -> list[str]:
    lines = ["| op type | ms per run | share | nodes | carries counted FLOPs |", "|---|---|---|---|---|"]
    for stat in stats[:top]:
        lines.append(f"| {stat.op_type} | {stat.ms_per_run:.2f} | {stat.share:.1%} | {stat.nodes} "
                     f"| {'yes' if stat.op_type in GEMM_OPS else 'no'} |")
    rest = stats[top:]
    if rest:
        lines.append(f"| ({len(rest)} other types) | {sum(s.ms_per_run for s in rest):.2f} "
                     f"| {sum(s.share for s in rest):.1%} | {sum(s.nodes for s in rest)} | |")
    return lines
