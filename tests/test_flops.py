"""Tests for perception_core.model.flops and `mobius flops`. Small inputs (128 px, nano), 1 thread."""

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from perception_core.cli import main as cli_main
from perception_core.model.build import build_from_name
from perception_core.model.deform_attn import MSDeformAttn
from perception_core.model.flops import (FlopsReport, count_flops, flop_counter, format_table,
                                         text_encoder_flops)

torch.set_num_threads(1)

SIZE, PROMPTS, TOKENS = 128, 4, 6


def _flops(module: nn.Module, *inputs, counter: FlopCounterMode | None = None) -> int:
    counter = counter or flop_counter()
    with torch.no_grad(), counter:
        module(*inputs)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def nano_report() -> FlopsReport:
    return count_flops(build_from_name("mobius_nano"), SIZE, PROMPTS, TOKENS, prune=True)


def test_grid_sample_adds_exact_bilinear_count_to_deformable_attention():
    batch, queries, dim, heads, levels, points = 2, 5, 32, 4, 2, 3
    shapes = [(4, 4), (2, 2)]
    attention = MSDeformAttn(dim, levels=levels, heads=heads, points=points)
    inputs = (torch.randn(batch, queries, dim), torch.rand(batch, queries, levels, 2),
              torch.randn(batch, sum(h * w for h, w in shapes), dim), shapes)
    default = _flops(attention, *inputs, counter=FlopCounterMode(display=False))
    ours = _flops(attention, *inputs)
    # 4 bilinear taps = 4 MACs = 8 FLOPs per sampled value, C values per (query, level, point), and
    # the attention-weighted sum (one MAC per sampled value, elementwise, unseen by the default counter)
    assert ours - default == (8 + 2) * batch * queries * dim * levels * points
    # The default counter sees the projections (value, offsets, weights, output) and nothing else.
    tokens = sum(h * w for h, w in shapes)
    linears = 2 * batch * (tokens * dim * dim + queries * dim * (heads * levels * points * 3 + dim))
    assert default == linears


def test_linear_counts_two_flops_per_multiply_accumulate():
    tokens, in_features, out_features = 7, 24, 40
    assert _flops(nn.Linear(in_features, out_features), torch.randn(1, tokens, in_features)) \
        == 2 * in_features * out_features * tokens


def test_text_encoder_formula_matches_counter_on_minilm_shaped_layers():
    prompts, tokens = 3, 5
    layer = nn.TransformerEncoderLayer(384, 12, dim_feedforward=1536, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False).train()  # no fast path
    measured = _flops(encoder, torch.randn(prompts, tokens, 384))
    assert text_encoder_flops(prompts, tokens) * 1e9 == pytest.approx(measured, rel=1e-12)


def test_components_add_up_to_an_independent_whole_model_count():
    model = build_from_name("mobius_nano")
    report = count_flops(model, SIZE, PROMPTS, TOKENS, prune=True)
    generator = torch.Generator().manual_seed(0)  # the inputs count_flops uses (they decide pruning)
    inputs = (torch.randn(1, 3, SIZE, SIZE, generator=generator),
              torch.randn(PROMPTS, TOKENS, 384, generator=generator),
              torch.ones(PROMPTS, TOKENS, dtype=torch.bool), torch.randn(PROMPTS, 384, generator=generator))
    whole = _flops(model.deploy(), *inputs) / 1e9
    assert report.total == pytest.approx(report.vision_encoder + report.pixel_decoder + report.decoder_pruned,
                                         rel=1e-12)
    assert report.total == pytest.approx(whole, rel=1e-12)
    assert 0 < report.modality_fusion < report.pixel_decoder
    assert 0 < report.query_selection < report.decoder_pruned


def test_pruning_with_min_kept_below_k_reduces_decoder_flops():
    # Thresholds of 1.0 are never reached: exactly min_kept queries survive each pruning step.
    model = build_from_name("mobius_nano", ["pruning.b_low=1.0", "pruning.b_high=1.0", "pruning.min_kept=10"])
    report = count_flops(model, SIZE, PROMPTS, TOKENS, prune=True)
    queries = report.kept_per_layer[0]
    assert report.kept_per_layer == (queries, 10, 10, 10)
    assert report.decoder_pruned < report.decoder
    # Replaying the run's kept counts reproduces it, up to the pruning decision's rank and vote matmuls
    # (2 B N (N + 1) FLOPs per step, N queries entering it).
    replay = count_flops(model, SIZE, PROMPTS, TOKENS, prune=True, kept=report.kept_per_layer)
    decision = sum(2 * n * (n + 1) for n in report.kept_per_layer[:-1]) / 1e9
    assert replay.decoder_pruned + decision == pytest.approx(report.decoder_pruned, rel=1e-6)
    assert count_flops(model, SIZE, PROMPTS, TOKENS, prune=False).decoder_pruned == report.decoder
    with pytest.raises(ValueError, match="layers"):
        count_flops(model, SIZE, PROMPTS, TOKENS, kept=(queries, 10))


def test_modality_fusion_is_zero_without_text_fusion(nano_report):
    model = build_from_name("mobius_nano", ["pixel_decoder.text_fusion=false"])
    report = count_flops(model, SIZE, PROMPTS, TOKENS, prune=True)
    assert report.modality_fusion == 0.0
    assert nano_report.modality_fusion > 0.0
    assert report.pixel_decoder == pytest.approx(nano_report.pixel_decoder_without_fusion, rel=1e-12)


@pytest.mark.slow
def test_bottleneck_pixel_decoder_is_cheaper_than_maskdino_at_384():
    mobius = count_flops(build_from_name("mobius_mini_m"), 384, 8, TOKENS)
    maskdino = count_flops(build_from_name("glee_maskdino_mini_m"), 384, 8, TOKENS)
    assert mobius.vision_encoder == maskdino.vision_encoder  # same backbone: a like-for-like comparison
    assert mobius.pixel_decoder < 0.5 * maskdino.pixel_decoder


def test_format_table_shows_percentages_of_the_first_row(nano_report):
    half = FlopsReport(**{**nano_report.__dict__, "vision_encoder": nano_report.vision_encoder / 2})
    table = format_table({"base": nano_report, "half": half})
    rows = [line for line in table.splitlines() if line.startswith("| base") or line.startswith("| half")]
    assert "(100%)" in rows[0] and f"{nano_report.vision_encoder / 2:.2f} (50%)" in rows[1]


def test_cli_json_parses_and_has_the_component_keys(capsys):
    assert cli_main(["flops", "--config", "mobius_nano", "--size", str(SIZE), "--prompts", str(PROMPTS),
                     "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    report = payload["models"]["mobius_nano"]
    for key in ("vision_encoder", "pixel_decoder", "pixel_decoder_without_fusion", "modality_fusion",
                "decoder", "decoder_pruned", "total", "text_encoder", "kept_per_layer"):
        assert key in report
    assert payload["num_prompts"] == PROMPTS and payload["image_size"] == [SIZE, SIZE]


def test_cli_table_exits_zero(capsys):
    assert cli_main(["flops", "--config", "mobius_nano", "--size", str(SIZE)]) == 0
    assert "| mobius_nano |" in capsys.readouterr().out
