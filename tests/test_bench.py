"""Pure parts of the performance benchmarks (bench/perf_*.py): onnxruntime profile aggregation on a
real profile of a tiny graph, FLOP/s arithmetic, int8 quantization of a tiny graph, kept-count
projection, growth fits and the BENCHMARKS.md writer. No timing assertions (speed lives in bench/)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import perf_efficiency  # noqa: E402
import perf_profile  # noqa: E402
import perf_pruning  # noqa: E402
import perf_report  # noqa: E402
import perf_scaling  # noqa: E402
import perf_streams  # noqa: E402
import perf_width  # noqa: E402
from perf_common import Section, Settings, onnx_session, time_interleaved  # noqa: E402
from perception_core.runtime import quantize  # noqa: E402

RUNS = 3


def tiny_graph(path: Path) -> Path:
    """x (1, 2, 8, 8) -> Conv(4, 3x3, pad 1) -> Relu -> Flatten -> MatMul (256, 5) -> Add -> y (1, 5)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"conv_w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
               "conv_b": rng.standard_normal(4).astype(np.float32),
               "fc_w": rng.standard_normal((256, 5)).astype(np.float32) * 0.1,
               "fc_b": rng.standard_normal(5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "fc_w"], ["m"]),
             helper.make_node("Add", ["m", "fc_b"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    # a stale shape annotation, as the dynamo exporter's value_info can carry: quantization must cope
    graph.value_info.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 256]))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_graph(tmp_path_factory.mktemp("bench") / "tiny.onnx")


def feed() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)}


# ----------------------------------------------------------------------------- profile aggregation

def test_profile_of_a_real_session_is_aggregated_by_op_type(tiny, tmp_path):
    session = onnx_session(tiny, threads=1, level="none", profile_prefix=str(tmp_path / "prof"))
    for _ in range(2 + RUNS):                    # 2 warm-up runs that last_runs must drop
        session.run(None, feed())
    events = json.loads(Path(session.end_profiling()).read_text())
    kept = perf_profile.last_runs(events, RUNS)
    stats = perf_profile.aggregate_profile(kept, RUNS)
    assert {s.op_type for s in stats} == {"Conv", "Relu", "Flatten", "MatMul", "Add"}
    assert all(s.nodes == 1 for s in stats)      # each node once per run: warm-up runs were dropped
    assert sum(s.share for s in stats) == pytest.approx(1.0)
    assert [s.ms_per_run for s in stats] == sorted((s.ms_per_run for s in stats), reverse=True)
    node_us = sum(e["dur"] for e in kept if e["name"].endswith("_kernel_time"))
    assert sum(s.ms_per_run for s in stats) == pytest.approx(node_us / RUNS / 1000)
    heaviest = perf_profile.heaviest_nodes(kept, RUNS, top=2)
    assert len(heaviest) == 2 and heaviest[0][2] >= heaviest[1][2]
    assert "1x2x8x8" in next(h[3] for h in perf_profile.heaviest_nodes(kept, RUNS, top=5) if h[1] == "Conv")
    with pytest.raises(ValueError, match="fewer than"):
        perf_profile.last_runs(events, 2 + RUNS + 1)


def test_aggregate_profile_arithmetic_and_ignored_events():
    def node(op, us, name):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": us, "args": {"op_name": op}}
    events = [node("MatMul", 3000, "a"), node("MatMul", 1000, "b"), node("Transpose", 4000, "t"),
              node("MatMul", 3000, "a"), node("MatMul", 1000, "b"), node("Transpose", 4000, "t"),
              {"cat": "Node", "name": "a_fence_before", "dur": 999, "args": {"op_name": "MatMul"}},
              {"cat": "Session", "name": "model_run", "dur": 20000}]
    stats = {s.op_type: s for s in perf_profile.aggregate_profile(events, 2)}
    assert set(stats) == {"MatMul", "Transpose"}
    assert stats["MatMul"].ms_per_run == pytest.approx(4.0) and stats["MatMul"].nodes == 2
    assert stats["Transpose"].share == pytest.approx(0.5)
    with pytest.raises(ValueError):
        perf_profile.aggregate_profile(events, 0)


