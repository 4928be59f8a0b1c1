"""Shared test fixtures: deterministic seeds for every test; nothing else belongs here."""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seeds Python, NumPy and (only if a test already imported it) torch with 0.

    torch is never imported here: tests of the onnxruntime path must be able to check that
    they run without it.
    """
    random.seed(0)
    np.random.seed(0)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
