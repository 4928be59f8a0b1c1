"""The graphs run between keyframes: the kernel-reuse mask graph and the bottleneck-reuse lateral
graph agree with the model, in torch and through onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from perception_core.model.build import build_from_name, load_weights
from perception_core.runtime.export_kernels import LateralGraph, MaskGraph
from perception_core.runtime.io_names import LATERAL_INPUT_NAMES, LATERAL_OUTPUT_NAMES, LATERAL_SUFFIX, mask_graph_path
from runtime_models import SIZE, TINY, tiny_model


@pytest.fixture(scope="module")
def model():
    return load_weights(build_from_name("mobius_nano", TINY), tiny_model().weights).deploy()


def _inputs(model, seed=0, queries=3):
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(2, 4, dtype=torch.bool)
    text_mask[1, 2:] = False
    return (torch.randn(1, 3, SIZE, SIZE, generator=generator),
            torch.randn(2, 4, model.config.text.dim, generator=generator), text_mask,
            torch.randn(1, queries, model.config.hidden_dim, generator=generator))


def test_first_backbone_stage_alone_gives_the_same_s2(model):
    images = _inputs(model)[0]
    with torch.no_grad():
        full = model.backbone(images)
        first = model.backbone(images, num_stages=1)
    assert len(first) == 1
    torch.testing.assert_close(first[0], full[0], rtol=0, atol=0)


def test_lateral_graph_with_the_frames_own_coarse_map_is_the_mask_graph(model):
    """Bottleneck reuse on the keyframe itself changes nothing: M's coarse part is the frame's own."""
    images, tokens, text_mask, queries = _inputs(model)
    with torch.no_grad():
        coarse = MaskGraph(model).mask_features(images, tokens, text_mask).coarse
        expected = MaskGraph(model)(images, tokens, text_mask, queries)
        got = sum(LateralGraph(model)(images, coarse, queries))
    assert got.shape == (1, 3, SIZE // 4, SIZE // 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_lateral_graph_reads_the_new_frame_and_the_old_coarse_map(model):
    """On another frame the fine part changes and the coarse part does not, apart from its per-kernel
    constant (the stride-4 map's normalization statistics); a zero coarse map leaves the constant alone."""
    images, tokens, text_mask, queries = _inputs(model)
    later = _inputs(model, seed=1)[0]
    graph = LateralGraph(model)
    with torch.no_grad():
        coarse = MaskGraph(model).mask_features(images, tokens, text_mask).coarse
        coarse_later, fine_later = graph(later, coarse, queries)
        coarse_key, fine_key = graph(images, coarse, queries)
        constant_later, fine_alone = graph(later, torch.zeros_like(coarse), queries)
        constant_key, _ = graph(images, torch.zeros_like(coarse), queries)
    assert not torch.allclose(fine_later, fine_key, atol=1e-3)
    torch.testing.assert_close(fine_alone, fine_later)
    for constant in (constant_later, constant_key):     # a constant map per kernel
        torch.testing.assert_close(constant, constant[..., :1, :1].expand_as(constant))
    torch.testing.assert_close(coarse_later - constant_later, coarse_key - constant_key, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("queries", [0, 3])
def test_exported_lateral_graph_matches_torch(model, queries):
    path = mask_graph_path(tiny_model().onnx, LATERAL_SUFFIX)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert tuple(i.name for i in session.get_inputs()) == LATERAL_INPUT_NAMES
    images, tokens, text_mask, kernels = _inputs(model, queries=queries)
    with torch.no_grad():
        coarse = MaskGraph(model).mask_features(images, tokens, text_mask).coarse
        expected = LateralGraph(model)(images, coarse, kernels)
    got = session.run(None, {"images": images.numpy(), "mask_coarse": coarse.numpy(),
                             "query_embed": kernels.numpy()})
    assert tuple(o.name for o in session.get_outputs()) == LATERAL_OUTPUT_NAMES
    for part, reference in zip(got, expected):
        assert part.shape == (1, queries, SIZE // 4, SIZE // 4)
        np.testing.assert_allclose(part, reference.numpy(), rtol=1e-3, atol=2e-4)
    # no pixel decoder, no deeper backbone stages, no text: a fraction of the mask graph
    lateral_ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    mask_ops = [n.op_type for n in onnx.load(str(mask_graph_path(tiny_model().onnx))).graph.node]
    assert "DeformConv" in mask_ops and "DeformConv" not in lateral_ops
    assert len(lateral_ops) < len(mask_ops) / 3
