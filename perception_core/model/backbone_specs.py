"""MobileNetV4 conv block tables (no torch): what each variant is made of, and its stage widths.

backbone.py builds the networks from these tables; runtime code that only needs channel counts
(runtime/decoder_cost.py) reads them here, so the onnxruntime path runs without torch installed.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS: tuple[str, ...] = ("conv_small", "conv_medium", "conv_large")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` to the nearest multiple of `divisor`, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class BlockSpec:
    kind: str  # "conv" (conv-BN-ReLU), "fused_ib" or "uib"
    out_channels: int  # output channels at width_multiplier=1.0
    stride: int = 1  # 1, or 2 for the first block of a stage
    kernel: int = 3  # kernel of "conv" / "fused_ib" blocks; unused by "uib"
    start_dw: int = 0  # UIB depthwise kernel before the expansion; 0 = none
    middle_dw: int = 0  # UIB depthwise kernel after the expansion; 0 = none
    expansion: float = 1.0  # hidden channels = make_divisible(in_channels * expansion)


@dataclass(frozen=True)
class VariantSpec:
    stem_channels: int  # 3x3 stride-2 stem conv output channels
    stages: tuple[tuple[BlockSpec, ...], ...]  # four stages ending at strides 4, 8, 16, 32


def _conv(kernel: int, stride: int, channels: int) -> tuple[BlockSpec, ...]:
    return (BlockSpec("conv", channels, stride, kernel=kernel),)


def _fused(kernel: int, stride: int, channels: int, expansion: float) -> tuple[BlockSpec, ...]:
    return (BlockSpec("fused_ib", channels, stride, kernel=kernel, expansion=expansion),)


def _uib(start: int, middle: int, stride: int, channels: int, expansion: float,
         repeat: int = 1) -> tuple[BlockSpec, ...]:
    """`repeat` copies; only the first may be strided (the paper's "x N" rows are all stride 1)."""
    block = BlockSpec("uib", channels, stride, start_dw=start, middle_dw=middle,
                      expansion=expansion)
    return (block,) * repeat


SPECS: dict[str, VariantSpec] = {
    "conv_small": VariantSpec(32, (
        (*_conv(3, 2, 32), *_conv(1, 1, 32)),
        (*_conv(3, 2, 96), *_conv(1, 1, 64)),
        (*_uib(5, 5, 2, 96, 3.0), *_uib(0, 3, 1, 96, 2.0, repeat=4), *_uib(3, 0, 1, 96, 4.0)),
        (*_uib(3, 3, 2, 128, 6.0), *_uib(5, 5, 1, 128, 4.0), *_uib(0, 5, 1, 128, 4.0),
         *_uib(0, 5, 1, 128, 3.0), *_uib(0, 3, 1, 128, 4.0, repeat=2)),
    )),
    "conv_medium": VariantSpec(32, (
        _fused(3, 2, 48, 4.0),
        (*_uib(3, 5, 2, 80, 4.0), *_uib(3, 3, 1, 80, 2.0)),
        (*_uib(3, 5, 2, 160, 6.0), *_uib(3, 3, 1, 160, 4.0, repeat=2), *_uib(3, 5, 1, 160, 4.0),
         *_uib(3, 3, 1, 160, 4.0), *_uib(3, 0, 1, 160, 4.0), *_uib(0, 0, 1, 160, 2.0),
         *_uib(3, 0, 1, 160, 4.0)),
        (*_uib(5, 5, 2, 256, 6.0), *_uib(5, 5, 1, 256, 4.0), *_uib(3, 5, 1, 256, 4.0, repeat=2),
         *_uib(0, 0, 1, 256, 4.0), *_uib(3, 0, 1, 256, 4.0), *_uib(3, 5, 1, 256, 2.0),
         *_uib(5, 5, 1, 256, 4.0), *_uib(0, 0, 1, 256, 4.0, repeat=2), *_uib(5, 0, 1, 256, 2.0)),
    )),
    "conv_large": VariantSpec(24, (
        _fused(3, 2, 48, 4.0),
        (*_uib(3, 5, 2, 96, 4.0), *_uib(3, 3, 1, 96, 4.0)),
        (*_uib(3, 5, 2, 192, 4.0), *_uib(3, 3, 1, 192, 4.0, repeat=3), *_uib(3, 5, 1, 192, 4.0),
         *_uib(5, 3, 1, 192, 4.0, repeat=5), *_uib(3, 0, 1, 192, 4.0)),
        (*_uib(5, 5, 2, 512, 4.0), *_uib(5, 5, 1, 512, 4.0, repeat=3), *_uib(5, 0, 1, 512, 4.0),
         *_uib(5, 3, 1, 512, 4.0), *_uib(5, 0, 1, 512, 4.0, repeat=2), *_uib(5, 3, 1, 512, 4.0),
         *_uib(5, 5, 1, 512, 4.0), *_uib(5, 0, 1, 512, 4.0, repeat=3)),
    )),
}


def stage_channels(variant: str, width_multiplier: float = 1.0) -> tuple[int, int, int, int]:
    """Output channels of S2..S5 for a variant and width, without building the network."""
    spec = SPECS[variant]
    return tuple(make_divisible(stage[-1].out_channels * width_multiplier) for stage in spec.stages)
