"""Prompt list -> the text inputs of the model (numpy), encoded once per distinct list.

The shipped embeddings (assets.PROMPT_EMBEDDINGS) are used when the prompts equal
assets.DEFAULT_PROMPTS, so the default deployment needs no text model; any other list goes through
MiniLM (one encoder per max_tokens for the whole process, with its LRU cache).
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

_ENCODERS: dict[int, object] = {}
_LOCK = threading.Lock()
_SHIPPED: dict[str, np.ndarray] | None = None


def _encoder(max_tokens: int):
    from ..model.text_encoder import MiniLMTextEncoder

    with _LOCK:
        if max_tokens not in _ENCODERS:
            _ENCODERS[max_tokens] = MiniLMTextEncoder(max_tokens=max_tokens, cache_size=64)
        return _ENCODERS[max_tokens]


def _shipped_embeddings() -> dict[str, np.ndarray] | None:
    """Text inputs of assets.DEFAULT_PROMPTS from the shipped file, or None when it is absent."""
    global _SHIPPED
    from .. import assets
    from ..model.text_encoder import load_prompt_embeddings

    if _SHIPPED is None and assets.PROMPT_EMBEDDINGS.is_file():
        names, text = load_prompt_embeddings(assets.PROMPT_EMBEDDINGS)
        if tuple(names) == tuple(assets.DEFAULT_PROMPTS):
            _SHIPPED = _to_numpy(text)
    return _SHIPPED


def _to_numpy(text) -> dict[str, np.ndarray]:
    return {"text_tokens": text.tokens.detach().cpu().numpy().astype(np.float32),
            "text_mask": text.mask.detach().cpu().numpy().astype(bool),
            "text_pooled": text.pooled.detach().cpu().numpy().astype(np.float32)}


def encode_prompts(prompts: Sequence[str], max_tokens: int = 16) -> tuple[list[str], dict[str, np.ndarray]]:
    """Validated prompts and {text_tokens (P, T, 384), text_mask (P, T) bool, text_pooled (P, 384)}.
    Raises ValueError for a bad prompt list (empty, not strings, too long, ...)."""
    from .. import assets
    from ..model.text_encoder import validate_prompts

    names = validate_prompts(list(prompts) if isinstance(prompts, tuple) else prompts)
    if tuple(names) == tuple(assets.DEFAULT_PROMPTS):
        shipped = _shipped_embeddings()
        if shipped is not None and shipped["text_mask"].shape[1] <= max_tokens:
            return names, shipped
    return names, _to_numpy(_encoder(max_tokens).encode(names))
