"""Shape outlines and their rasterisation into small binary patches.

Every shape is a list of polygons on the unit circle scale (circumradius 1, centred at 0): the
first is the outline, the others are holes (only the ring has one). Rasterising places the
outline at a centre (x, y) in pixels, scaled by a radius and rotated, and fills it with OpenCV
(even-odd filling, so holes stay empty) inside the clipped bounding box only, which keeps the cost
proportional to the object and not to the frame.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from .vocabulary import SHAPES

SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision: 1/16 pixel
_RING_INNER = 0.55  # inner / outer radius of the ring
_STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
_CROSS_HALF_WIDTH = 0.3  # half width of a cross arm / arm length


@dataclass(frozen=True)
class Patch:
    """A binary mask covering rows top..top+h-1 and columns left..left+w-1 of a frame."""
    mask: np.ndarray  # (h, w) bool
    top: int
    left: int
    outline: tuple[np.ndarray, ...]  # the polygons in frame coordinates, int32 fixed point

    @property
    def bottom(self) -> int:
        return self.top + self.mask.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.mask.shape[1]

    @property
    def region(self) -> tuple[slice, slice]:
        """Index of the patch in the frame: frame[patch.region][patch.mask]."""
        return slice(self.top, self.bottom), slice(self.left, self.right)


def _regular_polygon(vertices: int, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + np.arange(vertices) * 2 * np.pi / vertices
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    points = _regular_polygon(10)
    points[1::2] *= _STAR_INNER
    return points


def _cross() -> np.ndarray:
    a, w = 1.0 / np.sqrt(1 + _CROSS_HALF_WIDTH ** 2), _CROSS_HALF_WIDTH
    w = w * a  # so that the arm corners lie on the unit circle
    return np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a],
                     [-w, w], [-a, w], [-a, -w], [-w, -w]])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    # The classic heart curve; y is negated so the point faces down in image coordinates.
    points = np.stack([16 * np.sin(t) ** 3,
                       -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))],
                      axis=1)
    points -= (points.max(axis=0) + points.min(axis=0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


@functools.lru_cache(maxsize=None)
def unit_outline(shape: str) -> tuple[np.ndarray, ...]:
    """Polygons (float64, (N, 2) x/y) of a shape with circumradius 1; holes after the outline."""
    builders = {
        "circle": lambda: [_regular_polygon(64)],
        "square": lambda: [_regular_polygon(4, phase=np.pi / 4)],
        "triangle": lambda: [_regular_polygon(3)],
        "star": lambda: [_star()],
        "ring": lambda: [_regular_polygon(64), _RING_INNER * _regular_polygon(64)],
        "cross": lambda: [_cross()],
        "hexagon": lambda: [_regular_polygon(6)],
        "heart": lambda: [_heart()],
    }
    if shape not in builders:
        raise ValueError(f"unknown shape '{shape}'; shapes are {', '.join(SHAPES)}")
    polygons = tuple(np.asarray(p, dtype=np.float64) for p in builders[shape]())
    for polygon in polygons:
        polygon.setflags(write=False)
    return polygons


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@functools.lru_cache(maxsize=None)
def area_factor(shape: str) -> float:
    """Area of the shape with circumradius 1."""
    outline, *holes = unit_outline(shape)
    return _polygon_area(outline) - sum(_polygon_area(hole) for hole in holes)


def radius_for_area(shape: str, area: float) -> float:
    """Circumradius (pixels) that gives the shape `area` square pixels."""
    return float(np.sqrt(area / area_factor(shape)))


def place(polygons: tuple[np.ndarray, ...], center: np.ndarray, radius: float,
          angle: float, aspect: float = 1.0) -> list[np.ndarray]:
    """Unit polygons scaled (x by radius*aspect, y by radius), rotated by angle, then moved."""
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    scale = np.array([radius * aspect, radius])
    return [(polygon * scale) @ rotation.T + np.asarray(center, dtype=np.float64)
            for polygon in polygons]


def fill_polygons(image: np.ndarray, outline: tuple[np.ndarray, ...], value) -> None:
    """Even-odd fill of fixed-point polygons into an image, in place (clipped by OpenCV)."""
    cv2.fillPoly(image, list(outline), value, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)


def to_fixed_point(polygons: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Pixel-space float polygons -> int32 fixed-point polygons for cv2.fillPoly."""
    return tuple(np.round(p * (1 << SUBPIXEL_BITS)).astype(np.int32) for p in polygons)


def rasterize_polygons(polygons: list[np.ndarray], frame_hw: tuple[int, int]) -> Patch | None:
    """Even-odd fill of pixel-space polygons, clipped to the frame; None when nothing is inside."""
    everything = np.concatenate(polygons)
    height, width = frame_hw
    top = max(int(np.floor(everything[:, 1].min())), 0)
    left = max(int(np.floor(everything[:, 0].min())), 0)
    bottom = min(int(np.ceil(everything[:, 1].max())) + 1, height)
    right = min(int(np.ceil(everything[:, 0].max())) + 1, width)
    if bottom <= top or right <= left:
        return None
    outline = to_fixed_point(polygons)
    # Integer shift into the patch, so filling the patch and filling the frame with `outline`
    # decide every pixel identically.
    offset = np.array([left, top], dtype=np.int32) << SUBPIXEL_BITS
    canvas = np.zeros((bottom - top, right - left), dtype=np.uint8)
    fill_polygons(canvas, tuple(p - offset for p in outline), 1)
    if not canvas.any():
        return None
    return Patch(canvas.view(bool), top, left, outline)


def rasterize_shape(shape: str, center: np.ndarray, radius: float, angle: float,
                    frame_hw: tuple[int, int]) -> Patch | None:
    """Binary patch of a vocabulary shape; None when it lies completely outside the frame."""
    return rasterize_polygons(place(unit_outline(shape), center, radius, angle), frame_hw)


def blob_outline(rng: np.random.Generator, vertices: int = 40) -> np.ndarray:
    """An irregular closed outline (circumradius 1) that resembles no vocabulary shape.

    A circle whose radius is modulated by random low harmonics with a large total amplitude,
    so the result is clearly lumpy rather than round.
    """
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    harmonics = np.arange(2, 6)
    amplitudes = rng.uniform(0.08, 0.3, size=harmonics.size)
    phases = rng.uniform(0, 2 * np.pi, size=harmonics.size)
    waves = amplitudes[:, None] * np.cos(harmonics[:, None] * angles + phases[:, None])
    radius = 1 + waves.sum(axis=0)
    radius = np.clip(radius, 0.25, None)
    points = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    return points / np.linalg.norm(points, axis=1).max()
