"""Model configuration: presets load, overrides apply, errors are clear."""
import pytest

from perception_core.config import ConfigError, available_model_configs, load_model_config

PRESETS = ["mobius_nano", "mobius_mini_m", "glee_maskdino_mini_m", "glee_rtdetr_mini_m"]


def test_all_presets_exist_and_load():
    assert set(PRESETS) <= set(available_model_configs())
    cfgs = {name: load_model_config(name) for name in PRESETS}
    assert cfgs["mobius_mini_m"].pixel_decoder.type == "bottleneck"
    assert cfgs["mobius_mini_m"].pixel_decoder.num_blocks == 3 and cfgs["mobius_mini_m"].decoder.num_layers == 9
    assert cfgs["glee_maskdino_mini_m"].pixel_decoder.type == "maskdino"
    assert cfgs["glee_maskdino_mini_m"].pixel_decoder.num_blocks == 6
    assert cfgs["glee_rtdetr_mini_m"].pixel_decoder.type == "rtdetr"


def test_overrides_are_typed():
    cfg = load_model_config("mobius_nano", ["decoder.num_layers=6", "pruning.enabled=false", "pruning.b_high=0.3"])
    assert cfg.decoder.num_layers == 6 and cfg.pruning.enabled is False and cfg.pruning.b_high == 0.3


@pytest.mark.parametrize("override, message", [
    ("decoder.num_layrs=6", r"unknown key\(s\) \['decoder.num_layrs'\]"),
    ("pixel_decoder.type=transformer", "pixel_decoder.type='transformer' is invalid"),
    ("decoder.num_layers=abc", "decoder.num_layers='abc' must be a int"),
    ("decoder.num_layers=2.5", "must be an integer"),
    ("hidden_dim=0", "hidden_dim=0 must be > 0"),
    ("pruning.b_low=0.5", "b_low <= b_high"),
    ("pixel_decoder.bottleneck_stride=4", "bottleneck_stride=4 is invalid"),
    ("pixel_decoder.heads=5", "divisible by heads=5"),
    ("hidden_dim=130", "must be a multiple of 4"),
    ("decoder", "must look like key=value"),
])
def test_bad_values_raise_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_model_config("mobius_nano", [override])


def test_unknown_preset_lists_available(tmp_path):
    with pytest.raises(ConfigError, match="available: .*mobius_nano"):
        load_model_config("mobius_huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("decoder: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(bad)
