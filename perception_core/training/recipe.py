"""Training recipes: one frozen `TrainConfig`, loaded from YAML (`training/recipes/*.yaml`) with
`key=value` overrides (`optim.lr=2e-4`, `model.overrides.decoder.num_queries=50`).

`load_train_config` validates everything that can be checked before a step is run: unknown keys,
bad values, the model preset and its overrides, and that the data files exist; the json itself is
parsed (and any problem reported as a ConfigError) when the datasets are built, also before the
first step. Relative paths are relative to the working directory.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import (ConfigError, ModelConfig, deep_merge, from_dict, load_yaml, parse_overrides,
                      resolve_model_config_path)
from .criterion import HybridMatching, LossConfig

# "categories": every category name of the training json is a prompt; "seen": only those with at
# least one training annotation (held-out compositions stay unseen, even as negatives: zero-shot).
PROMPT_POLICIES = ("categories", "seen")
AMP_MODES = ("auto", "on", "off")  # auto: mixed precision on CUDA only


@dataclass(frozen=True)
class ModelSection:
    preset: str = "mobius_nano"                           # name in config/models/ or a YAML path
    overrides: Mapping[str, Any] = field(default_factory=dict)  # nested keys merged over the preset
    init_weights: str | None = None     # start from these weights (.safetensors or weights-only .pt), e.g. the
                                        # shipped model to fine-tune; a resumed run takes its checkpoint's instead

    def build_config(self) -> ModelConfig:
        """The ModelConfig of preset + overrides; ConfigError on unknown keys or bad values."""
        if not isinstance(self.overrides, Mapping):
            raise ConfigError(f"model.overrides must be a mapping such as {{hidden_dim: 64}}, "
                              f"got {self.overrides!r}")
        data = deep_merge(load_yaml(resolve_model_config_path(self.preset)), self.overrides)
        try:
            return from_dict(ModelConfig, data)
        except ConfigError as error:
            raise ConfigError(f"model (preset '{self.preset}' + model.overrides): {error}") from None


@dataclass(frozen=True)
class DataConfig:
    train_annotations: str = ""         # COCO instances json or YouTube-VIS videos json (frames as images)
    train_images: str = ""              # folder the json's file_name entries are relative to
    val_annotations: str | None = None  # optional; validation loss every eval_interval steps
    val_images: str | None = None
    prompts: str = "categories"         # prompt policy: all category names, labels = their index
    use_masks: bool = True              # False: box-only training (mask losses off)
    train_sizes: tuple[int, ...] = (320, 352, 384, 416, 448)  # multi-scale: shorter-side choices
    max_size: int = 640                 # cap on the longer side after resizing
    val_size: int = 384                 # shorter side at validation
    flip_probability: float = 0.5       # horizontal flip
    crop_probability: float = 0.5       # random crop before resizing
    crop_min_fraction: float = 0.5      # crop sides are uniform in [this, 1] of the image's
    color_jitter: float = 0.2           # brightness/contrast/saturation factors in [1 - x, 1 + x]
    hue_jitter: float = 0.02            # hue shift, fraction of the colour wheel

    def __post_init__(self) -> None:
        _check(self.prompts in PROMPT_POLICIES, f"data.prompts={self.prompts!r}; choose one of {list(PROMPT_POLICIES)}")
        _set_tuple_of_ints(self, "train_sizes", "data.train_sizes", minimum=32, allow_empty=False)
        _check(self.max_size >= 32 and self.val_size >= 32, "data.max_size and data.val_size must be >= 32")
        for name in ("flip_probability", "crop_probability"):
            _check(0 <= getattr(self, name) <= 1, f"data.{name}={getattr(self, name)} must be in [0, 1]")
        _check(0 < self.crop_min_fraction <= 1, f"data.crop_min_fraction={self.crop_min_fraction} must be in (0, 1]")
        _check(0 <= self.color_jitter < 1, f"data.color_jitter={self.color_jitter} must be in [0, 1)")
        _check(0 <= self.hue_jitter <= 0.5, f"data.hue_jitter={self.hue_jitter} must be in [0, 0.5]")
        for name in ("train_annotations", "train_images", "val_annotations", "val_images"):
            value = getattr(self, name)
            _check(value is None or isinstance(value, str), f"data.{name}={value!r} must be a path string")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4                    # AdamW base learning rate (batch 16 in the paper's setup)
    weight_decay: float = 0.05          # decoupled weight decay; norms, biases and scales get none
    backbone_lr_multiplier: float = 0.1  # backbone lr = lr * this
    text_lr_multiplier: float = 0.1     # lr of the text projections (the MiniLM encoder is frozen)
    warmup_steps: int = 500             # linear warmup from warmup_start_factor * lr to lr
    warmup_start_factor: float = 0.001
    milestones: tuple[int, ...] = ()    # steps at which the lr is multiplied by gamma
    gamma: float = 0.1
    max_steps: int = 20000              # optimizer steps (batches) in the whole run
    grad_clip: float = 0.1              # max global gradient norm; 0 turns clipping off

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr={self.lr} must be > 0")
        _check(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")
        for name in ("backbone_lr_multiplier", "text_lr_multiplier"):
            _check(getattr(self, name) >= 0, f"optim.{name}={getattr(self, name)} must be >= 0")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        _check(0 < self.warmup_start_factor <= 1,
               f"optim.warmup_start_factor={self.warmup_start_factor} must be in (0, 1]")
        _set_tuple_of_ints(self, "milestones", "optim.milestones", minimum=1, allow_empty=True)
        _check(list(self.milestones) == sorted(set(self.milestones)),
               f"optim.milestones={list(self.milestones)} must be strictly increasing")
        _check(0 < self.gamma <= 1, f"optim.gamma={self.gamma} must be in (0, 1]")
        _check(self.max_steps > 0, f"optim.max_steps={self.max_steps} must be > 0")
        _check(self.grad_clip >= 0, f"optim.grad_clip={self.grad_clip} must be >= 0 (0 = off)")


@dataclass(frozen=True)
class QueryConfig:
    """Extra training-only decoder queries (none of them exists at inference)."""
    denoising_groups: int = 0           # contrastive denoising pairs per instance (DINO); 0 = off
    box_noise: float = 0.4              # DINO's lambda: positives move each edge < this x half the size
    label_noise: float = 0.2            # share of denoising queries whose prompt is swapped at random
    one_to_many: int = 0                # size of the one-to-many query group; needs loss.hybrid
    temporal: bool = False              # video json: frame pairs, queries of t decode t + delta
    max_delta: int = 5                  # delta uniform in [1, max_delta] frames

    def __post_init__(self) -> None:
        _check(self.denoising_groups >= 0, f"queries.denoising_groups={self.denoising_groups} must be >= 0")
        _check(0 < self.box_noise <= 1, f"queries.box_noise={self.box_noise} must be in (0, 1]")
        _check(0 <= self.label_noise <= 1, f"queries.label_noise={self.label_noise} must be in [0, 1]")
        _check(self.one_to_many >= 0, f"queries.one_to_many={self.one_to_many} must be >= 0")
        _check(self.max_delta >= 1, f"queries.max_delta={self.max_delta} must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)  # criterion.LossConfig; matcher costs = loss weights
    queries: QueryConfig = field(default_factory=QueryConfig)  # denoising, one-to-many, temporal
    batch_size: int = 8                 # images per process (per GPU)
    num_workers: int = 2                # DataLoader worker processes per rank
    amp: str = "auto"                   # auto: bf16/fp16 autocast on CUDA only; on: require CUDA; off
    freeze_batchnorm: bool = False      # keep BatchNorm statistics and affine fixed (small batches)
    max_consecutive_nonfinite: int = 5  # abort after this many non-finite losses in a row
    log_interval: int = 20              # steps between CSV/TensorBoard rows
    eval_interval: int = 1000           # steps between validation-loss passes; 0 = never
    eval_ap_images: int = 100           # COCO box/mask AP on this many val images at each evaluation; 0 = off
    checkpoint_interval: int = 1000     # steps between checkpoints; the last step always saves
    output_dir: str = "runs/mobius_nano_synth"  # checkpoints/, metrics.csv, tensorboard/, config.yaml
    seed: int = 0                       # model init, data order and augmentation

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        _check(self.num_workers >= 0, f"num_workers={self.num_workers} must be >= 0")
        _check(self.amp in AMP_MODES, f"amp={self.amp!r}; choose one of {list(AMP_MODES)}")
        _check(self.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite must be >= 1")
        _check(self.log_interval >= 1, f"log_interval={self.log_interval} must be >= 1")
        _check(self.eval_ap_images >= 0, f"eval_ap_images={self.eval_ap_images} must be >= 0 (0 = off)")
        _check(self.eval_interval >= 0, f"eval_interval={self.eval_interval} must be >= 0 (0 = off)")
        _check(self.checkpoint_interval >= 1, f"checkpoint_interval={self.checkpoint_interval} must be >= 1")
        _check(isinstance(self.output_dir, str) and self.output_dir.strip() != "", "output_dir must be set")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _set_tuple_of_ints(config, name: str, path: str, minimum: int, allow_empty: bool) -> None:
    """Normalises a list field of a frozen dataclass to a tuple of ints, or raises ConfigError."""
    value = getattr(config, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                   or int(v) != v for v in value):
        raise ConfigError(f"{path}={value!r} must be a list of integers")
    if not value and not allow_empty:
        raise ConfigError(f"{path} must not be empty")
    if any(v < minimum for v in value):
        raise ConfigError(f"{path}={list(value)}: every entry must be >= {minimum}")
    object.__setattr__(config, name, tuple(int(v) for v in value))  # frozen: set once, in __post_init__


# ----------------------------------------------------------------------------- loading

def train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Nested mapping -> TrainConfig; every problem becomes a ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a training recipe must be a mapping, got {type(data).__name__}")
    data = dict(data)
    loss = data.pop("loss", {})
    try:
        config = from_dict(TrainConfig, data)
        return dataclasses.replace(config, loss=loss_config_from_dict(loss))
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid training recipe: {error}") from None


def loss_config_from_dict(data: Mapping[str, Any] | None) -> LossConfig:
    data = dict(data or {})
    hybrid = data.pop("hybrid", None)
    try:
        config = from_dict(LossConfig, data, "loss")
        if hybrid is not None:
            config = dataclasses.replace(config, hybrid=from_dict(HybridMatching, hybrid, "loss.hybrid"))
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # LossConfig / HybridMatching checks
        raise ConfigError(f"loss: {error}") from None
    return config


def load_train_config(path: str | os.PathLike, overrides: Sequence[str] = (), check_paths: bool = True) -> TrainConfig:
    """Recipe YAML + `key=value` overrides -> validated TrainConfig."""
    data = deep_merge(load_yaml(path), parse_overrides(overrides))
    config = train_config_from_dict(data)
    validate(config, check_paths)
    return config


def validate(config: TrainConfig, check_paths: bool = True) -> ModelConfig:
    """Cross-field checks, the model config and (optionally) the data paths; returns the
    ModelConfig. Raises ConfigError with what to change."""
    model_config = config.model.build_config()
    _check((config.loss.hybrid is None) == (config.queries.one_to_many == 0),
           "one-to-many matching needs both loss.hybrid (e.g. {repeats: 6}) and queries.one_to_many > 0 "
           "(the size of the extra query group); set both or neither")
    _check((config.data.val_annotations is None) == (config.data.val_images is None),
           "set both data.val_annotations and data.val_images, or neither")
    if check_paths:
        check_data_paths(config.data)
        init = config.model.init_weights
        _check(init is None or Path(init).is_file(), f"model.init_weights: file '{init}' not found; point it at "
               f".safetensors weights (e.g. perception_core/assets/mobius_nano.safetensors) or leave it unset")
    return model_config


def check_data_paths(data: DataConfig) -> None:
    _check(bool(data.train_annotations), "data.train_annotations is not set; point it at a COCO or "
           "YouTube-VIS json (e.g. data/synth/train/instances.json)")
    _check(bool(data.train_images), "data.train_images is not set; point it at the image folder")
    pairs = [("data.train_annotations", data.train_annotations, "data.train_images", data.train_images)]
    if data.val_annotations:
        pairs.append(("data.val_annotations", data.val_annotations, "data.val_images", data.val_images))
    for file_key, file_path, folder_key, folder in pairs:
        _check(Path(file_path).is_file(), f"{file_key}: file '{file_path}' not found; generate the procedural "
               f"benchmark with 'mobius data' or fix the path")
        _check(Path(folder).is_dir(), f"{folder_key}: folder '{folder}' not found")


def to_plain_dict(config: TrainConfig) -> dict:
    """Only dicts, lists, str, numbers, bools and None: safe for torch.load(weights_only=True)
    and yaml.safe_dump."""
    def plain(value):
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(config))
