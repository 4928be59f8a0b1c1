"""Factored mask features: masks read without forming the stride-4 maps equal the dense reads."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perception_core.model.build import build_from_name
from perception_core.model.neck import NormedProjection
from perception_core.model.layers import export_form
from perception_core.model.pixel_decoder_common import MaskFeatures, linear_resize_matrix


def _normed_projection(batch=2, cin=5, channels=12, groups=4, size=(7, 9), seed=0) -> NormedProjection:
    g = torch.Generator().manual_seed(seed)
    norm = nn.GroupNorm(groups, channels).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        norm.bias.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
    # an offset and uneven scales per input channel, so the group statistics are far from trivial
    spread = torch.linspace(0.2, 3, cin, dtype=torch.float64)[:, None, None]
    inputs = torch.randn(batch, cin, *size, generator=g, dtype=torch.float64) * spread + 1.5
    conv = nn.Conv2d(cin, channels, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(channels, cin, 1, 1, generator=g, dtype=torch.float64))
    return NormedProjection(inputs, conv, norm)


def test_normed_projection_read_equals_kernels_dot_groupnorm_float64():
    fine = _normed_projection()
    kernels = torch.randn(2, 6, 12, dtype=torch.float64)
    dense = fine.dense()
    assert dense.shape == fine.shape == (2, 12, 7, 9)
    expected = torch.einsum("bnc,bchw->bnhw", kernels, dense)
    torch.testing.assert_close(fine.read(kernels), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bias_shape", ["per_channel", "per_pixel"])
def test_normed_projection_project_equals_linear_of_groupnorm_float64(bias_shape):
    """V GN(W x) + b for several V from one set of input statistics, without forming GN(W x)."""
    fine = _normed_projection()
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(cout, 12, generator=g, dtype=torch.float64) for cout in (12, 7)]
    pixels = 1 if bias_shape == "per_channel" else 7 * 9
    biases = [torch.randn(w.shape[0], pixels, generator=g, dtype=torch.float64) for w in weights]
    dense = fine.dense().flatten(2)
    got = fine.project(weights, biases)
    for out, weight, bias in zip(got, weights, biases):
        assert out.shape == (2, weight.shape[0], 7 * 9)
        torch.testing.assert_close(out, torch.matmul(weight, dense) + bias, rtol=1e-10, atol=1e-10)
    scale, offset = fine.group_affine()
    torch.testing.assert_close(scale[:, :, None] * torch.matmul(fine.weight, fine.inputs.flatten(2))
                               + offset[:, :, None], dense, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("as_matmul", [False, True])
@pytest.mark.parametrize("factored_fine", [False, True])
def test_mask_features_read_equals_dense_map_float64(factored_fine, as_matmul):
    """upsample((kW) . coarse) + (kW) . fine + k . b == k . (W (upsample(coarse) + fine) + b)."""
    g = torch.Generator().manual_seed(1)
    fine = _normed_projection(seed=2)
    if not factored_fine:
        fine = fine.dense()
    proj = nn.Conv2d(12, 12, 1).double()
    with torch.no_grad():
        proj.weight.copy_(torch.randn(12, 12, 1, 1, generator=g, dtype=torch.float64))
        proj.bias.copy_(torch.randn(12, generator=g, dtype=torch.float64))
    features = MaskFeatures(torch.randn(2, 12, 3, 4, generator=g, dtype=torch.float64), fine, proj)
    kernels = torch.randn(2, 5, 12, dtype=torch.float64)
    expected = torch.einsum("bnc,bchw->bnhw", kernels, features.dense())
    assert features.dense().shape == (2, 12, 7, 9)
    with export_form(as_matmul):
        read = features.read(kernels)
    torch.testing.assert_close(read, expected, rtol=1e-10, atol=1e-10)


def float64_inputs(seed: int, height: int, width: int) -> tuple:
    """Model inputs in float64 from one seeded generator: an image, 3 prompts x 4 tokens (all valid) of
    384-d text tokens, and their pooled embeddings."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 3, height, width, generator=g, dtype=torch.float64),
            torch.randn(3, 4, 384, generator=g, dtype=torch.float64), torch.ones(3, 4, dtype=torch.bool),
            torch.randn(3, 384, generator=g, dtype=torch.float64))


def test_deployed_masks_equal_training_graph_masks():
    """The deployment graph reads masks factored; eval mode without deploy forms M densely. Same
    queries kept (same pruning), so the last layer's masks must agree."""
    torch.manual_seed(0)
    model = build_from_name("mobius_nano", ["hidden_dim=64", "decoder.num_queries=20", "pruning.min_kept=5",
                                            "decoder.ffn_dim=128", "pixel_decoder.ffn_dim=128"]).double().eval()
    inputs = float64_inputs(3, 64, 96)
    with torch.no_grad():
        dense = model(*inputs)
        factored = model.deploy()(*inputs)
    assert "aux_outputs" in dense and "aux_outputs" not in factored
    assert torch.equal(dense["kept_indices"], factored["kept_indices"])
    torch.testing.assert_close(factored["pred_masks"], dense["pred_masks"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("size_in,size_out", [(24, 96), (6, 24), (7, 9), (5, 5), (9, 4)])
def test_linear_resize_matrix_is_interpolate_float64(size_in, size_out):
    """U_h x U_w^T is F.interpolate's bilinear resize (borders clamped, align_corners=False), and every
    row sums to 1, which MaskFeatures.read relies on to add per-kernel constants before upsampling."""
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(2, 3, size_in, size_in + 2, generator=g, dtype=torch.float64)
    rows = linear_resize_matrix(size_in, size_out, maps)
    cols = linear_resize_matrix(size_in + 2, size_out + 3, maps)
    expected = F.interpolate(maps, size=(size_out, size_out + 3), mode="bilinear", align_corners=False)
    torch.testing.assert_close(rows @ maps @ cols.t(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows.sum(1), torch.ones(size_out, dtype=torch.float64), rtol=0, atol=1e-12)
