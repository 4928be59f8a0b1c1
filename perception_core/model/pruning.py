"""Uncertainty-guided query pruning (MOBIUS Sec. 3.3, Eq. 5-8; Tab. 14-15).

After decoder layer l (0-based) every query whose calibrated confidence max_j sigmoid(logit_j) is
below tau(l) is removed, so later layers really process fewer queries. At least `min_kept` queries
(the most confident ones) always survive.

Schedules for l = 0..L-1 (b_low -> b_high):
    sigmoid (Eq. 5 / 8): b_low + (b_high - b_low) / (1 + exp(-beta * (l - L/2) / (L/10)))
    exp     (Eq. 6):     b_low + (b_high - b_low) * (exp(alpha * l/(L-1)) - 1) / (exp(alpha) - 1)
    log     (Eq. 7):     b_low + (b_high - b_low) * log(1 + alpha * l/(L-1)) / log(1 + alpha)
Eq. 5 writes the sigmoid exponent as -(10 beta / L)(l - L/2); that is the same as Eq. 8.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("sigmoid", "exp", "log")


def threshold(layer: int, num_layers: int, schedule: str, b_low: float, b_high: float,
              beta: float = 1.0, alpha: float = 3.0) -> float:
    """tau(l) for layer index `layer` in [0, num_layers)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pruning schedule {schedule!r}; choose one of {SCHEDULES}")
    span = b_high - b_low
    progress = layer / max(num_layers - 1, 1)
    if schedule == "sigmoid":
        return b_low + span / (1.0 + math.exp(-beta * (layer - num_layers / 2) / (num_layers / 10)))
    if schedule == "exp":
        return b_low + span * (math.exp(alpha * progress) - 1) / (math.exp(alpha) - 1)
    return b_low + span * math.log(1 + alpha * progress) / math.log(1 + alpha)


def thresholds(num_layers: int, schedule: str, b_low: float, b_high: float, beta: float = 1.0,
               alpha: float = 3.0) -> list[float]:
    return [threshold(l, num_layers, schedule, b_low, b_high, beta, alpha) for l in range(num_layers)]


def query_confidence(logits: Tensor) -> Tensor:
    """Calibrated confidence max_j sigmoid(logit_j): (B, N, P) -> (B, N).

    Uses topk rather than amax: onnxruntime's ReduceMax returns the wrong shape when N is 0."""
    return logits.sigmoid().topk(1, dim=-1).values[..., 0]


def select_kept(confidence: Tensor, tau: float | Tensor, min_kept: int | Tensor) -> Tensor:
    """Indices (N',) of queries to keep, shared by the batch.

    confidence: (B, N) calibrated confidence per query. A query is kept if, in any image of the batch,
    its confidence reaches tau or it is among that image's `min_kept` most confident queries (a union,
    so batched inference never drops what single-image inference would keep). The order of the
    surviving queries is preserved. Data-dependent size; exports through torch.export as a
    `nonzero`, and may be empty when min_kept == 0.
    """
    keep = confidence >= tau
    if isinstance(min_kept, Tensor) or min_kept > 0:
        # rank of each query within its image: how many are strictly more confident (tied queries
        # share a rank, so a tie at the min_kept boundary keeps all of them). Counted by comparing all
        # pairs, (B, N, N) for N <= a few hundred, and summed as a matmul (onnxruntime's reductions
        # mishandle an empty query axis): a handful of nodes, where argsort twice took two TopKs and
        # their shape arithmetic. Works for any N, including N < min_kept and N = 0.
        higher = (confidence[:, None, :] > confidence[:, :, None]).to(confidence.dtype)   # [b, i, j]: c_j > c_i
        rank = torch.matmul(higher, confidence.new_ones(confidence.shape[1], 1))[..., 0]
        keep = keep | (rank < min_kept)
    # keep.any(dim=0) written as a matmul: onnxruntime's reductions return the wrong rank when the
    # query axis is empty (every query pruned), a matmul with an empty axis does not.
    votes = torch.matmul(torch.ones(1, keep.shape[0], dtype=torch.float32, device=keep.device), keep.float())
    return (votes[0] > 0).nonzero().squeeze(1)
