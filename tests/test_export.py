"""ONNX export through `mobius export`: onnxruntime matches torch for 1, 3 and 20 prompts, with and
without track queries, and when pruning keeps zero queries; the weights' score calibration goes with the graph."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from perception_core.cli import main as mobius
from perception_core.model.build import build_from_name, save_weights
from perception_core.model.decoder import PruneSettings
from perception_core.runtime.export import example_inputs
from perception_core.runtime.io_names import INPUT_NAMES, OUTPUT_NAMES
from perception_core.runtime.score_calibration import METADATA_KEY, ScoreCalibration, read_calibration, write_calibration

TINY = ["hidden_dim=64", "decoder.num_queries=30", "pruning.min_kept=5", "decoder.ffn_dim=128",
        "pixel_decoder.ffn_dim=128", "pruning.b_low=0.3", "pruning.b_high=0.6"]
SIZE = 64
CALIBRATION = ScoreCalibration(0.8, 0.5, {"fit_on": "val.json"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_from_name("mobius_nano", TINY).deploy()
    save_weights(model, tmp / "w.safetensors")
    write_calibration(tmp / "w.safetensors", CALIBRATION)
    onnx_path = tmp / "model.onnx"
    assert mobius(["export", "--config", "mobius_nano", "--weights", str(tmp / "w.safetensors"),
                   "--size", str(SIZE), "--out", str(onnx_path), "--reuse-graphs", *TINY]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return model, session, onnx_path


def test_export_carries_the_weights_score_calibration(exported):
    _, session, onnx_path = exported
    assert read_calibration(onnx_path) == CALIBRATION
    assert ScoreCalibration.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY]) == CALIBRATION


def _compare(model, session, args):
    with torch.no_grad():
        ref = model(*args[:6], prune=PruneSettings(args[6], args[7]))
    got = dict(zip(OUTPUT_NAMES, session.run(None, {n: a.numpy() for n, a in zip(INPUT_NAMES, args)})))
    for name in OUTPUT_NAMES:
        expected = ref[name].numpy()
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=1e-3, atol=2e-4, err_msg=name)
    return got


def test_graph_io_names(exported):
    _, session, _ = exported
    assert tuple(i.name for i in session.get_inputs()) == INPUT_NAMES
    assert tuple(o.name for o in session.get_outputs()) == OUTPUT_NAMES


@pytest.mark.parametrize("num_prompts, tracks", [(1, 0), (3, 2), (20, 5)])
def test_onnxruntime_matches_torch(exported, num_prompts, tracks):
    model, session, _ = exported
    args = example_inputs(model, SIZE, prompts=num_prompts, tracks=tracks)
    got = _compare(model, session, args)
    assert got["pred_logits"].shape[2] == num_prompts
    assert got["kept_per_layer"][0] == 16 + tracks  # 4x4 bottleneck tokens + carried track queries


def test_pruning_to_zero_queries(exported):
    model, session, _ = exported
    args = list(example_inputs(model, SIZE, prompts=3, tracks=2))
    args[6] = torch.full_like(args[6], 2.0)        # no confidence reaches 2
    args[7] = torch.tensor(0, dtype=torch.int64)    # and nothing is protected
    got = _compare(model, session, args)
    assert got["pred_masks"].shape == (1, 0, SIZE // 4, SIZE // 4)
    assert got["kept_per_layer"].tolist() == [18, 0, 0, 0]


def test_pruning_bounds_are_runtime_inputs(exported):
    model, session, _ = exported
    args = list(example_inputs(model, SIZE, prompts=3, tracks=0))
    args[6] = torch.zeros_like(args[6])             # tau = 0: keep everything
    got = _compare(model, session, args)
    assert got["kept_per_layer"].tolist() == [16, 16, 16, 16]


def test_samplers(exported, tmp_path):
    """Default export: the pixel decoder's deformable attention (static query count) is one DeformConv
    each, the transformer decoder's (pruned, data-dependent queries) stays GridSample. With
    --sampler grid_sample there is no DeformConv, and both files compute the same outputs."""
    model, session, onnx_path = exported
    blocks = model.config.pixel_decoder.num_blocks
    ops = [n.op_type for n in onnx.load(str(onnx_path)).graph.node]
    assert ops.count("DeformConv") == 2 * blocks                      # self- and cross-attention per block
    assert ops.count("GridSample") == model.config.decoder.num_layers
    save_weights(model, tmp_path / "w.safetensors")
    portable = tmp_path / "portable.onnx"
    assert mobius(["export", "--config", "mobius_nano", "--weights", str(tmp_path / "w.safetensors"),
                   "--size", str(SIZE), "--out", str(portable), "--sampler", "grid_sample", *TINY]) == 0
    assert "DeformConv" not in {n.op_type for n in onnx.load(str(portable)).graph.node}
    other = ort.InferenceSession(str(portable), providers=["CPUExecutionProvider"])
    args = example_inputs(model, SIZE, prompts=3, tracks=2)
    feed = {n: a.numpy() for n, a in zip(INPUT_NAMES, args)}
    for name, a, b in zip(OUTPUT_NAMES, session.run(None, feed), other.run(None, feed)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_reuse_graphs_are_written_beside_the_model_and_serve_the_runtime(exported, tmp_path):
    """`mobius export --reuse-graphs`: the mask and lateral graphs next to the model, usable by a
    FrameProcessor with kernel and bottleneck reuse (frames 1 and 2 are decoded by them)."""
    import yaml

    from perception_core.config import load_model_config, to_dict
    from perception_core.runtime.io_names import LATERAL_SUFFIX, mask_graph_path
    from perception_core.runtime.io_names import LATERAL_INPUT_NAMES, MASK_INPUT_NAMES
    from perception_core.runtime.processor import FrameProcessor, ProcessorConfig

    _, _, onnx_path = exported
    for path, names in ((mask_graph_path(onnx_path), MASK_INPUT_NAMES),
                        (mask_graph_path(onnx_path, LATERAL_SUFFIX), LATERAL_INPUT_NAMES)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert tuple(i.name for i in session.get_inputs()) == names
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(to_dict(load_model_config("mobius_nano", TINY))))
    config = ProcessorConfig(model=str(onnx_path), preset=str(preset), threads=1, score_threshold=0.0,
                             kernel_reuse=3, reuse_bottleneck=True)
    processor = FrameProcessor(config, ["red star", "blue circle"])
    frame = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    results = [processor.process(frame) for _ in range(3)]
    assert [bool(r.kept_per_layer) for r in results] == [True, False, False]
    assert results[0].instances and [i.track_id for i in results[2].instances] == \
        [i.track_id for i in results[0].instances]
