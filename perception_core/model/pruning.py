"""Uncertainty-guided query pruning (MOBIUS Sec. 3.3, Eq. 5-8; Tab. 14-15).

After decoder layer l (0-based) every query whose calibrated confidence max_j sigmoid(logit_j) is
below tau(l) is removed, so later layers really process fewer queries. At least `min_kept` queries
(the most confident ones) always survive.

The thresholds tau(l) are in prune_schedule.py (torch-free: the onnxruntime path computes them).
"""
from __future__ import annotations

import torch
from torch import Tensor


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
