"""Decoder FLOPs of one frame from the queries that entered each decoder layer (Fig. 4 / Tab. 15).

`model.flops.count_flops(model, kept=...)` replays the decoder with kept[l] queries entering layer
l; running it for every evaluated frame would cost a full model forward per frame. Instead
`DecoderCost.measure` calls count_flops a few times and derives, per layer, the change of cost when
n instead of K queries enter it. Every op FlopCounterMode counts in a decoder layer is linear in n
(projections, deformable sampling, FFN, box head, class logits; masks after the last layer) except
self-attention (Q K^T and A V), which is quadratic, so three measured points give that change
exactly; a fourth measured point checks it (RuntimeError if the model's decoder stops being
quadratic in n). The result equals count_flops(model, size, P, T, kept=kept).decoder_pruned.

Units and scope as count_flops: GFLOPs (2 x MACs), batch 1, query selection and the text
projections included (the "Decoder" columns of model/flops.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from ..model.flops import GIGA, count_flops


@dataclass(frozen=True)
class DecoderCost:
    """decoder GFLOPs(kept) = full + sum_{l >= 1} delta_l(kept[l]), delta_l(K) = 0."""
    full: float                                  # all K queries through all L layers (count_flops .decoder)
    num_queries: int                             # K
    deltas: tuple[tuple[Fraction, Fraction, Fraction], ...]  # per layer l >= 1: (a, b, c), delta_l(n) = a + b n + c n^2 FLOPs

    def gflops(self, kept: Sequence[int]) -> float:
        """GFLOPs of one frame whose decoder saw kept[l] queries entering layer l (L entries)."""
        kept = [int(n) for n in kept]
        if len(kept) != len(self.deltas) + 1 or kept[0] != self.num_queries:
            raise ValueError(f"kept_per_layer {kept} must have {len(self.deltas) + 1} entries starting with "
                             f"K={self.num_queries}")
        change = sum(a + b * n + c * n * n for (a, b, c), n in zip(self.deltas, kept[1:]))
        return self.full + float(change) / GIGA

    @staticmethod
    def measure(model, size: int, num_prompts: int, tokens: int) -> "DecoderCost":
        """Measures the cost table of `model` at a square `size` with P prompts of T tokens."""
        report = count_flops(model, size, num_prompts, tokens, prune=False)
        num_queries, layers = report.kept_per_layer[0], len(report.kept_per_layer)
        full = report.decoder
        if layers == 1:
            return DecoderCost(full, num_queries, ())
        points = _sample_points(num_queries)

        def tail(start: int, n: int) -> Fraction:
            """FLOPs change when n queries (instead of K) enter layers start..L-1."""
            kept = (num_queries,) * start + (n,) * (layers - start)
            pruned = count_flops(model, size, num_prompts, tokens, kept=kept).decoder_pruned
            return Fraction(round((pruned - full) * GIGA))

        tails = {(start, n): tail(start, n) for start in range(1, layers) for n in points}
        deltas = []
        for start in range(1, layers):
            values = {n: tails[(start, n)] - (tails[(start + 1, n)] if start + 1 < layers else 0) for n in points}
            fitted = _fit_quadratic(num_queries, values)
            for n, value in values.items():  # the third point (if any) checks the fit
                if fitted[0] + fitted[1] * n + fitted[2] * n * n != value:
                    raise RuntimeError(f"decoder layer {start}: FLOPs are not quadratic in the number of "
                                       f"queries (n={n}); update perception_core/ablation/decoder_flops.py")
            deltas.append(fitted)
        cost = DecoderCost(full, num_queries, tuple(deltas))
        _check_exact(cost, model, size, num_prompts, tokens, points)
        return cost


def _sample_points(num_queries: int) -> tuple[int, ...]:
    """Up to three distinct counts in [1, K) to fit at (with K itself: delta 0)."""
    candidates = sorted({max(1, num_queries // 4), max(1, num_queries // 2), max(1, (3 * num_queries) // 4)}
                        - {num_queries})
    if len(candidates) < 2:  # K <= 3: measure every count below K
        candidates = list(range(1, num_queries))
    return tuple(candidates)


def _fit_quadratic(num_queries: int, values: dict[int, Fraction]) -> tuple[Fraction, Fraction, Fraction]:
    """(a, b, c) with a + b n + c n^2 = values[n] and = 0 at n = K, from K and the first two points
    (exact rational arithmetic). With a single point (K = 2) the fit is linear."""
    points = [(num_queries, Fraction(0))] + [(n, values[n]) for n in sorted(values)][:2]
    if len(points) == 2:
        (x0, y0), (x1, y1) = points
        b = (y1 - y0) / (x1 - x0)
        return (y0 - b * x0, b, Fraction(0))
    (x0, y0), (x1, y1), (x2, y2) = points
    # Newton's divided differences, expanded to monomial coefficients.
    d01 = (y1 - y0) / (x1 - x0)
    d12 = (y2 - y1) / (x2 - x1)
    c = (d12 - d01) / (x2 - x0)
    b = d01 - c * (x0 + x1)
    a = y0 - b * x0 - c * x0 * x0
    return (a, b, c)


def _check_exact(cost: DecoderCost, model, size: int, num_prompts: int, tokens: int, points: Sequence[int]) -> None:
    """The fitted table against one more count_flops replay (a mixed kept_per_layer)."""
    layers = len(cost.deltas) + 1
    descending = sorted(points, reverse=True)
    kept = (cost.num_queries,) + tuple(descending[min(i, len(descending) - 1)] for i in range(layers - 1))
    measured = count_flops(model, size, num_prompts, tokens, kept=kept).decoder_pruned
    if abs(measured - cost.gflops(kept)) * GIGA > 0.5:
        raise RuntimeError(f"decoder FLOPs are not quadratic in the number of queries for kept={list(kept)} "
                           f"({measured * GIGA:.0f} measured vs {cost.gflops(kept) * GIGA:.0f} fitted); "
                           f"update perception_core/ablation/decoder_flops.py")
