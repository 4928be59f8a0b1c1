"""MobileNetV4 conv backbones (conv_small / conv_medium / conv_large) returning S2..S5 features.

Paper: Qin et al. 2024, "MobileNetV4 - Universal Models for the Mobile Ecosystem",
arXiv:2404.10518. Block tables follow the paper's architecture tables as encoded in the official
TF Model Garden specs (cross-checked with timm's mnv4 arch defs); BatchNorm + ReLU everywhere.
The classification head (1x1 conv to 960, pooling, 1x1 conv to 1280, FC) is dropped: the model
ends at the last block of stage S5.

Blocks:
  * conv      Conv-BN-ReLU (stem; the conv_small "FusedIB" layers are realised as a 3x3 s2
              conv-BN-ReLU followed by a 1x1 conv-BN-ReLU, as in the official spec and timm).
  * fused_ib  FusedIB: kxk conv expand (stride here) -> 1x1 linear projection.
  * uib       Universal Inverted Bottleneck; the variant is selected by the two optional
              depthwise kernels (start, middle): (k, k) ExtraDW, (0, k) IB (MobileNetV2 inverted
              bottleneck), (k, 0) ConvNext-like, (0, 0) FFN. The stride sits on the middle depthwise
              conv when there is one, otherwise on the start one.

Per variant at width_multiplier=1.0 (parameters counted from this implementation; "with head"
adds the dropped head: 1x1 conv to 960 + BN, 1x1 conv to 1280 + BN, 1000-class FC):

  variant       stem  S2  S3   S4   S5   backbone params  with head   paper (with head)
  conv_small     32   32  64   96  128       1.137M        3.774M          3.8M
  conv_medium    32   48  80  160  256       6.955M        9.716M          9.2M
  conv_large     24   48  96  192  512      29.585M       32.591M         32.6M

The with-head counts equal timm's mnv4 conv models (3.77M / 9.72M / 32.59M). For conv_medium
the paper's summary table says 9.2M while the official TF spec (and timm) give 9.72M; we follow
the official spec. width_multiplier=0.5 on conv_small gives a 0.307M-param "nano"
backbone with channels (16, 32, 48, 64).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .backbone_specs import SPECS, VARIANTS, BlockSpec, make_divisible


class ConvNormAct(nn.Module):
    """kxk conv (no bias, 'same'-style padding) -> BatchNorm -> optional ReLU.

    With padding (k-1)//2 and odd k, a stride-2 conv maps H to ceil(H/2).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2,
                              groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU() if activation else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class FusedInvertedBottleneck(nn.Module):
    """FusedIB: kxk conv expansion (carries the stride) -> 1x1 linear projection (+ residual)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expansion: float):
        super().__init__()
        hidden = make_divisible(in_channels * expansion)
        self.expand = ConvNormAct(in_channels, hidden, kernel, stride)
        self.project = ConvNormAct(hidden, out_channels, 1, activation=False)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.expand(x))
        return x + out if self.has_residual else out


class UniversalInvertedBottleneck(nn.Module):
    """UIB: [start dw] -> 1x1 expand -> [middle dw] -> 1x1 linear projection (+ residual).

    start dw has no activation (it acts on the narrow input, as in the paper's ExtraDW/ConvNext).
    """

    def __init__(self, in_channels: int, out_channels: int, start_dw: int, middle_dw: int,
                 stride: int, expansion: float):
        super().__init__()
        if stride != 1 and not (start_dw or middle_dw):
            raise ValueError(f"a UIB with stride {stride} needs a depthwise conv to carry the "
                             "stride; FFN (start_dw=middle_dw=0) blocks must have stride 1")
        hidden = make_divisible(in_channels * expansion)
        start_stride = 1 if middle_dw else stride
        self.start_dw = (ConvNormAct(in_channels, in_channels, start_dw, start_stride,
                                     groups=in_channels, activation=False) if start_dw else None)
        self.expand = ConvNormAct(in_channels, hidden, 1)
        self.middle_dw = (ConvNormAct(hidden, hidden, middle_dw, stride, groups=hidden)
                          if middle_dw else None)
        self.project = ConvNormAct(hidden, out_channels, 1, activation=False)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.start_dw(x) if self.start_dw is not None else x
        out = self.expand(out)
        if self.middle_dw is not None:
            out = self.middle_dw(out)
        out = self.project(out)
        return x + out if self.has_residual else out


def _build_block(spec: BlockSpec, in_channels: int, out_channels: int) -> nn.Module:
    if spec.kind == "conv":
        return ConvNormAct(in_channels, out_channels, spec.kernel, spec.stride)
    if spec.kind == "fused_ib":
        return FusedInvertedBottleneck(in_channels, out_channels, spec.kernel, spec.stride,
                                       spec.expansion)
    if spec.kind == "uib":
        return UniversalInvertedBottleneck(in_channels, out_channels, spec.start_dw,
                                           spec.middle_dw, spec.stride, spec.expansion)
    raise ValueError(f"unknown block kind {spec.kind!r}; expected 'conv', 'fused_ib' or 'uib'")


class MobileNetV4(nn.Module):
    """MobileNetV4 conv backbone returning [S2, S3, S4, S5] at strides (4, 8, 16, 32).

    Args:
        variant: one of VARIANTS.
        width_multiplier: scales every channel count (rounded with make_divisible to multiples
            of 8); e.g. conv_small with 0.5 is a "nano" backbone.
    """

    strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __init__(self, variant: str = "conv_small", width_multiplier: float = 1.0):
        super().__init__()
        if variant not in SPECS:
            raise ValueError(f"unknown MobileNetV4 variant {variant!r}; "
                             f"valid choices: {', '.join(VARIANTS)}")
        if not (isinstance(width_multiplier, (int, float)) and math.isfinite(width_multiplier)
                and width_multiplier > 0):
            raise ValueError(f"width_multiplier must be a positive finite number, "
                             f"got {width_multiplier!r}; use 1.0 for the paper's widths")
        spec = SPECS[variant]
        self.variant = variant
        self.width_multiplier = float(width_multiplier)

        def scale(channels: int) -> int:
            return make_divisible(channels * self.width_multiplier)

        in_channels = scale(spec.stem_channels)
        self.stem = ConvNormAct(3, in_channels, 3, stride=2)
        stages, out_channels = [], []
        for stage_spec in spec.stages:
            blocks = []
            for block_spec in stage_spec:
                blocks.append(_build_block(block_spec, in_channels, scale(block_spec.out_channels)))
                in_channels = scale(block_spec.out_channels)
            stages.append(nn.Sequential(*blocks))
            out_channels.append(in_channels)
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, int, int, int] = (
            out_channels[0], out_channels[1], out_channels[2], out_channels[3])
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor, num_stages: int = 4) -> list[Tensor]:
        """images: (B, 3, H, W) float, normalized (e.g. ImageNet mean/std), any H, W >= 1.

        Returns [S2, S3, S4, S5]; S_i is (B, out_channels[i], ceil(H / s), ceil(W / s)) with
        s = strides[i]. With num_stages < 4 only the first num_stages maps are computed (S2 alone
        for bottleneck reuse, runtime/export_kernels.py).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = self.stem(images)
        features = []
        for stage in self.stages[:num_stages]:
            x = stage(x)
            features.append(x)
        return features


def build_backbone(variant: str, width_multiplier: float = 1.0,
                   weights: str | None = None) -> MobileNetV4:
    """Build a MobileNetV4 backbone, optionally loading weights (see load_backbone_weights).

    Keys of the model not found in `weights` keep their random init; a warning names them.
    """
    model = MobileNetV4(variant, width_multiplier)
    if weights is not None:
        missing, unexpected = load_backbone_weights(model, weights)
        if missing or unexpected:
            warnings.warn(f"backbone weights '{weights}': {len(missing)} missing keys "
                          f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
                          f"(e.g. {unexpected[:3]})", stacklevel=2)
    return model


_NESTING_KEYS = ("model", "state_dict")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")


def _read_state_dict(path: Path) -> Mapping[str, object]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # optional compiled extension: import lazily

        return load_file(str(path), device="cpu")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"refusing to load '{path}': it contains objects other than tensors and "
                         "plain containers (weights_only=True). Re-save it as a state dict "
                         "(torch.save(model.state_dict(), ...)) or as .safetensors") from error
    for _ in range(len(_NESTING_KEYS)):  # unwrap {"model": {...}} / {"state_dict": {...}}
        if isinstance(checkpoint, Mapping):
            nested = [checkpoint[key] for key in _NESTING_KEYS
                      if isinstance(checkpoint.get(key), Mapping)]
            checkpoint = nested[0] if nested else checkpoint
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"'{path}' holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def load_backbone_weights(model: MobileNetV4, path: str | os.PathLike,
                          strict: bool = False) -> tuple[list[str], list[str]]:
    """Load a state dict from `.safetensors` or a torch checkpoint (weights_only) into `model`.

    The checkpoint may nest the state dict under "model" or "state_dict"; prefixes such as
    "module." and "backbone." are stripped. Returns (missing, unexpected) key lists.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a plain tensor checkpoint, shapes mismatch, no key matches
            the model at all, or strict=True and some keys are missing/unexpected.
            The model is left unchanged whenever an error is raised.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file '{path}' not found; check the path, or "
                                "pass weights=None to start from random initialization")
    raw = _read_state_dict(path)
    state = {_strip_prefixes(str(key)): value for key, value in raw.items()}
    not_tensors = [key for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ValueError(f"'{path}' is not a state dict: non-tensor entries {not_tensors[:5]}")
    own = model.state_dict()
    mismatched = [f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
                  for key, value in state.items() if key in own and value.shape != own[key].shape]
    if mismatched:
        raise ValueError(f"shape mismatch loading '{path}' into MobileNetV4 "
                         f"'{model.variant}' x{model.width_multiplier}: " + "; ".join(mismatched)
                         + ". Check the variant and width_multiplier the weights were trained with")
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    if len(missing) == len(own):
        raise ValueError(f"no key in '{path}' matches the backbone (file keys e.g. "
                         f"{list(state)[:3]}, model keys e.g. {list(own)[:3]})")
    if strict and (missing or unexpected):
        raise ValueError(f"strict load of '{path}': missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    model.load_state_dict(state, strict=False)
    return missing, unexpected
