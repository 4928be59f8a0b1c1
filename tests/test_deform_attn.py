"""Multi-scale deformable attention: grid_sample path vs a naive loop, in float64."""
import pytest
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


def _reference_module(attn: MSDeformAttn, query, reference_points, value, shapes):
    """Deformable-DETR's formulation of the module, read with the naive sampler: locations in [0, 1]
    (offsets divided by the level size, or scaled by half the box), weights softmaxed over L*P."""
    batch, queries, _ = query.shape
    heads, levels, points = attn.heads, attn.levels, attn.points
    value = attn.value_proj(value).view(batch, -1, heads, attn.dim // heads)
    offsets = attn.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
    weights = attn.attention_weights(query).view(batch, queries, heads, levels * points).softmax(-1)
    weights = weights.view(batch, queries, heads, levels, points)
    if reference_points.shape[-1] == 2:
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    else:
        locations = (reference_points[:, :, None, :, None, :2]
                     + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
    return attn.output_proj(ms_deform_attn_naive(value, shapes, locations, weights))


@pytest.mark.parametrize("levels", [1, 3])
def test_module_matches_deformable_detr_formulation_float64(levels):
    """The export layout (per-head batched matmuls, the 2/size scale folded into the offset weights,
    channels-first values) computes exactly Deformable-DETR's module, for point and box references
    and for token or channels-first values."""
    torch.manual_seed(0)
    shapes = [(5, 6), (3, 3), (2, 1)][:levels]
    attn = MSDeformAttn(dim=16, levels=levels, heads=4, points=3).double()
    for parameter in attn.parameters():   # far from the init, so offsets and weights really vary
        torch.nn.init.normal_(parameter, std=0.5)
    value = torch.randn(2, sum(h * w for h, w in shapes), 16, dtype=torch.float64)
    query = torch.randn(2, 4, 16, dtype=torch.float64)
    for ref in (torch.rand(2, 4, levels, 2, dtype=torch.float64),
                torch.rand(2, 4, levels, 4, dtype=torch.float64) * 0.6 + 0.2):
        with torch.no_grad():
            expected = _reference_module(attn, query, ref, value, shapes)
            tokens = attn(query, ref, value, shapes)
            channels_first = attn(query, ref, value.transpose(1, 2), shapes, channels_first=True)
        torch.testing.assert_close(tokens, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(channels_first, expected, rtol=1e-10, atol=1e-10)


def test_sample_first_equals_projecting_the_memory_first_float64():
    """Sampling the memory with a channel of ones and projecting the samples (the deployed decoder's
    form) is Deformable-DETR's attention on value_proj(memory + e), also for boxes reaching past the
    map, where some taps read the zero padding and the bias must shrink with them."""
    from perception_core.model.deform_attn import memory_for_sampling

    torch.manual_seed(1)
    shape = (5, 7)
    attentions = [MSDeformAttn(dim=16, levels=1, heads=4, points=3).double() for _ in range(2)]
    for attn in attentions:
        for parameter in attn.parameters():
            torch.nn.init.normal_(parameter, std=0.5)
    memory = torch.randn(2, 16, *shape, dtype=torch.float64)
    embedding = torch.randn(16, 1, dtype=torch.float64)
    query = torch.randn(2, 6, 16, dtype=torch.float64)
    boxes = torch.rand(2, 6, 4, dtype=torch.float64) * 1.2 - 0.1    # centres outside [0, 1] too
    boxes[..., 2:] = boxes[..., 2:].abs() + 0.3
    sampled = memory_for_sampling(attentions, memory, embedding)
    assert sampled[0].maps.shape == (2, 17, *shape) and sampled[0].maps is sampled[1].maps
    tokens = (memory.flatten(2) + embedding).transpose(1, 2)
    with torch.no_grad():
        for attn, own in zip(attentions, sampled):
            expected = _reference_module(attn, query, boxes[:, :, None], tokens, [shape])
            torch.testing.assert_close(attn.sample_first(query, boxes, own), expected, rtol=1e-10, atol=1e-10)
            # some taps read the zero padding: the bias's weight (the sampled ones channel) is below 1
            grids = attn._box_grids(query, boxes[:, :, None]).reshape(2, attn.heads, -1, 2)
            mass = torch.nn.functional.grid_sample(torch.ones(2, 1, *shape, dtype=torch.float64), grids,
                                                   align_corners=False)
            assert mass.min() < 0.5 and mass.max() > 1 - 1e-9
    with pytest.raises(ValueError, match="one memory level"):
        MSDeformAttn(dim=16, levels=2, heads=4, points=3).sample_first(query.float(), boxes.float(), sampled[0])
