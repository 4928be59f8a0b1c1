"""Deformable attention lowered to one ONNX DeformConv (model/deform_conv.py): the same numbers as the
grid_sample path in float64, whatever the levels, query count and offsets (clamping keeps samples in
their level), and onnxruntime's DeformConv computes what the eager `mobius::deform_conv_sum` does."""
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from perception_core.model import deform_conv
from perception_core.model.deform_attn import MSDeformAttn, ProjectedValues, project_many
from perception_core.runtime.export import OPSET

# (level shapes, queries): the model's four levels at 384 px; one level; a band wider than level 0;
# a prime query count (a 1 x Q output grid); odd shapes.
CASES = [([(48, 48), (24, 24), (12, 12), (6, 6)], 576), ([(24, 24)], 576), ([(4, 4), (4, 4), (4, 4)], 7),
         ([(10, 14), (5, 7)], 210), ([(9, 5), (3, 11)], 13)]


def _attention(levels: int, dtype=torch.float64, seed: int = 0) -> MSDeformAttn:
    """Random weights with large sampling offsets: many samples land outside their level."""
    generator = torch.Generator().manual_seed(seed)
    attn = MSDeformAttn(32, levels, heads=4, points=3).to(dtype)
    with torch.no_grad():
        for param in attn.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=dtype) * 0.5)
        attn.sampling_offsets.weight.mul_(6)
    return attn


