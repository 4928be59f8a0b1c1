"""Achieved FLOP/s of the default model vs the machine's measured sgemm peak (goal >= 50%), where the
rest goes (onnxruntime profile by operator type) and which cheap fixes pay (perf_profile.py).

Peak: the faster of torch.matmul and an onnxruntime MatMul session on two N x N float32 matrices
(N = 2048, 1024 in quick mode), median of repeats, 2 N^3 FLOPs per product, at 1 and at 2 threads.
Both are measured because neither library reaches the machine's limit everywhere: on an AVX-512
EPYC host this torch build ran 2048^2 sgemm at 200 GFLOP/s on 2 threads and onnxruntime's MLAS at
415, so a torch-only peak put models "above 100% of peak". Achieved: count_flops of the model on this input
(matmuls, convolutions and grid_sample taps; elementwise work is not counted, as in fvcore) divided
by the model-only median latency at the same thread count, pruning as measured on the frame.
The same ratio is then taken for the paper-scale mobius_mini_m (random weights, 4 and 80 prompts),
whose larger matmuls show how much of the default model's shortfall is its small size.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

import numpy as np

from perf_common import (BLOCK, Section, Settings, fmt_ms, goal, machine_line, model_pruning, onnx_session,
                         time_interleaved)

SIZE = 384
PAPER_PRESET = "mobius_mini_m"      # the paper's Tab. 1 row d at its mobile input size
PAPER_PROMPTS = (4, 80)             # as the default-model row; the 80 COCO categories of Tab. 1
TOKENS = 8


@dataclass(frozen=True)
class Efficiency:
    gflops: float            # counted work of one inference
    latency_ms: float        # median latency of one inference
    peak_gflops_s: float     # measured sgemm peak at the same thread count

    @property
    def achieved_gflops_s(self) -> float:
        return self.gflops / (self.latency_ms / 1000.0)

    @property
    def fraction(self) -> float:
        return self.achieved_gflops_s / self.peak_gflops_s


def flops_fraction(gflops: float, latency_ms: float, peak_gflops_s: float) -> Efficiency:
    """Achieved GFLOP/s and its fraction of the peak; ValueError for non-positive inputs."""
    if gflops <= 0 or latency_ms <= 0 or peak_gflops_s <= 0:
        raise ValueError(f"gflops={gflops}, latency_ms={latency_ms} and peak_gflops_s={peak_gflops_s} "
                         f"must all be > 0")
    return Efficiency(gflops, latency_ms, peak_gflops_s)


SGEMM_SOURCES = ("torch.matmul", "onnxruntime MatMul")


def sgemm_rates(threads: int, n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of each of SGEMM_SOURCES on n x n float32 at `threads` intra-op threads (median of repeats);
    the peak is the larger. Each source is timed in its own block, onnxruntime first: torch's OpenMP
    workers spin-wait after every call, and interleaved with torch calls onnxruntime's MatMul measured
    341 instead of 416 GFLOP/s on 2 threads (an 18% low peak, which overstated every fraction of it)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
        out = torch.empty(n, n)
        session, feed = _matmul_session(n, threads), {"a": a.numpy(), "b": b.numpy()}
        timings = time_interleaved({SGEMM_SOURCES[1]: lambda: session.run(None, feed)}, repeats, 2)
        timings.update(time_interleaved({SGEMM_SOURCES[0]: lambda: torch.matmul(a, b, out=out)}, repeats, 2))
    finally:
        torch.set_num_threads(previous)
    return {name: 2.0 * n ** 3 / (timings[name].median / 1000.0) / 1e9 for name in SGEMM_SOURCES}


def _matmul_session(n: int, threads: int):
    """A one-node onnxruntime graph y = a @ b (n x n float32) with the runtime's session options."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from perception_core.runtime.onnx_engine import session_options

    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in ("a", "b", "y")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "sgemm", values[:2], values[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                providers=["CPUExecutionProvider"])


