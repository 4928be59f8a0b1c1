"""MOBIUS model: output contract, gradients, pruning, track queries, weights I/O."""
import os
import pickle

import pytest
import torch

from perception_core.model.build import build_from_name, load_weights, save_weights

TINY = ["hidden_dim=64", "decoder.num_queries=30", "pruning.min_kept=5", "decoder.ffn_dim=128",
        "pixel_decoder.ffn_dim=128"]
PRESETS = ["mobius_nano", "glee_maskdino_mini_m", "glee_rtdetr_mini_m"]


def prompts(p=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(p, t, dtype=torch.bool)
    mask[0, 2:] = False
    return torch.randn(p, t, 384, generator=g), mask, torch.randn(p, 384, generator=g)


def tiny(name="mobius_nano", extra=()):
    torch.manual_seed(0)
    overrides = list(TINY) + list(extra)
    if name != "mobius_nano":  # keep the baselines' structure, shrink width and backbone
        overrides += ["backbone.variant=conv_small", "backbone.width_multiplier=0.5", "decoder.num_layers=3",
                      "pixel_decoder.heads=4", "decoder.heads=4"]
    return build_from_name(name, overrides)


@pytest.mark.parametrize("name", PRESETS)
def test_training_outputs_shapes_and_dtypes(name):
    model = tiny(name).train()
    images = torch.randn(2, 3, 64, 96)
    out = model(images, *prompts())
    layers = model.config.decoder.num_layers
    n = out["pred_logits"].shape[1]
    assert n == 30 or (name == "mobius_nano" and n == 24)  # nano: K = min(30, 4x6 bottleneck tokens)
    assert out["pred_logits"].shape == (2, n, 3) and out["pred_logits"].dtype == torch.float32
    assert out["pred_boxes"].shape == (2, n, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert out["pred_masks"].shape == (2, n, 16, 24)
    assert out["query_embed"].shape == (2, n, 64)
    assert out["kept_indices"].dtype == torch.int64 and out["kept_indices"].tolist() == list(range(n))
    assert out["kept_per_layer"].tolist() == [n] * layers
    assert len(out["aux_outputs"]) == layers - 1
    assert all(a["pred_masks"].shape == (2, n, 16, 24) for a in out["aux_outputs"])
    assert out["enc_outputs"]["pred_logits"].shape == (2, n, 3)


def _loss(model, images, text):
    out = model(images, *text)
    loss = sum(o.float().mean() for d in [out] + out["aux_outputs"]
               for k, o in d.items() if k in ("pred_logits", "pred_boxes", "pred_masks"))
    return loss + out["enc_outputs"]["pred_logits"].mean() + out["enc_outputs"]["pred_boxes"].mean()


def test_gradients_reach_every_parameter():
    model = tiny().train()
    images, text = torch.randn(2, 3, 64, 96), prompts()
    # box-refinement heads start as the identity (zero last layer), so their inner layers only
    # receive gradient after one update: take one SGD step, then check every parameter.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    _loss(model, images, text).backward()
    optimizer.step()
    optimizer.zero_grad()
    _loss(model, images, text).backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_pruning_removes_queries_from_later_layers():
    model = tiny(extra=["pruning.b_low=0.0", "pruning.b_high=1.0"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), *prompts())
    kept = out["kept_per_layer"].tolist()
    assert kept[0] == 24 and kept[-1] == 5 and kept == sorted(kept, reverse=True)
    assert out["pred_logits"].shape[1] == len(out["kept_indices"]) == 5
    # the survivors are the most confident queries of the previous layer: indices are unique
    assert len(set(out["kept_indices"].tolist())) == 5


def test_no_pruning_in_training_mode_and_when_disabled():
    model = tiny(extra=["pruning.enabled=false"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), *prompts())
    assert out["kept_per_layer"].tolist() == [24] * 4


def test_track_queries_are_prefixed():
    model = tiny(extra=["pruning.enabled=false"]).eval()
    tracks, boxes = torch.randn(1, 2, 64), torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3]]])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), *prompts(), prefix_queries=tracks, prefix_boxes=boxes)
    assert out["num_prefix"] == 2 and out["pred_logits"].shape[1] == 26


