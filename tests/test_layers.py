"""Channels-first layouts of the shared layers (the bottleneck pixel decoder runs in (B, C, N)): every
layout computes what the tokens-first (B, N, C) layout computes, in float64."""
import pytest
import torch

from perception_core.model import deform_conv
from perception_core.model.layers import (FFN, MultiHeadAttention, TokenGroupNorm, box_position_embedding, export_form,
                                          l2_normalize, linear_channels_first)


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return module


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("query_cf,kv_cf", [(False, False), (True, False), (False, True), (True, True)])
def test_attention_channels_first_equals_tokens_first_float64(query_cf, kv_cf, folded):
    """Every layout, with position embeddings added to query and key (folded into the projections'
    biases in the export form), equals the tokens-first layout with the embeddings added first."""
    attn = _randomize(MultiHeadAttention(16, heads=4).double(), 0)
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 7, 16, generator=generator, dtype=torch.float64)
    keys = torch.randn(2, 5, 16, generator=generator, dtype=torch.float64)
    values = torch.randn(2, 5, 16, generator=generator, dtype=torch.float64)
    query_pos = torch.randn(7, 16, generator=generator, dtype=torch.float64)
    key_pos = torch.randn(5, 16, generator=generator, dtype=torch.float64)
    padding = torch.tensor([[False, False, True, False, True]])
    expected = attn(query + query_pos, keys + key_pos, values, key_padding_mask=padding)
    cf = lambda t, flag: t.transpose(-2, -1) if flag else t  # noqa: E731

    def run():
        with export_form(folded):
            return attn(cf(query, query_cf), cf(keys, kv_cf), cf(values, kv_cf), key_padding_mask=padding,
                        query_channels_first=query_cf, kv_channels_first=kv_cf, query_pos=cf(query_pos, query_cf),
                        key_pos=cf(key_pos, kv_cf))

    got = run()
    torch.testing.assert_close(cf(got, query_cf), expected, rtol=1e-12, atol=1e-12)
    # the padded keys are really ignored: changing them changes nothing
    values[:, 2] += 100.0
    again = run()
    torch.testing.assert_close(again, got, rtol=1e-12, atol=1e-12)


def test_attention_takes_zero_queries_in_either_layout():
    attn = MultiHeadAttention(16, heads=4)
    keys = torch.randn(1, 5, 16)
    assert attn(torch.zeros(1, 0, 16), keys, keys).shape == (1, 0, 16)
    assert attn(torch.zeros(1, 16, 0), keys, keys, query_channels_first=True).shape == (1, 16, 0)