def test_op_table_lists_top_types_and_the_rest():
    stats = [perf_profile.OpStat(f"Op{i}", 10.0 - i, (10.0 - i) / 55, 1) for i in range(10)]
    lines = perf_profile.op_table(stats, top=3)
    assert len(lines) == 2 + 3 + 1 and lines[2].startswith("| Op0 |") and "(7 other types)" in lines[-1]


def test_helps_needs_five_percent():
    assert perf_profile.helps(100.0, 94.9) and not perf_profile.helps(100.0, 96.0)


# ----------------------------------------------------------------------------- FLOP/s arithmetic

def test_flops_fraction_arithmetic():
    efficiency = perf_efficiency.flops_fraction(gflops=10.0, latency_ms=100.0, peak_gflops_s=200.0)
    assert efficiency.achieved_gflops_s == pytest.approx(100.0)
    assert efficiency.fraction == pytest.approx(0.5)
    for bad in ((0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, -5.0)):
        with pytest.raises(ValueError, match="must all be > 0"):
            perf_efficiency.flops_fraction(*bad)


def test_sgemm_peak_sources_compute_the_product_and_both_are_timed():
    """The peak is the faster of torch.matmul and onnxruntime's MatMul: the onnxruntime graph timed must
    compute a @ b, and both rates must come back."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 64), dtype=np.float32), rng.standard_normal((64, 64), dtype=np.float32)
    (product,) = perf_efficiency._matmul_session(64, 1).run(None, {"a": a, "b": b})
    np.testing.assert_allclose(product, a @ b, rtol=1e-4, atol=1e-4)
    rates = perf_efficiency.sgemm_rates(1, 128, 3)
    assert set(rates) == set(perf_efficiency.SGEMM_SOURCES) and all(rate > 0 for rate in rates.values())


def test_paper_scale_rows_and_verdict():
    below = {4: {"efficiency": perf_efficiency.flops_fraction(14.0, 100.0, 350.0), "gemm_share": 0.55,
                 "kept": [300, 100]},
             80: {"efficiency": perf_efficiency.flops_fraction(16.0, 128.0, 350.0), "gemm_share": 0.6,
                  "kept": [300, 100]}}
    text = "\n".join(perf_efficiency.paper_lines(below, 2, 0.276))
    assert "| mobius_mini_m | 4 | 300,100 | 14.00 | 100 | 140.0 | 40.0% | 55% |" in text
    assert "| mobius_mini_m | 80 |" in text
    assert "reaches up to 40.0% (below 50%)" in text and "shipped model above (one stream: 27.6%)" in text
    above = {4: {**below[4], "efficiency": perf_efficiency.flops_fraction(18.0, 100.0, 350.0)}}
    assert "reaches up to 51.4% (at or above 50%)" in "\n".join(perf_efficiency.paper_lines(above, 2, 0.3))
    assert perf_efficiency.paper_lines(None, 2, 0.3) == []


def width_row(label, gflops, ms, peak=400.0):
    return perf_width.WidthRow(gflops, ms, peak, label=label, kept=(100, 20, 20, 20))


def test_width_rows_judge_both_goals():
    """60 FPS is 16.7 ms; 50% of a 400 GFLOP/s peak is 200 GFLOP/s."""
    fast_sparse = width_row("a", 1.4, 10.0)          # 100 FPS, 35%
    slow_dense = width_row("b", 5.2, 25.0)           # 40 FPS, 52%
    both = width_row("c", 3.4, 16.0)                 # 62.5 FPS, 53.1%
    assert fast_sparse.fps == pytest.approx(100.0) and fast_sparse.fraction == pytest.approx(0.35)
    assert not fast_sparse.meets_both and not slow_dense.meets_both and both.meets_both
    assert not width_row("edge", 3.4, 16.8).meets_both      # 50.6% of peak but 59.5 FPS


def test_width_lines_name_the_trade_when_no_width_meets_both():
    rows = [width_row("nano", 1.4, 10.0), width_row("x1.0", 2.2, 14.0), width_row("x1.0, 256-d", 5.2, 25.0)]
    text = "\n".join(perf_width.lines(rows, 2))
    assert "| nano | 100,20,20,20 | 1.40 | 10.0 | 100.0 | 35.0% | no |" in text
    assert "No width meets both goals" in text
    assert "the most efficient (x1.0) reaches 39.3% of peak" in text
    assert "(x1.0, 256-d) runs at 40.0 FPS" in text and "trade the speed goal" in text
    assert "![width](efficiency_width.png)" in text
    none_dense = "\n".join(perf_width.lines(rows[:2], 2))
    assert "No width reaches 50% of peak" in none_dense and "trade" not in none_dense
    met = "\n".join(perf_width.lines(rows + [width_row("x0.75, 192-d", 3.4, 16.0)], 2))
    assert "Widths that meet both goals: x0.75, 192-d." in met and "No width" not in met
    assert perf_width.lines([], 2) == []


def test_width_plot_is_a_png(tmp_path):
    path = tmp_path / "width.png"
    perf_width.plot([width_row("nano", 1.4, 10.0), width_row("wide", 5.2, 25.0)], path)
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (width, height) == (770, 495)


def test_time_interleaved_round_robin_order():
    order = []
    timings = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert len(timings["a"].samples_ms) == 3 and timings["b"].median >= 0
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, repeats=0)


def test_time_interleaved_blocks_settle_then_time():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "ab"}
    timings = time_interleaved(calls, repeats=3, warmup=0, block=2)
    # rounds: a (untimed) a a, b (untimed) b b, then the last sample each: a (untimed) a, b (untimed) b
    assert "".join(order) == "aaabbbaabb"
    assert all(len(t.samples_ms) == 3 for t in timings.values())


# ----------------------------------------------------------------------------- int8

def test_quantized_tiny_model_loads_and_keeps_output_shapes(tiny, tmp_path):
    import onnx

    source, ok = quantize.prepare(tiny, tmp_path)
    assert ok and not onnx.load(str(source)).graph.value_info
    dynamic = quantize.quantize_dynamic_model(source, tmp_path / "dynamic.onnx")
    calibration = iter([{"x": np.random.default_rng(i).standard_normal((1, 2, 8, 8)).astype(np.float32)}
                        for i in range(4)])

    class Reader:
        def get_next(self):
            return next(calibration, None)
    static = quantize.quantize_static_model(source, tmp_path / "static.onnx", Reader())
    reference = onnx_session(tiny, 1).run(None, feed())[0]
    for path, marker in ((dynamic, {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}),
                         (static, {"QuantizeLinear", "DequantizeLinear"})):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ops & marker, f"{path.name} holds no quantized ops: {ops}"
        out = onnx_session(path, 1).run(None, feed())[0]
        assert out.shape == reference.shape and np.isfinite(out).all()
        assert np.abs(out - reference).max() < 0.25 * np.abs(reference).max()   # int8, not garbage


# ----------------------------------------------------------------------------- pruning / scaling

def test_project_kept_maps_fractions_by_depth():
    kept = perf_pruning.project_kept(np.array([100.0, 50.0, 30.0, 20.0]), queries=300, layers=7, min_kept=100)
    assert kept[0] == 300 and len(kept) == 7
    assert all(b <= a for a, b in zip(kept, kept[1:]))
    assert min(kept) == 100                       # 20% of 300 = 60 is clamped to min_kept
    assert perf_pruning.project_kept(np.array([10.0, 10.0]), 300, 3, 100) == (300, 300, 300)
    with pytest.raises(ValueError):
        perf_pruning.project_kept(np.array([10.0]), 300, 3, 100)


def test_pruning_render_judges_goals_and_sets_the_paper_ratio_beside_them():
    def row(key, vs_baseline, kept=(300, 100)):
        return {"key": key, "name": key, "kept": list(kept), "decoder": 1.0, "vs_baseline": vs_baseline,
                "vs_unpruned": None}
    rows = [row(key, 1.0) for key in ("baseline", "full", "mini_base", "mini_full", "large_base")]
    rows += [row("large", 0.176), row("floor", 0.263), row("projected", 0.293), row("measured", 0.191)]
    data = {"rows": rows, "kept": [[100, 20]], "mean_kept": [100.0, 20.0], "prompts": ["red ring"],
            "analytic_mean": 1.0, "analytic_full": 2.0, "trained": True}
    text = perf_pruning.render(data, Settings(quick=True, threads=2), 4, (0.5, 0.5, 0.5))
    assert "measured at nano scale 19.1%, **met**; mini_m projection 29.3%, **not met**" in text
    assert "the lowest reachable is 26.3%); the same projection at 800x800: 17.6%, **met**" in text
    assert "at 800x800 (Tab. 10: 10 vs 20.1 GFLOPs) and 49.5% at 384 px" in text
    assert "mobius_mini_m projected here: 29.3% at 384 px, 17.6% at 800 px" in text


def test_pruning_render_judges_a_trained_mini_m_by_its_measured_row_and_says_when_there_is_none():
    def row(key, vs_baseline, kept=(300, 60)):
        return {"key": key, "name": key, "kept": list(kept), "decoder": 1.0, "vs_baseline": vs_baseline,
                "vs_unpruned": None}
    rows = [row(key, 1.0) for key in ("baseline", "full", "measured", "mini_base", "mini_full", "projected", "floor",
                                      "large_base", "large")]
    data = {"rows": rows, "kept": [[100, 20]], "mean_kept": [100.0, 20.0], "prompts": ["red ring"],
            "analytic_mean": 1.0, "analytic_full": 2.0, "trained": True, "mini_trained": None}
    text = perf_pruning.render(data, Settings(quick=True, threads=2), 4, (0.5, 0.5, 0.5))
    assert "MOBIUS_MINI_M_WEIGHTS unset): the mini_m figure above is the projection only" in text
    data["rows"] = [row("mini_trained", 0.262)] + rows
    data["mini_trained"] = {"weights": "mini.safetensors", "kept": [[300, 70, 60], [300, 90, 61]],
                            "mean_kept": [300.0, 80.0, 60.5]}
    text = perf_pruning.render(data, Settings(quick=True, threads=2), 4, (0.5, 0.5, 0.5))
    assert "mean over the clip: 300.0, 80.0, 60.5 (last layer min / max over frames: 60 / 61)" in text
    assert "its decoder with pruning is 26.2% of glee_maskdino_mini_m, **not met** (measured)" in text


def test_growth_exponent_recovers_power_laws():
    sizes = [256, 384, 512, 800]
    assert perf_scaling.growth_exponent(sizes, [3.0 * s ** 2 for s in sizes]) == pytest.approx(2.0)
    assert perf_scaling.growth_exponent(sizes, [7.0 * s for s in sizes]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        perf_scaling.growth_exponent([256], [1.0])


# ----------------------------------------------------------------------------- report writer

def sections() -> list[Section]:
    return [Section("scaling", "Scaling", "| a |\n|---|\n| 1 |", ["bench_scaling.png"]),
            Section("latency", "Latency at 384", "latency body 42.0 ms"),
            Section("custom-extra", "Extra", "extra body")]


def test_markdown_writer_renders_every_section_in_order():
    text = perf_report.render(sections())
    assert text.startswith(perf_report.HEADER)
    for section in sections():
        assert f"## {section.title}\n\n{section.body}\n<!-- /bench:{section.key} -->" in text
    positions = [text.index(f"<!-- bench:{key} -->") for key in ("latency", "scaling", "custom-extra")]
    assert positions == sorted(positions)         # ORDER first, unknown keys after
    assert set(perf_report.parse_blocks(text)) == {"latency", "scaling", "custom-extra"}


def test_markdown_writer_replaces_only_the_given_sections():
    first = perf_report.render(sections())
    second = perf_report.render([Section("latency", "Latency at 384", "new numbers 7.0 ms")], first)
    assert "new numbers 7.0 ms" in second and "latency body 42.0 ms" not in second
    assert "extra body" in second and "| 1 |" in second
    assert perf_report.render([], "# old file without markers\n") == perf_report.HEADER + "\n\n\n"
    with pytest.raises(ValueError, match="section key"):
        perf_report.render([Section("bad key!", "t", "b")])


def test_bench_sessions_start_from_the_runtime_options(tiny):
    """The sweep's baseline is what the runtime runs (runtime/onnx_engine.session_options); a knob
    changes only itself."""
    from perception_core.runtime.onnx_engine import session_options

    runtime = session_options(2)
    session = onnx_session(tiny, threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == runtime.intra_op_num_threads == 2
    assert options.inter_op_num_threads == runtime.inter_op_num_threads == 1
    assert options.graph_optimization_level == runtime.graph_optimization_level
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"   # the kept fix
    changed = onnx_session(tiny, threads=2, spinning=False, stop_spinning=False, level="basic").get_session_options()
    assert changed.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert changed.get_session_config_entry("session.force_spinning_stop") == "0"
    assert changed.intra_op_num_threads == 2 and changed.graph_optimization_level != runtime.graph_optimization_level


def test_ab_onnx_output_differences():
    import ab_onnx

    first = [np.zeros((2, 3), np.float32), np.arange(4, dtype=np.int64), np.zeros((0, 5), np.float32)]
    other = [np.full((2, 3), 0.5, np.float32), np.arange(5, dtype=np.int64), np.zeros((0, 5), np.float32)]
    diff = ab_onnx.output_differences(first, other, ["masks", "kept", "empty"])
    assert diff["masks"] == 0.5
    assert diff["kept"] == "shape (4,) vs (5,)"
    assert diff["empty"] == 0.0


def test_node_section_reports_goals_from_the_summary():
    import perf_node

    summary = {"frames_published": 300, "frames_processed": 190, "frames_dropped": 110, "node_rate_hz": 31.0,
               "node_latency_ms": {"p50": 30.0, "p90": 40.0, "p99": 75.0}, "instances_per_frame_mean": 1.0}
    reuse = {**summary, "frames_processed": 300, "frames_dropped": 0, "node_rate_hz": 59.5,
             "node_latency_ms": {"p50": 5.0, "p90": 20.0, "p99": 25.0}}
    data = {"summaries": {"every frame": summary, "T=3, bottleneck reuse": reuse}, "frames": 300, "fps": 60.0}
    text = perf_node.render(data, (0.5, 0.5, 0.5))
    assert "31.0 Hz, **met**" in text and "2.50x, **not met**" in text   # goals from the every-frame run
    assert "| T=3, bottleneck reuse | 300 | 300 | 0 | 59.5 |" in text
    summary["node_rate_hz"] = 12.0
    assert "12.0 Hz, **not met**" in perf_node.render(data, (0, 0, 0))


@pytest.mark.parametrize("reuse_instances", [0.0, 1.4])
def test_runtime_bench_warns_when_reuse_rows_measured_empty_frames(reuse_instances):
    """`mobius bench` flags kernel-reuse rows whose frames had nothing tracked (inference skipped)."""
    from perception_core.bench_command import BenchModel, BenchRow, markdown

    stages = {name: 1.0 for name in ("preprocess", "inference", "postprocess", "tracking", "total")}
    rows = [BenchRow("onnx", 2, 1, False, stages, 15.0, 15.0, None, 1.5, 20),
            BenchRow("onnx", 2, 3, False, stages, 12.0, 15.0, 0.7 if reuse_instances == 0 else 11.0,
                     reuse_instances, 20),
            BenchRow("onnx", 2, 3, True, stages, 6.0, 15.0, 1.5, reuse_instances, 20)]
    model = BenchModel(Path("m.onnx"), Path("m.safetensors"), "mobius_nano", True)
    frames = [np.zeros((288, 384, 3), np.uint8)]
    text = markdown(rows, model, frames, ["blue circle"], 3, 384, (11.0, 0.1), (1.0, 1.0, 1.0), 0.1)
    assert "score threshold 0.1" in text and "['blue circle']" in text
    assert ("upper bound" in text) == (reuse_instances < 0.5)
    assert "| onnx | 2 | 3b |" in text
    assert "kernel reuse T=3 / every frame (onnxruntime, 2 threads): 0.80" in text
    assert "kernel + bottleneck reuse T=3 / every frame (onnxruntime, 2 threads): 0.40" in text


def test_runtime_bench_reuse_schedules():
    from perception_core.bench_command import parse_reuse, reuse_label

    assert [parse_reuse(v) for v in ("1", "3", " 3B", "12b")] == [(1, False), (3, False), (3, True), (12, True)]
    assert reuse_label(3, True) == "3b" and reuse_label(1, False) == "1"
    for bad in ("0", "1b", "b", "x3", "-2"):
        with pytest.raises(ValueError, match="kernel-reuse entry"):
            parse_reuse(bad)


def test_clip_prompts_are_the_clips_categories():
    from perception_core.training.synth.vocabulary import category_id, present_names

    records = [{"category_id": category_id("star", "red")}, {"category_id": category_id("circle", "blue")},
               {"category_id": category_id("star", "red")}]
    expected = sorted(["red star", "blue circle"], key=lambda name: category_id(*name.split()[::-1]))
    assert present_names(records) == expected   # each category once, in category-id order


def test_reuse_accuracy_on_a_still_clip_is_the_keyframes():
    """perf_reuse on a clip whose frames are all the same, with the tiny exported model: every method
    reproduces the keyframe, so kernel reuse, bottleneck reuse and the frozen mask score alike, and the
    full decode (best query of an identical frame) exactly as well."""
    import perf_reuse
    from runtime_models import tiny_model

    from perception_core.runtime.backends import OnnxBackend
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.video import generate_video

    frames, tracks = generate_video(3, make_config("easy", frames=(2, 2), video_size=(96, 128)))
    length = perf_reuse.OFFSETS + 1
    still = [frames[0]] * length
    for track in tracks:
        track["masks"] = [track["masks"][0]] * length
    backend = OnnxBackend(tiny_model().onnx, 1, str(tiny_model().preset))
    ious = perf_reuse.clip_ious(backend, still, tracks, ["red star", "blue circle"])
    visible = sum(t["masks"][0] is not None and t["masks"][0].sum() >= perf_reuse.MIN_AREA for t in tracks)
    assert visible and all(len(v) == visible for per in ious.values() for v in per)
    for offset in range(perf_reuse.OFFSETS):
        frozen = np.array(ious["frozen keyframe mask"][offset])
        np.testing.assert_allclose(ious["kernel reuse"][offset], frozen, atol=0.02)
        np.testing.assert_allclose(ious["kernel + bottleneck reuse"][offset], frozen, atol=0.02)
        np.testing.assert_allclose(ious["bottleneck reuse without motion compensation"][offset], frozen, atol=0.02)
        np.testing.assert_allclose(ious["full decode"][offset], frozen, atol=1e-9)


def test_reuse_speedups_and_goal_lines():
    import perf_latency
    import perf_reuse

    costs = {"model": 15.0, "mask graph": 11.0, "lateral graph": 1.0}
    assert perf_reuse.speedup(costs, "mask graph") == pytest.approx(45 / 37)
    assert perf_reuse.speedup(costs, "lateral graph") == pytest.approx(45 / 17)
    line = perf_latency.reuse_goal({"1": {"frame_ms": 16.0}, "3": {"frame_ms": 13.0}, "3b": {"frame_ms": 7.0}})
    assert "alone 1.23x, **not met**" in line and "bottleneck reuse 2.29x, **met**" in line


def test_paired_difference_interval():
    import perf_reuse

    a = [0.5, 0.6, 0.7, 0.8]
    mean, low, high = perf_reuse.paired_difference(a, [x + 0.1 for x in a])
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    mean, low, high = perf_reuse.paired_difference(a, [0.4, 0.9, 0.6, 0.9])
    assert mean == pytest.approx(0.05) and low < 0.0 < high
    assert np.isnan(perf_reuse.paired_difference([], [])[0])


# ----------------------------------------------------------------------------- streams side by side

def test_streams_run_real_sessions_side_by_side_and_a_failing_stream_raises(tiny):
    run = perf_streams.stream_run(tiny, feed(), streams=2, threads=1, frames=3, rounds=2, warmup=1)
    assert (run.streams, run.threads) == (2, 1) and run.frame_ms > 0 and run.aggregate_fps > 0
    bad = {"x": np.zeros((1, 3, 8, 8), np.float32)}              # wrong channel count: the runs fail
    with pytest.raises(Exception, match="(?i)invalid|dimension|shape"):
        perf_streams.stream_run(tiny, bad, streams=2, threads=1, frames=2, rounds=1, warmup=0)
    with pytest.raises(ValueError, match="frames=0"):
        perf_streams.stream_run(tiny, feed(), streams=1, threads=1, frames=0, rounds=1)


def test_process_spread_times_fresh_processes_and_reports_their_failure(tiny, tmp_path):
    medians = perf_streams.process_spread(tiny, feed(), threads=1, processes=2, runs=3, work_dir=tmp_path)
    assert len(medians) == 2 and all(m > 0 for m in medians)
    with pytest.raises(RuntimeError, match="timing process failed"):
        perf_streams.process_spread(tmp_path / "missing.onnx", feed(), 1, 1, 3, tmp_path)


def test_stream_lines_judge_each_case_and_the_single_stream_by_its_process_median():
    runs = [perf_streams.StreamRun(1, 2, frame_ms=20.0, aggregate_fps=50.0),    # 1 GFLOP x 50/s = 50 of 100
            perf_streams.StreamRun(2, 1, frame_ms=25.0, aggregate_fps=80.0),    # 80% of peak
            perf_streams.StreamRun(2, 2, frame_ms=60.0, aggregate_fps=30.0)]
    text = "\n".join(perf_streams.lines(runs, gflops=1.0, peak_gflops_s=100.0, frames=4, rounds=2))
    assert "| 2 x 1 | 80.0 | 25.0 | 80.0 | 80.0% |" in text
    assert "the latency case (in this run): 50.0%, **met**" in text
    assert "(2 streams x 1 thread): 80.0%, **met**" in text and "waits 1.25x" in text
    # fresh processes took 25, 40 and 50 ms: their median 40 ms is 25% of peak, whatever this run saw
    text = "\n".join(perf_streams.lines(runs, 1.0, 100.0, 4, 2, spread=[50.0, 25.0, 40.0]))
    assert "median ms 25.0, 40.0, 50.0, that is 20.0% to 40.0% of peak (slowest / fastest process: 2.00x)" in text
    assert "(median over 3 processes): 25.0%, **not met**" in text and "waits 0.62x" in text
    assert perf_streams.lines([], 1.0, 100.0, 4, 2) == []
