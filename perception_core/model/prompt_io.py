"""Prompt validation and the prompt embeddings file, without torch.

The onnxruntime path (runtime/prompts.py, the ROS node, `mobius infer`) checks prompts and reads
precomputed embeddings here, so a deployment with the default or precomputed prompts needs neither
torch nor the text encoder; text_encoder.py (torch, transformers) encodes new prompts.

File format (safetensors, written atomically): tensors tokens (P, T, TEXT_DIM) float32, mask (P, T)
bool, pooled (P, TEXT_DIM) float32; metadata format = FILE_FORMAT, encoder = ENCODER_NAME and the
prompts as a JSON list. `mobius prompts` writes one for any prompt list.
"""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np

TEXT_DIM = 384  # hidden size of MiniLM-L6-H384
MAX_PROMPTS = 256  # per encode() call; more is almost certainly a bug upstream
MAX_PROMPT_CHARS = 512  # prompts are class names or short phrases, not documents
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
FILE_FORMAT = "mobius.prompt_embeddings.v1"
ARRAYS = ("tokens", "mask", "pooled")


def validate_prompts(prompts: Sequence[str]) -> list[str]:
    """Return the prompts stripped of surrounding whitespace, or raise ValueError saying why not."""
    if isinstance(prompts, str):
        raise ValueError(f"prompts must be a list of str, got a single str; wrap it: [{prompts!r}]")
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a list or tuple of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; give at least one prompt, e.g. ['person']")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(
            f"got {len(prompts)} prompts; at most {MAX_PROMPTS} are allowed per call, split them"
        )
    stripped = []
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(
                f"prompt {index} is {type(prompt).__name__} ({prompt!r}), expected str"
            )
        prompt = prompt.strip()
        if not prompt:
            raise ValueError(
                f"prompt {index} is empty or whitespace-only; remove it or name a class"
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"prompt {index} has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are "
                f"allowed (prompts are short phrases such as 'red star')"
            )
        _check_characters(index, prompt)
        stripped.append(prompt)
    return stripped


def _check_characters(index: int, prompt: str) -> None:
    """ValueError for text the tokenizer cannot take or that reads as nothing: lone surrogates
    (not encodable as UTF-8), control characters (NUL, newline, ...), only invisible characters."""
    categories = [unicodedata.category(char) for char in prompt]
    for char, category in zip(prompt, categories):
        if category in ("Cs", "Cc"):
            what = "a lone surrogate (not valid Unicode text)" if category == "Cs" else "a control character"
            raise ValueError(f"prompt {index} contains {what} U+{ord(char):04X}; prompts are one line of "
                             f"plain text such as 'red star'")
    if all(category[0] in "CZ" for category in categories):
        raise ValueError(f"prompt {index} has no visible characters (only format or space characters); "
                         f"remove it or name a class")


def check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """ValueError unless tokens/mask/pooled are float32 (P, T, TEXT_DIM), bool (P, T) and float32
    (P, TEXT_DIM) with P >= 1 and at least one valid token per prompt."""
    missing = set(ARRAYS) - set(arrays)
    if missing:
        raise ValueError(f"lacks tensors {sorted(missing)}")
    tokens, mask, pooled = (arrays[name] for name in ARRAYS)
    prompts, width = mask.shape if mask.ndim == 2 else (0, 0)
    if (mask.dtype != np.bool_ or tokens.dtype != np.float32 or pooled.dtype != np.float32 or prompts < 1
            or tokens.shape != (prompts, width, TEXT_DIM) or pooled.shape != (prompts, TEXT_DIM)):
        raise ValueError(f"inconsistent embeddings: tokens {tokens.dtype} {tokens.shape}, mask {mask.dtype} "
                         f"{mask.shape}, pooled {pooled.dtype} {pooled.shape}; expected float32 (P, T, {TEXT_DIM}), "
                         f"bool (P, T) and float32 (P, {TEXT_DIM}) with P >= 1")
    if not mask.any(axis=1).all():
        raise ValueError("a prompt has no valid token")


def write_prompt_embeddings(path: str | os.PathLike, prompts: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
    """Write the file described in the module docstring; readers never see a half-written file."""
    from safetensors.numpy import save_file

    prompts = validate_prompts(prompts)
    arrays = {name: np.ascontiguousarray(arrays[name]) for name in ARRAYS}
    check_arrays(arrays)
    if len(prompts) != arrays["mask"].shape[0]:
        raise ValueError(f"{len(prompts)} prompts but {arrays['mask'].shape[0]} embeddings; they must match")
    metadata = {"format": FILE_FORMAT, "encoder": ENCODER_NAME, "prompts": json.dumps(prompts, ensure_ascii=False)}
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    save_file(arrays, str(partial), metadata=metadata)
    os.replace(partial, path)


def existing_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, or FileNotFoundError saying how to write a prompt embeddings file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt embeddings file '{path}' not found; write one with 'mobius prompts'")
    return path


def read_prompt_embeddings(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """(prompts, {tokens, mask, pooled}) from a file written by write_prompt_embeddings; ValueError or
    FileNotFoundError saying what is wrong with it."""
    from safetensors import SafetensorError, safe_open

    path = existing_file(path)
    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = file.metadata() or {}
            arrays = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"'{path}' is not a readable safetensors file ({error})") from error
    if metadata.get("format") != FILE_FORMAT:
        raise ValueError(f"'{path}' is not a prompt embeddings file (format {metadata.get('format')!r}, "
                         f"expected {FILE_FORMAT!r}); write one with 'mobius prompts'")
    try:
        prompts = validate_prompts(json.loads(metadata.get("prompts", "")))
        check_arrays(arrays)
    except ValueError as error:  # json.JSONDecodeError is a ValueError too
        raise ValueError(f"'{path}' is corrupt: {error}") from error
    if len(prompts) != arrays["mask"].shape[0]:
        raise ValueError(f"'{path}' is corrupt: {len(prompts)} prompts for {arrays['mask'].shape[0]} embeddings")
    return prompts, arrays
