"""Pruning thresholds tau(l) (MOBIUS Sec. 3.3, Eq. 5-8; Tab. 14-15), without torch.

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
