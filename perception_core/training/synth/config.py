"""Generator configuration: one frozen dataclass and the three difficulty presets.

`make_config("hard", image_size=(256, 256))` starts from the "normal" defaults below, applies the
preset's overrides, then the caller's; `validate` raises a ValueError that says what to change.
Ranges are inclusive (low, high) pairs; numbers of pixels are for the configured frame size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .vocabulary import all_composition_names, parse_compositions

DIFFICULTIES = ("easy", "normal", "hard")
SPLITS = ("train", "val", "test")
BACKGROUND_KINDS = ("flat", "gradient", "noise", "stripes", "checkerboard", "clutter", "photo")


@dataclass(frozen=True)
class SynthConfig:
    difficulty: str = "normal"                   # easy | normal | hard (name of the preset applied)
    image_size: tuple[int, int] = (384, 384)     # (H, W) of still images
    video_size: tuple[int, int] = (288, 384)     # (H, W) of video frames
    frames: tuple[int, int] = (16, 24)           # clip length range, frames
    holdout_compositions: tuple[str, ...] = ()   # e.g. ("red star",): never generated in train
    use_photos: bool = True                      # photo backgrounds from installed sample images
    # objects and layout
    objects_per_image: tuple[int, int] = (2, 8)  # vocabulary objects drawn per image
    objects_per_video: tuple[int, int] = (1, 6)  # tracked objects per clip (the issue asks 1-10)
    distractors: tuple[int, int] = (1, 5)        # out-of-vocabulary blobs that can occlude objects
    area_fraction: tuple[float, float] = (0.01, 0.5)        # object area / frame, log-uniform
    video_area_fraction: tuple[float, float] = (0.01, 0.2)  # same for video objects at frame 0
    min_visible_pixels: int = 20                 # instances with fewer visible pixels are dropped
    touch_probability: float = 0.25              # a new object is placed against an existing one
    overlap_probability: float = 0.25            # a new object is placed over an existing one
    same_color_neighbor_probability: float = 0.3  # a touching object copies its neighbour's colour
    depth_shuffle: float = 1.0                   # std of noise on log-area z-order (0: big at back)
    texture_probability: float = 0.4             # objects with shading/stripes/mottling
    # backgrounds: relative weights of BACKGROUND_KINDS
    background_weights: tuple[float, ...] = (1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 1.0)
    background_saturation: float = 0.5           # max HSV saturation of background colours
    clutter_blobs: tuple[int, int] = (10, 40)    # blobs painted into a "clutter" background
    # photometric effects
    illumination_strength: float = 0.25          # gain range +-, and the strength of its gradient
    noise_sigma: tuple[float, float] = (0.0, 6.0)  # Gaussian pixel noise, grey levels
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.5, 1.5)   # Gaussian blur, pixels
    jpeg_probability: float = 0.4
    jpeg_quality: tuple[int, int] = (35, 90)     # JPEG artifacts before the final (q=95) save
    output_quality: int = 95                     # JPEG quality of the written files
    # video dynamics
    max_speed: float = 0.02                      # initial speed, fraction of frame width per frame
    max_acceleration: float = 0.0015             # fraction of frame width per frame^2
    scale_change: tuple[float, float] = (0.7, 1.4)  # object scale at the last frame / first frame
    max_spin: float = 0.08                       # rotation speed, radians per frame
    exit_reenter_probability: float = 0.25       # object leaves the frame and comes back
    crossing_probability: float = 0.3            # object is aimed at another one (occlusion)
    color_drift: float = 0.6                     # fraction of a colour's allowed range drifted
    camera_jitter: float = 3.0                   # camera shake amplitude, pixels
    moving_distractors: tuple[int, int] = (0, 2)  # distractor blobs moving through a clip


DIFFICULTY_PRESETS: dict[str, dict[str, Any]] = {
    "easy": dict(objects_per_image=(1, 4), objects_per_video=(1, 3), distractors=(0, 2),
                 touch_probability=0.1, overlap_probability=0.1, depth_shuffle=0.3,
                 texture_probability=0.15, background_weights=(3.0, 3.0, 1.0, 0.5, 0.5, 0.5, 0.5),
                 background_saturation=0.35, clutter_blobs=(5, 15), illumination_strength=0.1,
                 noise_sigma=(0.0, 2.0), blur_probability=0.1, blur_sigma=(0.4, 0.8),
                 jpeg_probability=0.2, jpeg_quality=(70, 95), max_speed=0.015,
                 exit_reenter_probability=0.15, crossing_probability=0.1, color_drift=0.3,
                 camera_jitter=1.0, moving_distractors=(0, 0)),
    "normal": {},
    "hard": dict(objects_per_image=(4, 14), objects_per_video=(3, 10), distractors=(3, 10),
                 touch_probability=0.35, overlap_probability=0.4,
                 same_color_neighbor_probability=0.4,
                 depth_shuffle=2.0, texture_probability=0.6,
                 background_weights=(0.5, 1.0, 2.0, 1.5, 1.5, 3.0, 2.0), background_saturation=0.8,
                 clutter_blobs=(30, 80), illumination_strength=0.4, noise_sigma=(2.0, 12.0),
                 blur_probability=0.5, blur_sigma=(0.6, 2.5), jpeg_probability=0.7,
                 jpeg_quality=(20, 80), max_speed=0.03, max_acceleration=0.0025,
                 scale_change=(0.55, 1.8), exit_reenter_probability=0.35,
                 crossing_probability=0.5, color_drift=1.0, camera_jitter=6.0,
                 moving_distractors=(1, 4)),
}


def make_config(difficulty: str = "normal", **overrides: Any) -> SynthConfig:
    """The preset for `difficulty` with `overrides` applied on top, validated."""
    if difficulty not in DIFFICULTY_PRESETS:
        raise ValueError(f"unknown difficulty '{difficulty}'; use one of {', '.join(DIFFICULTIES)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SynthConfig)})
    if unknown:
        raise ValueError(f"unknown SynthConfig field(s): {', '.join(unknown)}")
    values = {**DIFFICULTY_PRESETS[difficulty], **overrides, "difficulty": difficulty}
    if "holdout_compositions" in values:
        values["holdout_compositions"] = parse_compositions(values["holdout_compositions"])
    for key in ("image_size", "video_size"):
        if key in values:
            values[key] = tuple(int(v) for v in values[key])
    config = SynthConfig(**values)
    validate(config)
    return config


def _check_range(config: SynthConfig, name: str, lowest: float, highest: float) -> None:
    low, high = getattr(config, name)
    if not lowest <= low <= high <= highest:
        raise ValueError(f"SynthConfig.{name}={getattr(config, name)}: need "
                         f"{lowest} <= low <= high <= {highest}")


def validate(config: SynthConfig) -> None:
    """Raises ValueError naming the first invalid setting."""
    if config.difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty '{config.difficulty}'; use one of "
                         f"{', '.join(DIFFICULTIES)}")
    for key in ("image_size", "video_size"):
        size = getattr(config, key)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"SynthConfig.{key}={size}: need (H, W) with both at least 32")
    if len(parse_compositions(list(config.holdout_compositions))) >= len(all_composition_names()):
        raise ValueError("every composition is held out: train would have nothing to show")
    _check_range(config, "frames", 1, 10_000)
    _check_range(config, "objects_per_image", 0, 100)
    _check_range(config, "objects_per_video", 0, 100)
    _check_range(config, "distractors", 0, 100)
    _check_range(config, "moving_distractors", 0, 100)
    _check_range(config, "area_fraction", 1e-4, 1.0)
    _check_range(config, "video_area_fraction", 1e-4, 1.0)
    _check_range(config, "jpeg_quality", 1, 100)
    if len(config.background_weights) != len(BACKGROUND_KINDS) or \
            min(config.background_weights) < 0 or sum(config.background_weights) <= 0:
        raise ValueError(f"SynthConfig.background_weights needs {len(BACKGROUND_KINDS)} "
                         f"non-negative weights for {', '.join(BACKGROUND_KINDS)}")
    if config.min_visible_pixels < 1:
        raise ValueError("SynthConfig.min_visible_pixels must be at least 1")


def excluded_compositions(config: SynthConfig, split: str) -> tuple[str, ...]:
    """Compositions never generated in `split`: the held-out ones in train, none elsewhere."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    return config.holdout_compositions if split == "train" else ()
