"""Pruning schedules (MOBIUS Eq. 5-8) and query selection."""
import math

import pytest
import torch

from perception_core.model.prune_schedule import threshold, thresholds
from perception_core.model.pruning import query_confidence, select_kept


@pytest.mark.parametrize("layers", [6, 9])
def test_sigmoid_matches_eq5_and_eq8(layers):
    b_low, b_high, beta = 0.05, 0.2, 1.3
    for l in range(layers):
        eq5 = b_low + (b_high - b_low) / (1 + math.exp(-(10 * beta / layers) * (l - layers / 2)))
        eq8 = b_low + (b_high - b_low) * 1 / (1 + math.exp(-beta * ((l - layers / 2) / (layers / 10))))
        value = threshold(l, layers, "sigmoid", b_low, b_high, beta=beta)
        assert value == pytest.approx(eq5, abs=1e-12) and value == pytest.approx(eq8, abs=1e-12)


def test_exp_and_log_match_eq6_eq7_and_hit_the_bounds():
    layers, lo, hi, alpha = 9, 0.05, 0.2, 3.0
    exp_values = thresholds(layers, "exp", lo, hi, alpha=alpha)
    log_values = thresholds(layers, "log", lo, hi, alpha=alpha)
    for l in range(layers):
        x = l / (layers - 1)
        assert exp_values[l] == pytest.approx(lo + (hi - lo) * (math.exp(alpha * x) - 1) / (math.exp(alpha) - 1))
        assert log_values[l] == pytest.approx(lo + (hi - lo) * math.log(1 + alpha * x) / math.log(1 + alpha))
    assert exp_values[0] == pytest.approx(lo) and exp_values[-1] == pytest.approx(hi)
    assert log_values[0] == pytest.approx(lo) and log_values[-1] == pytest.approx(hi)
    # exp keeps more early (lower thresholds) than log at every inner layer
    assert all(e < g for e, g in zip(exp_values[1:-1], log_values[1:-1]))
    assert all(a <= b for a, b in zip(exp_values, exp_values[1:]))


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown pruning schedule 'cosine'"):
        threshold(0, 9, "cosine", 0.05, 0.2)


def test_select_kept_threshold_min_kept_and_batch_union():
    conf = torch.tensor([[0.9, 0.1, 0.3, 0.05, 0.25],
                         [0.0, 0.0, 0.0, 0.6, 0.0]])
    assert select_kept(conf[:1], 0.2, 0).tolist() == [0, 2, 4]
    assert select_kept(conf[:1], 0.95, 2).tolist() == [0, 2]          # the two most confident survive
    assert select_kept(conf, 0.5, 0).tolist() == [0, 3]                # union over the batch
    assert select_kept(conf[:1], 2.0, 0).numel() == 0                  # everything pruned
    assert select_kept(conf[:1], 2.0, 10).tolist() == [0, 1, 2, 3, 4]  # min_kept > N keeps all


def test_select_kept_min_kept_is_the_top_k_and_keeps_ties_at_the_boundary():
    generator = torch.Generator().manual_seed(0)
    conf = torch.rand(3, 50, generator=generator)
    for k in (1, 7, 49, 50, 80):
        kept = select_kept(conf, 2.0, k)                      # tau above every score: min_kept alone
        expected = set()
        for row in conf:
            expected |= set(row.topk(min(k, 50)).indices.tolist())
        assert kept.tolist() == sorted(expected)
    tied = torch.tensor([[0.5, 0.9, 0.5, 0.1]])
    assert select_kept(tied, 2.0, 2).tolist() == [0, 1, 2]    # both 0.5s share rank 1
    assert select_kept(torch.zeros(1, 0), 0.5, 3).numel() == 0


def test_query_confidence_is_max_sigmoid_and_handles_empty():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, -3.0]]])
    torch.testing.assert_close(query_confidence(logits), torch.sigmoid(torch.tensor([[2.0, -1.0]])))
    assert query_confidence(torch.zeros(1, 0, 3)).shape == (1, 0)