def test_ffn_norm_and_linear_channels_first_equal_tokens_first_float64():
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 9, 16, generator=generator, dtype=torch.float64)
    ffn = _randomize(FFN(16, 24).double(), 3)
    torch.testing.assert_close(ffn(tokens.transpose(1, 2), channels_first=True).transpose(1, 2), ffn(tokens),
                               rtol=1e-12, atol=1e-12)
    norm = _randomize(TokenGroupNorm(4, 16).double(), 4)
    torch.testing.assert_close(norm(tokens.transpose(1, 2), channels_first=True).transpose(1, 2), norm(tokens),
                               rtol=1e-12, atol=1e-12)
    linear = ffn.linear1
    torch.testing.assert_close(linear_channels_first(linear, tokens.transpose(1, 2)).transpose(1, 2), linear(tokens),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("queries", [0, 1, 37])
def test_box_position_embedding_export_form_equals_sin_cos_float64(queries):
    """The export's sin(boxes @ F + phase) is DAB-DETR's interleaved (sin, cos) embedding per coordinate."""
    boxes = torch.rand(2, queries, 4, dtype=torch.float64)
    expected = box_position_embedding(boxes, 64)
    with export_form():
        got = box_position_embedding(boxes, 64)
    assert got.shape == expected.shape == (2, queries, 128)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if queries:   # the layout itself: coordinate 1 (cy), frequency 0, (sin, cos)
        angle = boxes[0, 0, 1] * 2 * torch.pi
        torch.testing.assert_close(got[0, 0, 32:34], torch.stack([angle.sin(), angle.cos()]))


def test_l2_normalize_is_f_normalize_float64():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    x[0, 0] = 0.0                                  # a zero vector stays zero, as with F.normalize's eps
    torch.testing.assert_close(l2_normalize(x), torch.nn.functional.normalize(x, dim=-1), rtol=0, atol=0)


@pytest.mark.parametrize("embedding", [None, "column", "full"])
def test_project_many_export_form_equals_eager_float64(embedding):
    """The export's ones-row form (one bias column per projection) is W (x + e) + b."""
    from perception_core.model.deform_attn import MSDeformAttn, project_many

    torch.manual_seed(0)
    attentions = [MSDeformAttn(16, levels=1, heads=2, points=2).double() for _ in range(3)]
    for attention in attentions:
        torch.nn.init.normal_(attention.value_proj.bias)
    value = torch.randn(2, 16, 30, dtype=torch.float64)
    e = {None: None, "column": torch.randn(16, 1, dtype=torch.float64),
         "full": torch.randn(16, 30, dtype=torch.float64)}[embedding]
    eager = project_many(attentions, value, e)
    with export_form():
        exported = project_many(attentions, value, e)
    for a, got, want in zip(attentions, exported, eager):
        expected = a.value_proj.weight @ (value if e is None else value + e) + a.value_proj.bias[:, None]
        torch.testing.assert_close(want.tensor, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.tensor, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lowered,folded", [(False, False), (True, False), (True, True)])
def test_deformable_attention_channels_first_query_float64(lowered, folded):
    """A channels-first query with its position embedding passed apart (folded into the offset and
    weight linears in the export form) samples what the tokens-first query with it added does."""
    from perception_core.model.deform_attn import MSDeformAttn

    shapes = [(6, 5), (3, 3)]
    attn = _randomize(MSDeformAttn(16, levels=2, heads=4, points=3).double(), 5)
    generator = torch.Generator().manual_seed(6)
    query = torch.randn(2, 12, 16, generator=generator, dtype=torch.float64)
    ref = torch.rand(2, 12, 2, 2, generator=generator, dtype=torch.float64)
    value = torch.randn(2, 39, 16, generator=generator, dtype=torch.float64)
    pos = torch.randn(12, 16, generator=generator, dtype=torch.float64)
    expected = attn(query + pos, ref, value, shapes)
    with deform_conv.lowered_sampling(lowered), export_form(folded):
        got = attn(query.transpose(1, 2), ref, value, shapes, query_channels_first=True, query_pos=pos.t())
    assert got.shape == (2, 16, 12)
    torch.testing.assert_close(got.transpose(1, 2), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("exported", [False, True])
def test_bottleneck_block_is_equations_1a_to_1e_tokens_first_float64(exported):
    """The channels-first block against Eq. 1a-1e written out in the (B, N, C) layout with the same
    modules; also in the export's form (lowered sampling, position embeddings folded)."""
    from perception_core.model.deform_attn import project_many
    from perception_core.model.layers import reference_grid, sine_position_embedding
    from perception_core.model.pixel_decoder_bottleneck import BottleneckBlock
    from perception_core.model.pixel_decoder_common import TextContext

    block = _randomize(BottleneckBlock(16, heads=4, points=2, ffn_dim=24, text_fusion=True, update_text=True)
                       .double(), 7)
    generator = torch.Generator().manual_seed(8)
    shapes = [(8, 6), (4, 3), (2, 2), (1, 1)]
    levels = [torch.randn(2, 16, h, w, generator=generator, dtype=torch.float64) for h, w in shapes]
    flat = torch.cat([f.flatten(2) for f in levels], dim=2)                      # (B, C, S)
    text = TextContext(torch.randn(2, 5, 16, generator=generator, dtype=torch.float64),
                       torch.tensor([[False, False, False, True, True]]))
    pos = sine_position_embedding(4, 3, 16, dtype=torch.float64)                   # (N, C)
    ref = reference_grid([(4, 3)], dtype=torch.float64)
    bottleneck = levels[1].flatten(2)                                             # (B, C, N)
    with deform_conv.lowered_sampling(exported), export_form(exported):
        got, got_text = block(bottleneck, pos.t(), text, (4, 3), project_many([block.cross_attn], flat)[0], shapes,
                              ref)

    x = bottleneck.transpose(1, 2)                                                # (B, N, C)
    fusion = block.fusion
    x1 = fusion.norm_image_text(x + fusion.image_to_text(x + pos, text.tokens, text.tokens,
                                                         key_padding_mask=text.padding))           # 1a
    tokens = fusion.norm_text(text.tokens + fusion.text_to_image(text.tokens, x + pos, x))        # 1b
    x2 = block.norm_self(x1 + block.self_attn(x1 + pos, ref[None, :, None].expand(2, -1, 1, -1), x1, [(4, 3)]))
    x3 = block.norm_cross(x2 + block.cross_attn(x2 + pos, ref[None, :, None].expand(2, -1, 4, -1),
                                                flat.transpose(1, 2), shapes))                    # 1d
    x4 = block.norm_ffn(x3 + block.ffn(x3))                                                       # 1e
    assert float(x4.detach().std()) > 0.5
    torch.testing.assert_close(got.transpose(1, 2), x4, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_text.tokens, tokens, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("overrides", [[], ["decoder.multi_scale=true"], ["pixel_decoder.bottleneck_stride=8"]],
                         ids=["default", "multi_scale_memory", "bottleneck_is_s3"])
def test_whole_model_export_form_equals_eager_float64(overrides):
    """Everything the export changes at once (folded constants, factored S3 where it is only read through
    the value projections, the canvas and DeformConv sampling, the decoder's trimmed forms) computes the
    eager model's outputs, with pruning, whether S3 is factored, formed for multi-scale decoder memory,
    or is the bottleneck itself."""
    from test_mask_features import float64_inputs

    from perception_core.model.build import build_from_name

    torch.manual_seed(0)
    model = build_from_name("mobius_nano", overrides).eval().double()
    inputs = float64_inputs(1, 256, 256)
    with torch.no_grad():
        expected = model(*inputs)
        with export_form(), deform_conv.lowered_sampling():
            got = model(*inputs)
    assert got["kept_indices"].tolist() == expected["kept_indices"].tolist()
    for key in ("pred_logits", "pred_boxes", "pred_masks", "query_embed"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-10, atol=1e-10)
    assert float(expected["pred_masks"].std()) > 0.1
