"""Object appearance: a colour that always keeps its name, and a texture that moves with the object.

Each colour name owns a box in HSV space (hue +-8 degrees around its centre, a saturation range
and a value range, chosen so that neighbours such as red/orange/yellow never meet). An object
samples a start and an end point inside its box; videos interpolate between them (the "slow colour
and brightness drift" of the issue), still images use the start. Textures only scale the
brightness by a bounded factor, which leaves hue and saturation, and so the name, unchanged.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from .vocabulary import COLORS

# name -> (hue centre in degrees or None for white, (saturation range), (value range))
COLOR_BOXES: dict[str, tuple[float | None, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, (0.7, 1.0), (0.65, 1.0)),
    "orange": (28.0, (0.75, 1.0), (0.85, 1.0)),
    "yellow": (57.0, (0.7, 1.0), (0.85, 1.0)),
    "green": (120.0, (0.6, 1.0), (0.55, 1.0)),
    "cyan": (183.0, (0.6, 1.0), (0.75, 1.0)),
    "blue": (230.0, (0.65, 1.0), (0.65, 1.0)),
    "magenta": (300.0, (0.55, 1.0), (0.7, 1.0)),
    "white": (None, (0.0, 0.07), (0.88, 1.0)),
}
HUE_TOLERANCE = 8.0  # degrees either side of a colour's hue centre
TEXTURES = ("flat", "shaded", "stripes", "mottled")
# Largest relative brightness change a texture may cause (white darkens into grey quickly).
_TEXTURE_AMPLITUDE = {"white": 0.05}
_DEFAULT_TEXTURE_AMPLITUDE = 0.14


@dataclass(frozen=True)
class Look:
    """How an object is painted: HSV at the first and last frame, and a texture."""
    color: str
    hsv_start: tuple[float, float, float]  # hue in degrees, saturation and value in 0..1
    hsv_end: tuple[float, float, float]
    texture: str
    amplitude: float                       # relative brightness change of the texture
    direction: float                       # texture orientation, radians in the object frame
    frequency: float                       # stripes / mottling frequency, cycles per radius
    phases: tuple[float, ...]              # random phases of the mottling waves

    def rgb(self, progress: float = 0.0) -> np.ndarray:
        """(3,) float32 RGB in 0..255 at `progress` (0 = first frame, 1 = last frame)."""
        hue, saturation, value = (a + (b - a) * progress
                                  for a, b in zip(self.hsv_start, self.hsv_end))
        rgb = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value)
        return np.asarray(rgb, dtype=np.float32) * 255.0


def _sample_hsv(color: str, rng: np.random.Generator) -> tuple[float, float, float]:
    hue_centre, saturation, value = COLOR_BOXES[color]
    hue = rng.uniform(0, 360) if hue_centre is None else \
        hue_centre + rng.uniform(-HUE_TOLERANCE, HUE_TOLERANCE)
    return float(hue), float(rng.uniform(*saturation)), float(rng.uniform(*value))


def _drift_towards(start: tuple[float, float, float], target: tuple[float, float, float],
                   fraction: float) -> tuple[float, float, float]:
    """A point `fraction` of the way from start to target (both inside the same colour box)."""
    if abs(target[0] - start[0]) > 180:  # white's free hue: drift the short way round
        target = (target[0] - 360 * np.sign(target[0] - start[0]), target[1], target[2])
    return tuple(float(s + (t - s) * fraction) for s, t in zip(start, target))


def sample_look(color: str, rng: np.random.Generator, texture_probability: float,
                drift: float = 0.0) -> Look:
    """A random Look of the named colour; `drift` in 0..1 scales the colour change over a clip."""
    if color not in COLORS:
        raise ValueError(f"unknown colour '{color}'; colours are {', '.join(COLORS)}")
    start = _sample_hsv(color, rng)
    end = _drift_towards(start, _sample_hsv(color, rng), float(np.clip(drift, 0.0, 1.0)))
    textured = rng.random() < texture_probability
    texture = TEXTURES[int(rng.integers(1, len(TEXTURES)))] if textured else "flat"
    top = _TEXTURE_AMPLITUDE.get(color, _DEFAULT_TEXTURE_AMPLITUDE)
    return Look(color=color, hsv_start=start, hsv_end=end, texture=texture,
                amplitude=float(rng.uniform(0.4, 1.0) * top),
                direction=float(rng.uniform(0, 2 * np.pi)),
                frequency=float(rng.uniform(1.5, 4.0)),
                phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=6)))


def sample_free_look(rng: np.random.Generator, texture_probability: float) -> Look:
    """A look of any colour at all (for distractors), not tied to a colour name."""
    hsv = (float(rng.uniform(0, 360)), float(rng.uniform(0, 1)), float(rng.uniform(0.15, 1)))
    return Look(color="", hsv_start=hsv, hsv_end=hsv,
                texture="mottled" if rng.random() < texture_probability else "flat",
                amplitude=float(rng.uniform(0.05, 0.2)), direction=float(rng.uniform(0, 6.3)),
                frequency=float(rng.uniform(1.0, 3.0)),
                phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=6)))


def _brightness(look: Look, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness factor at object-frame coordinates (u, v), in units of the radius."""
    along = np.cos(look.direction) * u + np.sin(look.direction) * v
    if look.texture == "shaded":
        return 1.0 + look.amplitude * np.clip(along, -1.0, 1.0)
    if look.texture == "stripes":
        return 1.0 + look.amplitude * np.sign(np.sin(2 * np.pi * look.frequency * along
                                                     + look.phases[0]))
    # mottled: the mean of three plane waves in different directions
    waves = [np.sin(look.frequency * (np.cos(look.phases[i + 3]) * u
                                      + np.sin(look.phases[i + 3]) * v) * 2.0 + look.phases[i])
             for i in range(3)]
    return 1.0 + look.amplitude * (waves[0] + waves[1] + waves[2]) / 3.0


def paint(look: Look, patch_shape: tuple[int, int], patch_origin: tuple[int, int],
          center: np.ndarray, radius: float, angle: float, progress: float = 0.0) -> np.ndarray:
    """Colour of the object: (3,) float32 RGB when flat, else (h, w, 3) RGB over the patch.

    Textures follow the object's position and rotation.

    patch_origin: (top, left) of the patch in the frame; center: (x, y) of the object in pixels.
    """
    rgb = look.rgb(progress)
    height, width = patch_shape
    if look.texture == "flat":
        return rgb
    ys = (np.arange(height, dtype=np.float32) + patch_origin[0] - center[1])[:, None]
    xs = (np.arange(width, dtype=np.float32) + patch_origin[1] - center[0])[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    # Frame offsets -> object frame (undo the rotation), in radius units.
    u = (cos * xs + sin * ys) / max(radius, 1e-3)
    v = (-sin * xs + cos * ys) / max(radius, 1e-3)
    factor = _brightness(look, u, v).astype(np.float32)
    # Clip per channel so that brightening a saturated colour cannot wrap or overflow.
    return cv2.merge([np.minimum(factor * rgb[c], np.float32(255.0)) for c in range(3)])