def _inputs(shapes, queries, dtype=torch.float64, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    return (torch.randn(2, queries, 32, generator=generator, dtype=dtype),
            torch.rand(2, queries, len(shapes), 2, generator=generator, dtype=dtype),
            torch.randn(2, tokens, 32, generator=generator, dtype=dtype))


@pytest.mark.parametrize("shapes,queries", CASES)
def test_lowered_attention_equals_grid_sample_float64(shapes, queries):
    attn = _attention(len(shapes))
    query, ref, value = _inputs(shapes, queries)
    with torch.no_grad():
        expected = attn(query, ref, value, shapes)
        with deform_conv.lowered_sampling():
            lowered = attn(query, ref, value, shapes)
            canvas = project_many([attn], deform_conv.ValueCanvas.build(value.transpose(1, 2), shapes))[0]
            from_canvas = attn(query, ref, canvas, shapes)
    scale = float(expected.abs().max())
    assert scale > 1.0
    assert float((lowered - expected).abs().max()) < 1e-10 * scale
    assert float((from_canvas - expected).abs().max()) < 1e-10 * scale


def test_samples_outside_their_level_read_zero_not_a_neighbour():
    """Offsets pushing every sample far outside its level: grid_sample reads zeros there, and so must
    the canvas (a sample of level 1 must not land on level 0 or 2)."""
    shapes = [(6, 6), (3, 3), (2, 2)]
    attn = _attention(len(shapes))
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.fill_(-2.5)          # 2.5 px up-left of every reference point
    query, ref, value = _inputs(shapes, 9)
    with torch.no_grad():
        expected = attn(query, ref, value, shapes)
        with deform_conv.lowered_sampling():
            lowered = attn(query, ref, value, shapes)
    assert float((lowered - expected).abs().max()) < 1e-10


def test_canvas_layout_separates_levels_by_zeros():
    shapes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    layout = deform_conv.canvas_layout(shapes)
    value = torch.arange(1, 1 + sum(h * w for h, w in shapes), dtype=torch.float64)[None, None]
    canvas = deform_conv.to_canvas(value, layout)[0, 0]
    assert canvas.shape == (layout.height, layout.width)
    owner = torch.full(canvas.shape, -1)
    for level, ((h, w), (row, col)) in enumerate(zip(shapes, layout.origins)):
        assert (owner[row:row + h, col:col + w] == -1).all()
        owner[row:row + h, col:col + w] = level
    assert (canvas[owner == -1] == 0).all() and (canvas[owner >= 0] > 0).all()
    # every level's one-pixel border (where bilinear sampling can still reach) is zero or off-canvas
    for (h, w), (row, col) in zip(shapes, layout.origins):
        for r in range(row - 1, row + h + 1):
            for c in range(col - 1, col + w + 1):
                inside = row <= r < row + h and col <= c < col + w
                if not inside and 0 <= r < layout.height and 0 <= c < layout.width:
                    assert owner[r, c] == -1, (r, c)


@pytest.mark.parametrize("queries", [1, 2, 7, 64, 210, 576, 3060])
@pytest.mark.parametrize("taps", [1, 4, 16])
def test_conv_geometry_output_grid_holds_the_queries(queries, taps):
    layout = deform_conv.canvas_layout([(48, 48), (24, 24), (12, 12), (6, 6)])
    geometry = deform_conv.conv_geometry(layout, queries, taps)
    rows, cols = geometry.out_hw
    assert rows * cols == queries and rows <= cols
    top, left, bottom, right = geometry.pads
    assert top == left == 0 and bottom >= 0 and right >= 0
    assert (layout.height + bottom - 1) // geometry.strides[0] + 1 == rows
    assert (layout.width + right - taps) // geometry.strides[1] + 1 == cols


def test_is_lowered_only_for_static_positive_counts():
    assert not deform_conv.is_lowered(10)
    with deform_conv.lowered_sampling():
        assert deform_conv.is_lowered(10)
        assert not deform_conv.is_lowered(0)
        assert not deform_conv.is_lowered(torch.tensor(10))
        with deform_conv.lowered_sampling(False):
            assert not deform_conv.is_lowered(10)
        assert deform_conv.is_lowered(10)
    assert not deform_conv.is_lowered(10)


def test_projected_canvas_outside_lowering_is_refused():
    shapes = [(4, 4)]
    attn = _attention(1)
    query, ref, value = _inputs(shapes, 16)
    canvas = project_many([attn], deform_conv.ValueCanvas.build(value.transpose(1, 2), shapes))[0]
    with pytest.raises(ValueError, match="lowered"):
        attn(query, ref, canvas, shapes)
    flat = project_many([attn], value.transpose(1, 2))[0]
    assert isinstance(flat, ProjectedValues) and flat.layout is None
    # the same float64 arithmetic through two call paths: equal up to the matmul kernel's summation order,
    # which differs between CPUs (bitwise equal on one host, 1e-16 apart on an AVX-512 one)
    torch.testing.assert_close(attn(query, ref, flat, shapes), attn(query, ref, value, shapes), rtol=0, atol=1e-12)


class _Attend(torch.nn.Module):
    def __init__(self, attn, shapes):
        super().__init__()
        self.attn, self.shapes = attn, shapes

    def forward(self, query, ref, value):
        return self.attn(query, ref, value, self.shapes)


@pytest.mark.parametrize("shapes,queries", [CASES[0], CASES[3]])
def test_onnxruntime_deform_conv_matches_torch(tmp_path, shapes, queries):
    attn = _attention(len(shapes), torch.float32).eval()
    inputs = _inputs(shapes, queries, torch.float32)
    module = _Attend(attn, shapes)
    with torch.no_grad():
        expected = module(*inputs).numpy()
    paths = {}
    for lowered in (True, False):
        path = tmp_path / f"lowered_{lowered}.onnx"
        with warnings.catch_warnings(), torch.no_grad(), deform_conv.lowered_sampling(lowered):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, dynamo=True, opset_version=OPSET, verbose=False,
                              custom_translation_table=deform_conv.onnx_translations()).save(str(path))
        paths[lowered] = path
    ops = {lowered: {n.op_type for n in onnx.load(str(p)).graph.node} for lowered, p in paths.items()}
    assert "DeformConv" in ops[True] and "GridSample" not in ops[True]
    assert "GridSample" in ops[False] and "DeformConv" not in ops[False]
    feed = {name: t.numpy() for name, t in zip(("query", "ref", "value"), inputs)}
    for path in paths.values():
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4 * float(np.abs(expected).max()))


