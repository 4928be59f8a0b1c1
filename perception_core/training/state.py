"""The counters of a training run and the outcome of one step (shared by the engine, its
checkpoints and its metrics log)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    step: int = 0                    # optimizer steps done (batches consumed, skipped ones included)
    skipped_steps: int = 0           # non-finite steps skipped so far
    consecutive_nonfinite: int = 0


@dataclass
class StepResult:
    step: int                        # state.step after this step (1-based)
    loss: float                      # weighted total, mean over ranks; nan if skipped
    losses: dict[str, float]         # unweighted last-layer losses, mean over ranks
    lr: float
    grad_norm: float
    skipped: bool