def model_feed(onnx_path, frame: np.ndarray, prompts: list[str] | None = None) -> dict:
    """One letterboxed frame, `prompts` (default: the default prompts) and the configured pruning."""
    from perception_core import assets
    from perception_core.runtime.preprocess import preprocess
    from perception_core.runtime.prompts import encode_prompts

    session = onnx_session(onnx_path, 1)
    inputs = session.get_inputs()
    _, text = encode_prompts(list(assets.DEFAULT_PROMPTS) if prompts is None else prompts)
    image, _ = preprocess(frame, inputs[0].shape[2])
    thresholds, min_kept = model_pruning(assets.PRESET, inputs[6].shape[0])
    return {"images": image, **text, "track_queries": np.zeros((1, 0, inputs[4].shape[2]), np.float32),
            "track_boxes": np.zeros((1, 0, 4), np.float32), "prune_thresholds": thresholds,
            "prune_min_kept": min_kept}


def model_gflops(model, feed: dict, kept: list[int]) -> float:
    """count_flops of the default model on this input size and prompt set at the measured kept counts."""
    from perception_core.model.build import build_from_name, load_weights
    from perception_core.model.flops import count_flops

    torch_model = build_from_name(model.preset)
    if model.weights.is_file():
        load_weights(torch_model, model.weights)
    prompts, tokens = feed["text_tokens"].shape[:2]
    return count_flops(torch_model, feed["images"].shape[2], prompts, tokens, kept=kept).total