@pytest.mark.parametrize("batch", [1, 2])
def test_bottleneck_pixel_decoder_lowered_equals_grid_sample_float64(batch):
    """The whole pixel decoder, its canvas built from the level maps with their embeddings added per
    level, against the flat grid_sample path."""
    from perception_core.model.pixel_decoder_bottleneck import BottleneckPixelDecoder
    from perception_core.model.pixel_decoder_common import TextContext

    torch.manual_seed(0)
    decoder = BottleneckPixelDecoder(32, num_blocks=2, heads=4, points=3, ffn_dim=48).double().eval()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for block in decoder.blocks:
            block.cross_attn.sampling_offsets.weight.normal_(0, 3, generator=generator)
            block.cross_attn.value_proj.bias.normal_(0, 1, generator=generator)
    pyramid = [torch.randn(batch, 32, h, w, generator=generator, dtype=torch.float64)
               for h, w in [(12, 10), (6, 5), (3, 3), (2, 2)]]
    s2 = torch.randn(batch, 32, 24, 20, generator=generator, dtype=torch.float64)
    text = TextContext(torch.randn(batch, 5, 32, generator=generator, dtype=torch.float64),
                       torch.tensor([[False, False, False, True, True]]))
    with torch.no_grad():
        expected = decoder(s2, pyramid, text)
        with deform_conv.lowered_sampling():
            lowered = decoder(s2, pyramid, text)
    torch.testing.assert_close(lowered.selection_tokens, expected.selection_tokens, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lowered.memory[0], expected.memory[0], rtol=1e-10, atol=1e-10)
    assert float(expected.selection_tokens.std()) > 0.5


@pytest.mark.parametrize("level_shapes", [[(12, 10), (6, 5), (3, 3), (2, 2)], [(6, 5), (5, 4), (3, 3), (2, 2)]])
@pytest.mark.parametrize("batch", [1, 2])
def test_factored_first_level_canvas_equals_dense_float64(batch, level_shapes):
    """S3 as a NormedProjection (the export's SplitCanvas: level 0 projected from its input statistics,
    never formed; the band as a canvas) gives the pixel decoder's outputs of the dense S3, both lowered
    and eagerly; the second shapes have a band wider than level 0 (its projected map is padded)."""
    from torch import nn

    from perception_core.model.neck import NormedProjection
    from perception_core.model.pixel_decoder_bottleneck import BottleneckPixelDecoder
    from perception_core.model.pixel_decoder_common import TextContext

    torch.manual_seed(0)
    decoder = BottleneckPixelDecoder(32, num_blocks=2, heads=4, points=3, ffn_dim=48).double().eval()
    assert decoder.reads_factored_first_level
    generator = torch.Generator().manual_seed(4)
    conv, norm = nn.Conv2d(8, 32, 1, bias=False).double(), nn.GroupNorm(8, 32).double()
    with torch.no_grad():
        for block in decoder.blocks:
            block.cross_attn.sampling_offsets.weight.normal_(0, 3, generator=generator)
            block.cross_attn.value_proj.bias.normal_(0, 1, generator=generator)
        decoder.level_embed.normal_(0, 1, generator=generator)
        conv.weight.normal_(0, 1, generator=generator)
        norm.weight.normal_(1, 0.5, generator=generator)
        norm.bias.normal_(0, 1, generator=generator)
    (h0, w0), *rest = level_shapes
    s3 = torch.randn(batch, 8, h0, w0, generator=generator, dtype=torch.float64) * 3 + 1
    first = NormedProjection(s3, conv, norm)
    others = [torch.randn(batch, 32, h, w, generator=generator, dtype=torch.float64) for h, w in rest]
    s2 = torch.randn(batch, 32, 4 * rest[0][0], 4 * rest[0][1], generator=generator, dtype=torch.float64)
    text = TextContext(torch.randn(batch, 5, 32, generator=generator, dtype=torch.float64),
                       torch.tensor([[False, False, False, True, True]]))
    with torch.no_grad():
        expected = decoder(s2, [first.dense(), *others], text)
        eager = decoder(s2, [first, *others], text)
        with deform_conv.lowered_sampling():
            lowered = decoder(s2, [first, *others], text)
    for got in (eager, lowered):
        torch.testing.assert_close(got.selection_tokens, expected.selection_tokens, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.memory[0], expected.memory[0], rtol=1e-10, atol=1e-10)
    assert float(expected.selection_tokens.std()) > 0.5
