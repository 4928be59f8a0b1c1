"""Tests for perception_core.model.backbone (MobileNetV4 conv family). Tiny inputs, 1 thread."""

import math
import os
import pickle

import pytest
import torch

from perception_core.model.backbone import (
    VARIANTS,
    MobileNetV4,
    build_backbone,
    load_backbone_weights,
)

torch.set_num_threads(1)

HEIGHT, WIDTH = 97, 130  # odd, non-square: exercises ceil(H / stride)
EXPECTED_CHANNELS = {
    "conv_small": (32, 64, 96, 128),
    "conv_medium": (48, 80, 160, 256),
    "conv_large": (48, 96, 192, 512),
}
# Regression pins for the block tables (backbone only, no head); see the module docstring.
EXPECTED_PARAMS = {"conv_small": 1_136_864, "conv_medium": 6_955_472, "conv_large": 29_585_064}
# Paper's "with head" counts (M); the dropped head is conv 960 + BN, conv 1280 + BN, FC 1000.
PAPER_PARAMS_WITH_HEAD = {"conv_small": 3.8, "conv_large": 32.6}


def _nano() -> MobileNetV4:
    return MobileNetV4("conv_small", width_multiplier=0.5)


def _randomize_batchnorm(model: MobileNetV4, seed: int) -> None:
    """Give BN non-default stats/affine so a state-dict round trip is a meaningful check."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_have_paper_channels_and_ceil_strides(variant):
    model = MobileNetV4(variant).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, HEIGHT, WIDTH))
    assert model.out_channels == EXPECTED_CHANNELS[variant]
    assert model.strides == (4, 8, 16, 32)
    assert len(features) == 4
    for feature, channels, stride in zip(features, model.out_channels, model.strides):
        assert feature.shape == (1, channels, math.ceil(HEIGHT / stride), math.ceil(WIDTH / stride))


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_match_block_tables_and_paper(variant):
    model = MobileNetV4(variant)
    count = sum(p.numel() for p in model.parameters())
    assert count == EXPECTED_PARAMS[variant]
    if variant in PAPER_PARAMS_WITH_HEAD:
        c5 = model.out_channels[-1]
        head = c5 * 960 + 2 * 960 + 960 * 1280 + 2 * 1280 + 1280 * 1000 + 1000
        assert (count + head) / 1e6 == pytest.approx(PAPER_PARAMS_WITH_HEAD[variant], rel=0.01)


def test_uib_variants_follow_depthwise_kernels():
    # conv_medium S4: ExtraDW(3,5) s2, ..., ConvNext(3,0) at index 5, FFN(0,0) at index 6.
    stage = MobileNetV4("conv_medium").stages[2]
    extra_dw, convnext, ffn = stage[0], stage[5], stage[6]
    assert extra_dw.start_dw.conv.kernel_size == (3, 3)
    assert extra_dw.middle_dw.conv.kernel_size == (5, 5)
    assert extra_dw.middle_dw.conv.stride == (2, 2)  # stride on the middle dw
    assert extra_dw.start_dw.conv.stride == (1, 1)
    assert extra_dw.expand.conv.out_channels == 80 * 6 and not extra_dw.has_residual
    assert convnext.start_dw is not None and convnext.middle_dw is None and convnext.has_residual
    assert ffn.start_dw is None and ffn.middle_dw is None
    assert ffn.expand.conv.out_channels == 160 * 2
    # conv_small S4 block 1 is an IB: middle dw only.
    inverted = MobileNetV4("conv_small").stages[2][1]
    assert inverted.start_dw is None and inverted.middle_dw.conv.kernel_size == (3, 3)


def test_width_multiplier_scales_channels():
    nano = _nano()
    assert nano.out_channels == (16, 32, 48, 64)
    assert all(c % 8 == 0 for c in MobileNetV4("conv_medium", 0.3).out_channels)
    features = nano.eval()(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [16, 32, 48, 64]
    nano_params = sum(p.numel() for p in nano.parameters())
    assert nano_params < EXPECTED_PARAMS["conv_small"] / 2


def test_gradients_reach_all_parameters():
    torch.manual_seed(0)
    model = _nano().train()
    features = model(torch.randn(2, 3, 64, 64))
    loss = sum((f * torch.randn_like(f)).sum() for f in features)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", ["conv_tiny", "small", ""])
def test_unknown_variant_raises_with_choices(variant):
    with pytest.raises(ValueError, match="conv_small, conv_medium, conv_large"):
        MobileNetV4(variant)
    with pytest.raises(ValueError, match="conv_small"):
        build_backbone(variant)


@pytest.mark.parametrize("width", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_width_multiplier_raises(width):
    with pytest.raises(ValueError, match="width_multiplier"):
        MobileNetV4("conv_small", width)


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _nano()(torch.randn(1, 1, 64, 64))


def _save(state, path, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif fmt == "pt":
        torch.save(state, path)
    else:  # a training checkpoint: nested under "model", keys prefixed by the detector
        nested = {f"module.backbone.{key}": value for key, value in state.items()}
        torch.save({"model": nested, "step": 3}, path)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested_pt"])
def test_state_dict_round_trip_gives_identical_outputs(tmp_path, fmt):
    torch.manual_seed(0)
    source = _nano()
    _randomize_batchnorm(source, seed=1)
    path = tmp_path / ("weights.safetensors" if fmt == "safetensors" else "weights.pt")
    _save(source.state_dict(), path, fmt)

    torch.manual_seed(1)
    target = _nano()
    images = torch.randn(2, 3, 64, 80)
    source.eval(), target.eval()
    with torch.no_grad():
        before = target(images)
        assert not torch.equal(before[-1], source(images)[-1])
        missing, unexpected = load_backbone_weights(target, path, strict=True)
        expected, got = source(images), target(images)
    assert missing == [] and unexpected == []
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_build_backbone_loads_weights(tmp_path):
    source = _nano()
    _randomize_batchnorm(source, seed=2)
    path = tmp_path / "nano.safetensors"
    _save(source.state_dict(), path, "safetensors")
    model = build_backbone("conv_small", 0.5, weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_wrong_shapes_raise_value_error_naming_keys(tmp_path):
    path = tmp_path / "nano.pt"
    torch.save(_nano().state_dict(), path)
    model = MobileNetV4("conv_small", 1.0)
    stem_before = model.stem.conv.weight.clone()
    with pytest.raises(ValueError, match=r"stem\.conv\.weight: file \(16, 3, 3, 3\) vs model \(32"):
        load_backbone_weights(model, path)
    assert torch.equal(model.stem.conv.weight, stem_before)  # nothing partially loaded


def test_missing_and_unexpected_keys_reported_and_strict_raises(tmp_path):
    state = _nano().state_dict()
    del state["stem.conv.weight"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    missing, unexpected = load_backbone_weights(_nano(), path)
    assert missing == ["stem.conv.weight"] and unexpected == ["head.weight"]
    with pytest.raises(ValueError, match="strict"):
        load_backbone_weights(_nano(), path, strict=True)


def test_no_matching_keys_raises(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.layer.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="no key"):
        load_backbone_weights(_nano(), path)


def test_missing_file_raises_file_not_found_with_path(tmp_path):
    path = tmp_path / "does_not_exist.safetensors"
    with pytest.raises(FileNotFoundError, match="does_not_exist.safetensors.*weights=None"):
        load_backbone_weights(_nano(), path)
    with pytest.raises(FileNotFoundError):
        build_backbone("conv_small", 0.5, weights=str(path))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"stem.conv.weight": _Exploit(marker)}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(ValueError, match="refusing") as error:
        load_backbone_weights(_nano(), path)
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


@pytest.mark.slow  # ~7-10 s on one CPU thread (dynamo export)
def test_onnx_dynamo_export_matches_eager(tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _nano().eval()
    _randomize_batchnorm(model, seed=3)
    path = tmp_path / "backbone.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
            3: torch.export.Dim("width")}
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=True,
                      input_names=["images"], dynamic_shapes={"images": dims})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, HEIGHT, WIDTH)  # different batch and odd size than traced
    with torch.no_grad():
        expected = model(images)
    got = session.run(None, {"images": images.numpy()})
    assert len(got) == 4
    for a, b in zip(expected, got):
        assert a.shape == b.shape
        torch.testing.assert_close(torch.from_numpy(b), a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant, width", [("conv_small", 0.5), ("conv_small", 1.0), ("conv_medium", 0.75),
                                            ("conv_large", 1.0)])
def test_stage_channels_match_the_built_network(variant, width):
    from perception_core.model.backbone_specs import stage_channels

    assert stage_channels(variant, width) == MobileNetV4(variant, width).out_channels