def test_deploy_graph_has_no_aux_outputs():
    model = tiny().deploy()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), *prompts(p=1))
    assert "aux_outputs" not in out and "enc_outputs" not in out and not model.training


def test_weights_round_trip_and_mismatch(tmp_path):
    model = tiny().eval()
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    other = build_from_name("mobius_nano", TINY)  # different random init
    load_weights(other.eval(), path)
    x, p = torch.randn(1, 3, 64, 96), prompts()
    with torch.no_grad():
        torch.testing.assert_close(model(x, *p)["pred_masks"], other(x, *p)["pred_masks"])
    with pytest.raises(ValueError, match="do not match|could not load"):
        load_weights(build_from_name("mobius_nano", TINY[1:] + ["hidden_dim=32"]), path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_weights(model, tmp_path / "missing.safetensors")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MOBIUS_EXPLOIT_MARKER', '/tmp/mobius_pwned')}",))


def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MOBIUS_EXPLOIT_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f, protocol=2)
    with pytest.raises(ValueError, match="could not load weights"):
        load_weights(tiny(), path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["mobius_nano", "glee_maskdino_mini_m"])
def test_deployed_decoder_samples_first_with_the_same_result_float64(name):
    """The deployed single-level decoder samples the memory before the value projection after its first
    layer (the cost then follows the kept queries); multi-level decoders project the memory as MaskDINO
    does. Both forms give the same predictions and keep the same queries, with and without track queries."""
    from perception_core.model.decoder import TransformerDecoder

    model = tiny(name, ["pruning.b_low=0.0", "pruning.b_high=1.0"]).deploy().double()
    with torch.no_grad():   # offsets far from the init, so taps leave the map
        for layer in model.decoder.layers:
            torch.nn.init.normal_(layer.cross_attn.sampling_offsets.weight, std=0.5)
            torch.nn.init.normal_(layer.cross_attn.value_proj.bias)
    images = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    tokens, mask, pooled = prompts()
    inputs = (images, tokens.double(), mask, pooled.double())
    tracks = {"prefix_queries": torch.randn(1, 2, 64, dtype=torch.float64),
              "prefix_boxes": torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.95, 0.6, 0.3, 0.3]]], dtype=torch.float64)}
    original = TransformerDecoder.forward

    def run(force: bool, extra: dict) -> dict:
        asked = []

        def forced(self, *args, sample_first, **kwargs):
            asked.append(sample_first)
            return original(self, *args, sample_first=force, **kwargs)

        with pytest.MonkeyPatch.context() as patch, torch.no_grad():
            patch.setattr(TransformerDecoder, "forward", forced)
            out = model(*inputs, **extra)
        assert asked == [True]   # deploy() asks for it
        return out

    for extra in ({}, tracks):
        samples, projects = run(True, extra), run(False, extra)
        assert torch.equal(samples["kept_per_layer"], projects["kept_per_layer"])
        if model.prune is not None:   # the baselines do not prune
            assert samples["kept_per_layer"][-1] < samples["kept_per_layer"][0]
        for key in ("pred_logits", "pred_boxes", "pred_masks", "query_embed"):
            torch.testing.assert_close(samples[key], projects[key], rtol=1e-9, atol=1e-9)
    attention = type(model.decoder.layers[0].cross_attn)
    sampled = []
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        method = attention.sample_first
        patch.setattr(attention, "sample_first", lambda *a: sampled.append(1) or method(*a))
        model(*inputs)
    # the first layer, which every query enters, projects the memory; the layers pruning thins out sample it
    assert len(sampled) == (len(model.decoder.layers) - 1 if model.config.memory_levels == 1 else 0)
