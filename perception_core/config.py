"""Model configuration: frozen dataclasses loaded from YAML with `key=value` overrides.

The YAML files in `config/models/` are the single source of the model presets; the defaults here
are the paper's values (MOBIUS Sec. 4.1, Tab. 14) so that a YAML file only states what differs.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .model.backbone_specs import VARIANTS
from .model.prune_schedule import SCHEDULES

PACKAGE_ROOT = Path(__file__).resolve().parent
# Model presets: the repository's config/models (editable installs, a checkout), then the copy that
# setup.py installs into <prefix>/share/mobius_ros/config/models (pip and colcon installs).
MODEL_CONFIG_DIRS = (PACKAGE_ROOT.parent / "config" / "models",
                     Path(sys.prefix) / "share" / "mobius_ros" / "config" / "models")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says what to change."""


@dataclass(frozen=True)
class BackboneConfig:
    variant: str = "conv_medium"       # MobileNetV4 conv family: conv_small | conv_medium | conv_large
    width_multiplier: float = 1.0      # scales every channel count (nano models use < 1)
    weights: str | None = None         # optional user state dict (.safetensors or weights-only .pt)


@dataclass(frozen=True)
class TextConfig:
    dim: int = 384                     # width of the text encoder's token embeddings (MiniLM-L6)
    max_tokens: int = 16               # prompts are truncated to this many tokens


@dataclass(frozen=True)
class PixelDecoderConfig:
    type: str = "bottleneck"           # bottleneck (ours, Eq. 1) | maskdino | rtdetr (baselines)
    num_blocks: int = 3                # M: encoder blocks (paper: 3 for mobile, 6 for big backbones)
    bottleneck_stride: int = 16        # which scale is the bottleneck B: 8, 16 or 32
    ffn_dim: int = 1024                # FFN hidden width (paper: 1024 mobile / 2048 big)
    heads: int = 8                     # attention heads
    points: int = 4                    # deformable sampling points per head and level
    text_fusion: bool = True           # bidirectional image-text cross-attention (Eq. 1a-1b)


@dataclass(frozen=True)
class DecoderConfig:
    num_layers: int = 9                # L: transformer decoder layers (paper: 9)
    num_queries: int = 300             # K: queries from language-guided selection (paper: 300)
    ffn_dim: int = 1024                # FFN hidden width
    heads: int = 8                     # attention heads
    points: int = 4                    # deformable sampling points per head (and per level)
    multi_scale: bool = False          # decode all scales (baseline) instead of the single B^


@dataclass(frozen=True)
class PruningConfig:
    enabled: bool = True               # prune queries between decoder layers at inference
    schedule: str = "sigmoid"          # sigmoid (Eq. 5/8) | exp (Eq. 6) | log (Eq. 7)
    b_low: float = 0.05                # threshold at the first layer (Tab. 14)
    b_high: float = 0.2                # threshold at the last layer (Tab. 14)
    beta: float = 1.0                  # sigmoid steepness (Eq. 5/8)
    alpha: float = 3.0                 # exp/log steepness (Eq. 6/7)
    min_kept: int = 100                # never keep fewer queries than this (Tab. 14: 100 of 300)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mobius"
    hidden_dim: int = 256              # width of pixel decoder, decoder and mask embeddings
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    logit_scale_init: float = 2.3      # s in cos_s = exp(s) * cos (Eq. 3); exp(2.3) ~ 10
    prior_prob: float = 0.01           # initial sigmoid confidence via a learnable logit bias

    def __post_init__(self) -> None:
        validate_model_config(self)

    @property
    def memory_levels(self) -> int:
        """How many maps the transformer decoder attends to."""
        if not self.decoder.multi_scale:
            return 1
        return 3 if self.pixel_decoder.type == "rtdetr" else 4


_CHOICES = {
    ("backbone", "variant"): VARIANTS,
    ("pixel_decoder", "type"): ("bottleneck", "maskdino", "rtdetr"),
    ("pixel_decoder", "bottleneck_stride"): (8, 16, 32),
    ("pruning", "schedule"): SCHEDULES,
}


def validate_model_config(cfg: ModelConfig) -> None:
    """Raises ConfigError naming the first invalid value and what would be valid."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key}={value!r} is invalid; choose one of {list(choices)}")
    positive = [("hidden_dim", cfg.hidden_dim), ("decoder.num_layers", cfg.decoder.num_layers),
                ("decoder.num_queries", cfg.decoder.num_queries),
                ("pixel_decoder.num_blocks", cfg.pixel_decoder.num_blocks),
                ("backbone.width_multiplier", cfg.backbone.width_multiplier)]
    for name, value in positive:
        if value <= 0:
            raise ConfigError(f"{name}={value} must be > 0")
    if cfg.hidden_dim % 4:
        raise ConfigError(f"hidden_dim={cfg.hidden_dim} must be a multiple of 4 (sine position embeddings)")
    for section in (cfg.pixel_decoder, cfg.decoder):
        if cfg.hidden_dim % section.heads:
            raise ConfigError(f"hidden_dim={cfg.hidden_dim} must be divisible by heads={section.heads}")
    pr = cfg.pruning
    if not 0.0 <= pr.b_low <= pr.b_high <= 1.0:
        raise ConfigError(f"pruning bounds must satisfy 0 <= b_low <= b_high <= 1, got {pr.b_low}, {pr.b_high}")
    if pr.min_kept < 0:
        raise ConfigError(f"pruning.min_kept={pr.min_kept} must be >= 0")


# --------------------------------------------------------------------------- dict <-> dataclass

def from_dict(cls, data: Mapping[str, Any], path: str = ""):
    """Builds dataclass `cls` from a nested mapping; unknown keys raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {['.'.join(filter(None, [path, k])) for k in unknown]}; "
                          f"valid keys here: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub_path = ".".join(filter(None, [path, name]))
        default = getattr(cls(), name) if _constructible(cls) else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value, sub_path)
        else:
            kwargs[name] = _coerce(value, default, sub_path)
    return cls(**kwargs)


def _constructible(cls) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))


def _coerce(value: Any, default: Any, path: str) -> Any:
    """Converts override strings and YAML scalars to the type of the default value."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}={value!r} must be a boolean (true/false)")
    if kind in (int, float):
        try:
            number = kind(value) if not isinstance(value, str) else kind(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}={value!r} must be a {kind.__name__}") from None
        if kind is int and float(value) != number:
            raise ConfigError(f"{path}={value!r} must be an integer")
        return number
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{path}={value!r} must be a string")
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(overrides: Sequence[str]) -> dict:
    """['decoder.num_layers=6', 'name=x'] -> {'decoder': {'num_layers': '6'}, 'name': 'x'}."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. decoder.num_layers=6)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else value
    return nested


def deep_merge(base: Mapping, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must contain a mapping at top level")
    return data


def resolve_model_config_path(name_or_path: str | os.PathLike) -> Path:
    """A preset name ('mobius_nano') or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if candidate.is_file():
            return candidate
        raise ConfigError(f"model config file '{candidate}' not found")
    for directory in MODEL_CONFIG_DIRS:
        path = directory / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"unknown model config '{name_or_path}'; available: {available_model_configs()}")


def available_model_configs() -> list[str]:
    names = set()
    for directory in MODEL_CONFIG_DIRS:
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.yaml"))
    return sorted(names)


def load_model_config(name_or_path: str | os.PathLike = "mobius_nano",
                      overrides: Sequence[str] = ()) -> ModelConfig:
    data = load_yaml(resolve_model_config_path(name_or_path))
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(ModelConfig, data)
