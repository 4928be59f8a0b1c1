"""Multi-scale deformable attention: grid_sample path vs a naive loop, in float64."""
import torch

from perception_core.model.deform_attn import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_naive


def _random_inputs(shapes, batch=2, queries=5, heads=2, head_dim=3, points=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, head_dim, generator=g, dtype=torch.float64)
    # include locations outside [0, 1] to exercise zero padding at the borders
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=g, dtype=torch.float64)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    return value, locations, weights


def test_grid_sample_matches_naive_loop_float64():
    shapes = [(6, 7), (3, 4), (2, 2), (1, 1)]
    value, locations, weights = _random_inputs(shapes)
    fast = ms_deform_attn_core(value, shapes, locations, weights)
    slow = ms_deform_attn_naive(value, shapes, locations, weights)
    assert fast.shape == (2, 5, 6)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def test_sampling_exact_pixel_centre_returns_that_value():
    shapes = [(4, 5)]
    value = torch.arange(20, dtype=torch.float64).view(1, 20, 1, 1)
    # pixel (row 2, col 3) has centre ((3 + 0.5) / 5, (2 + 0.5) / 4)
    loc = torch.tensor([(3 + 0.5) / 5, (2 + 0.5) / 4], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn_core(value, shapes, loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == 2 * 5 + 3


def test_module_gradients_and_box_references():
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=16, levels=2, heads=4, points=2)
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(1, 20, 16, requires_grad=True)
    query = torch.randn(1, 3, 16)
    for ref in (torch.rand(1, 3, 2, 2), torch.rand(1, 3, 2, 4) * 0.5 + 0.25):
        out = attn(query, ref, value, shapes)
        assert out.shape == (1, 3, 16)
        out.sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