def paper_scale(settings: Settings, peak_gflops_s: float) -> dict:
    """The same measurement on the paper-scale PAPER_PRESET (random weights, configured pruning, which
    random weights meet at min_kept), exported as `perf_latency` does: achieved GFLOP/s per prompt
    count and the matmul/convolution share of its profiled node time."""
    import perf_profile
    from perf_common import build_random, cached_onnx, random_feed

    from perception_core.model.flops import count_flops

    path = cached_onnx(PAPER_PRESET, SIZE, settings.cache)
    session = onnx_session(path, settings.threads)
    layers = session.get_inputs()[6].shape[0]
    feeds = {p: random_feed(session, p, TOKENS, prune=model_pruning(PAPER_PRESET, layers)) for p in PAPER_PROMPTS}
    latency = time_interleaved({p: (lambda f=f: session.run(None, f)) for p, f in feeds.items()},
                               max(3, settings.repeats // 2), settings.warmup, BLOCK)
    model = build_random(PAPER_PRESET)
    rows = {}
    for prompts, feed in feeds.items():
        kept = [int(k) for k in session.run(["kept_per_layer"], feed)[0]]
        gflops = count_flops(model, SIZE, prompts, TOKENS, kept=kept).total
        stats, _ = perf_profile.profile_ops(path, feed, settings.threads, 2 if settings.quick else 5,
                                            settings.cache / "profiles")
        rows[prompts] = {"efficiency": flops_fraction(gflops, latency[prompts].median, peak_gflops_s),
                         "gemm_share": perf_profile.gemm_ms(stats) / sum(s.ms_per_run for s in stats), "kept": kept}
    return rows


def kernel_reuse_sessions(onnx_path, feed: dict, settings: Settings) -> dict:
    """perf_profile.alternation_check with 3 of the frame's refined queries as the reused kernels."""
    import perf_profile
    from perception_core.runtime.io_names import MASK_INPUT_NAMES, mask_graph_path

    query_embed = onnx_session(onnx_path, 1).run(["query_embed"], feed)[0][:, :3]
    mask_feed = {name: feed[name] for name in MASK_INPUT_NAMES if name != "query_embed"}
    mask_feed["query_embed"] = np.ascontiguousarray(query_embed)
    return perf_profile.alternation_check(onnx_path, mask_graph_path(onnx_path), feed, mask_feed, settings.threads,
                                          settings.repeats, settings.warmup)


def run(settings: Settings) -> Section:
    import perf_profile
    import perf_streams
    import perf_width
    from perf_common import clip_frames
    from perf_latency import default_model

    load = os.getloadavg()
    frames, _ = clip_frames(4)
    model = default_model(settings, frames[0])
    feed = model_feed(model.onnx, frames[2])
    n = 1024 if settings.quick else 2048
    rates = {t: sgemm_rates(t, n, settings.repeats) for t in (1, 2)}
    peaks = {t: max(r.values()) for t, r in rates.items()}
    sessions = {t: onnx_session(model.onnx, t) for t in (1, 2)}
    kept = [int(k) for k in sessions[1].run(["kept_per_layer"], feed)[0]]
    latency = time_interleaved({t: (lambda s=s: s.run(None, feed)) for t, s in sessions.items()},
                               settings.repeats, settings.warmup, BLOCK)
    gflops = model_gflops(model, feed, kept)
    efficiency = {t: flops_fraction(gflops, latency[t].median, peaks[t]) for t in (1, 2)}
    stream_frames, stream_rounds = (8, 2) if settings.quick else (40, 5)
    streams = perf_streams.measure(model.onnx, feed, stream_frames, stream_rounds, settings.warmup)
    spread = perf_streams.process_spread(model.onnx, feed, settings.threads, 2 if settings.quick else 5,
                                         stream_frames, settings.cache / "streams")
    stats, nodes = perf_profile.profile_ops(model.onnx, feed, settings.threads, 3 if settings.quick else 10,
                                            settings.cache / "profiles")
    sweep = perf_profile.option_sweep(model.onnx, feed, settings.threads, settings.repeats, settings.warmup)
    contention = perf_profile.contention_check(model.onnx, feed, settings.repeats, settings.warmup)
    alternating = kernel_reuse_sessions(model.onnx, feed, settings)
    from perception_core.config import load_model_config

    cfg = load_model_config(model.preset)
    layout = perf_profile.deform_layout(SIZE, cfg.hidden_dim, cfg.pixel_decoder.heads, cfg.pixel_decoder.points,
                                        settings.threads, settings.repeats, settings.warmup)
    sampler = perf_profile.sampler_ab(model, feed, settings.threads, settings.repeats, settings.warmup,
                                      settings.cache)
    paper = paper_scale(settings, peaks[settings.threads])
    widths = perf_width.measure(settings, peaks[settings.threads])
    settings.docs.mkdir(parents=True, exist_ok=True)
    perf_width.plot(widths, settings.docs / "efficiency_width.png")
    data = {"peaks": peaks, "sgemm_rates": rates, "efficiency": efficiency, "stats": stats, "nodes": nodes,
            "sweep": sweep, "layout": layout, "sampler": sampler, "contention": contention, "alternation": alternating,
            "kept": kept, "n": n, "trained": model.trained, "paper": paper, "streams": streams,
            "stream_frames": (stream_frames, stream_rounds), "stream_spread": spread, "widths": widths}
    return Section("efficiency", "Achieved FLOP/s, profile and fixes", render(data, settings, load),
                   ["efficiency_width.png"], data)


def render(data: dict, settings: Settings, load) -> str:
    import perf_profile
    import perf_streams
    import perf_width

    eff, peaks, stats = data["efficiency"], data["peaks"], data["stats"]
    gemm_ms = perf_profile.gemm_ms(stats)
    total_ms = sum(s.ms_per_run for s in stats)
    threads = settings.threads
    spread = data.get("stream_spread")
    # the single stream is judged by its median over fresh processes where they were timed (perf_streams)
    judged = (flops_fraction(eff[threads].gflops, statistics.median(spread), peaks[threads]).fraction if spread
              else eff[threads].fraction)
    model = "the shipped mobius_nano" if data["trained"] else "mobius_nano with RANDOM weights (no shipped model)"
    lines = [f"Conditions: {model}, one letterboxed clip frame, 4 default prompts, pruning kept per layer "
             f"{data['kept']}; {machine_line(load)}. The machine is shared: the peak and the model are timed in "
             f"the same run, so the fraction is the number to read. Model GFLOPs are the architecture's "
             f"(count_flops, eager); the exported graph reaches some of them with fewer operations (S2 and S3 "
             f"read from their input statistics, docs/MODEL.md), so achieved GFLOP/s is an effective rate.", "",
             f"| threads | sgemm {data['n']}x{data['n']} GFLOP/s: " + " / ".join(SGEMM_SOURCES) +
             " | peak (the faster) | model GFLOPs (count_flops) | model median ms | achieved GFLOP/s "
             "| fraction of peak |", "|---|---|---|---|---|---|---|"]
    for t, e in eff.items():
        rates = " / ".join(f"{data['sgemm_rates'][t][name]:.1f}" for name in SGEMM_SOURCES)
        lines.append(f"| {t} | {rates} | {peaks[t]:.1f} | {e.gflops:.2f} | {fmt_ms(e.latency_ms)} "
                     f"| {e.achieved_gflops_s:.1f} | {e.fraction:.1%} |")
    e = eff[threads]
    lines += ["", f"Goal (achieved >= 50% of peak at {threads} threads), one stream in this process: "
                  f"{e.fraction:.1%}, {goal(e.fraction >= 0.5)}; over several processes and with streams side by "
                  "side: below.",
              *perf_streams.lines(data.get("streams", []), e.gflops, peaks[max(peaks)],
                                  *data.get("stream_frames", (0, 0)), data.get("stream_spread")),
              *paper_lines(data.get("paper"), threads, judged),
              *perf_width.lines(data.get("widths", []), threads),
              "", f"### onnxruntime profile by operator type ({threads} threads)", "",
              *perf_profile.op_table(stats), "",
              f"Node time in matmul/convolution ops: {gemm_ms:.1f} of {total_ms:.1f} ms ({gemm_ms / total_ms:.0%}); "
              f"the counted {e.gflops:.2f} GFLOPs (all but the few bilinear-sampling taps run there) go at about "
              f"{e.gflops / (gemm_ms / 1000):.1f} GFLOP/s ({e.gflops / (gemm_ms / 1000) / peaks[threads]:.0%} of "
              f"peak) inside those ops. The other "
              f"{total_ms - gemm_ms:.1f} ms (layout: Transpose/Concat/Reshape/Reorder*, "
              f"sampling: DeformConv/GridSample, elementwise: Add/Mul/Div/Softmax/norms) carry no counted FLOPs: "
              f"that is the biggest loss. It also bounds what removing it can give: with every other node "
              f"free, the model would run at the in-op rate, "
              f"{e.gflops / (gemm_ms / 1000) / peaks[threads]:.0%} of peak. Profiled node times sum to "
              f"{total_ms:.1f} ms against {e.latency_ms:.1f} ms unprofiled: the profiler's own cost per node "
              f"inflates the small nodes.", "",
              "Heaviest nodes:", "", "| node | op | ms per run | input shapes |", "|---|---|---|---|",
              *[f"| {name} | {op} | {ms:.2f} | {shapes} |" for name, op, ms, shapes in data["nodes"]], "",
              "### Cheap fixes tried", "", "Session options (round-robin, median ms; a variant counts when >= 5% "
              "faster than the runtime's settings):", "", "| variant | median ms | vs runtime | helps |",
              "|---|---|---|---|"]
    sweep = data["sweep"]
    base = next(iter(sweep.values()))
    for name, ms in sweep.items():
        lines.append(f"| {name} | {fmt_ms(ms)} | {ms / base:.2f} | {'yes' if perf_profile.helps(base, ms) else 'no'} |")
    contention = data["contention"]
    names = list(next(iter(contention.values())))
    lines += ["", "Spinning and threads when the cores are shared (median ms; 'one core busy' = a spinning "
                  "child process beside the model, like another node on the robot):", "",
              "| machine | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
              *[f"| {state} | " + " | ".join(fmt_ms(row[n]) for n in names) + " |"
                for state, row in contention.items()]]
    blocks = data["alternation"]["runtime, in blocks"]
    lines += ["", "Kernel reuse runs two sessions, the model and its mask graph (backbone + pixel decoder + "
                  "mask kernels), alternating frame by frame. Median ms per run:", "",
              "| sessions | model | mask graph |", "|---|---|---|",
              *[f"| {name} | {fmt_ms(row['model'])} | {fmt_ms(row['mask graph'])} |"
                for name, row in data["alternation"].items()],
              "", "With onnxruntime's default the workers of one session keep spinning after its run and slow the "
                  "other session's next run; the runtime stops spinning at the end of each run "
                  "(runtime/onnx_engine.session_options). The mask graph costs "
              f"{blocks['mask graph'] / blocks['model']:.0%} of the model: the bound on what kernel reuse can save "
              "for this model."]
    layout = data["layout"]
    (old_name, old_ms), (new_name, new_ms) = layout["ms"].items()
    verdict = ("model/deform_attn.deform_sample uses the concat-free layout." if perf_profile.helps(old_ms, new_ms)
               else "The concat-free layout, which model/deform_attn.deform_sample uses, is not measurably faster "
                    "in this run.")
    lines += ["", f"Deformable-attention sampling layout, pixel decoder cross-attention alone ({layout['shape']}), "
                  f"onnxruntime {threads} threads: {old_name} {old_ms:.2f} ms vs {new_name} {new_ms:.2f} ms "
                  f"({old_ms / new_ms:.2f}x; outputs agree to {layout['max_abs_difference']:.1e}). "
                  f"{verdict}"]
    if "sampler" in data:
        lines += ["", *sampler_lines(data["sampler"], threads)]
    lines.append("")
    return "\n".join(lines)


def paper_lines(paper: dict | None, threads: int, default_fraction: float) -> list[str]:
    """The paper-scale rows under the default model's verdict (absent in sections run before them)."""
    if not paper:
        return []
    lines = ["", f"The same at paper scale: {PAPER_PRESET} with RANDOM weights, whose configured pruning keeps "
                 "min_kept, as the trained one does (not shipped; pruning section), "
                 f"{SIZE}x{SIZE}, {TOKENS}-token prompts, {threads} threads, exported as in the latency section. "
                 "Its matmuls and convolutions are wider, so per-node costs weigh less:", "",
             "| model | prompts | kept per layer | GFLOPs (count_flops) | median ms | achieved GFLOP/s "
             "| fraction of peak | matmul/conv share of node time |", "|---|---|---|---|---|---|---|---|"]
    for prompts, row in paper.items():
        e = row["efficiency"]
        lines.append(f"| {PAPER_PRESET} | {prompts} | {','.join(map(str, row['kept']))} | {e.gflops:.2f} "
                     f"| {fmt_ms(e.latency_ms)} | {e.achieved_gflops_s:.1f} | {e.fraction:.1%} "
                     f"| {row['gemm_share']:.0%} |")
    best = max(row["efficiency"].fraction for row in paper.values())
    lines += ["", f"The goal is judged on the shipped model above (one stream: {default_fraction:.1%}); the "
                  f"paper-scale model reaches up to {best:.1%} ({'at or above' if best >= 0.5 else 'below'} 50%): "
                  "more of the small default model's time goes to per-node and memory-traffic costs that do not "
                  "shrink with its width."]
    return lines


def sampler_lines(sampler: dict, threads: int) -> list[str]:
    """The default model with its pixel-decoder sampling as DeformConv (as shipped) vs GridSample."""
    ms, counts = sampler["ms"], sampler["sampling_nodes"]
    lines = ["Deformable sampling of the whole default model, as exported (`mobius export --sampler`), "
             f"onnxruntime {threads} threads, round-robin:", "",
             "| sampler | median ms | nodes | GridSample | DeformConv | vs grid_sample |", "|---|---|---|---|---|---|"]
    for name in ("grid_sample", "deform_conv"):
        lines.append(f"| {name} | {ms[name]:.1f} | {sampler['nodes'][name]} | {counts[name]['GridSample']} | "
                     f"{counts[name]['DeformConv']} | {ms['grid_sample'] / ms[name]:.2f}x |")
    lines += ["", f"Outputs agree to {sampler['max_abs_difference']:.1e}. DeformConv takes every level and point of "
                  "one attention in one node (levels packed into one zero-gapped canvas, model/deform_conv.py); the "
                  "decoder's pruned, data-dependent queries keep GridSample."]
    return lines
