"""Prompt list -> the text inputs of the model (numpy), encoded once per distinct list.

Prompts are looked up, in order, in a prompt embeddings file the caller names (written by
`mobius prompts`), then in the shipped embeddings of assets.DEFAULT_PROMPTS; any of their subsets is
served from the file without a text model, so this path needs neither torch nor transformers. Other
prompts go through MiniLM (one encoder per max_tokens for the whole process, with its LRU cache),
which needs the `train` extra.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model.prompt_io import existing_file, read_prompt_embeddings, validate_prompts

_ENCODERS: dict[int, object] = {}
_LOCK = threading.Lock()
_FILES: dict[str, tuple[tuple[int, int], dict[str, int], dict[str, np.ndarray]]] = {}  # path -> stamp, rows, arrays


def _encoder(max_tokens: int):
    try:
        from ..model.text_encoder import MiniLMTextEncoder
    except ImportError as error:
        raise ValueError(f"encoding new prompts needs the text encoder, which cannot be imported here ({error}); "
                         f"install it (pip install '.[train]'), or write the prompts' embeddings on a machine that "
                         f"has it with 'mobius prompts --out FILE ...' and pass that file as prompt_embeddings "
                         f"(--prompt-embeddings)") from None
    with _LOCK:
        if max_tokens not in _ENCODERS:
            _ENCODERS[max_tokens] = MiniLMTextEncoder(max_tokens=max_tokens, cache_size=64)
        return _ENCODERS[max_tokens]


def _file(path: Path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """(row of each prompt, arrays) of a prompt embeddings file, read again only when it changed."""
    stat = existing_file(path).stat()
    key, stamp = str(path.resolve()), (stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        if key not in _FILES or _FILES[key][0] != stamp:
            names, arrays = read_prompt_embeddings(path)
            _FILES[key] = (stamp, {name: row for row, name in enumerate(names)}, arrays)
        return _FILES[key][1:]


def _rows(path: Path, names: list[str], max_tokens: int) -> dict[str, np.ndarray] | None:
    """The model's text inputs for `names` from the file's rows, or None when the file lacks a prompt or
    encoded one with more than max_tokens tokens. Padding columns no chosen prompt uses are dropped, so
    the result equals encoding `names` alone."""
    rows, arrays = _file(path)
    if any(name not in rows for name in names):
        return None
    index = [rows[name] for name in names]
    mask = arrays["mask"][index]
    width = int(mask.sum(axis=1).max())
    if width > max_tokens:
        return None
    return {"text_tokens": np.ascontiguousarray(arrays["tokens"][index, :width]),
            "text_mask": np.ascontiguousarray(mask[:, :width]),
            "text_pooled": np.ascontiguousarray(arrays["pooled"][index])}


def _to_numpy(text) -> dict[str, np.ndarray]:
    return {"text_tokens": text.tokens.detach().cpu().numpy().astype(np.float32),
            "text_mask": text.mask.detach().cpu().numpy().astype(bool),
            "text_pooled": text.pooled.detach().cpu().numpy().astype(np.float32)}


def encode_prompts(prompts: Sequence[str], max_tokens: int = 16,
                   embeddings: str | Path | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Validated prompts and {text_tokens (P, T, 384), text_mask (P, T) bool, text_pooled (P, 384)}.

    embeddings: a prompt embeddings file to take the prompts from when it holds all of them (read
    errors are raised, not skipped: a named file that cannot be read is a configuration error).
    Raises ValueError for a bad prompt list (empty, not strings, too long, ...)."""
    from .. import assets

    names = validate_prompts(list(prompts) if isinstance(prompts, tuple) else prompts)
    files = [Path(embeddings)] if embeddings is not None else []
    if assets.PROMPT_EMBEDDINGS.is_file():
        files.append(assets.PROMPT_EMBEDDINGS)
    for path in files:
        text = _rows(path, names, max_tokens)
        if text is not None:
            return names, text
    return names, _to_numpy(_encoder(max_tokens).encode(names))
