"""Backgrounds: flat, gradients, smooth noise, stripes, checkerboards, clutter and photographs.

All kinds return (H, W, 3) float32 RGB in 0..255. Background colours have a bounded saturation
(`SynthConfig.background_saturation`) so that the vocabulary's saturated colours stand out; the
"clutter" kind adds out-of-vocabulary blobs, sticks and ellipses in any colour.

Photographs come only from sample images that installed packages already ship (scikit-learn's
china.jpg / flower.jpg, matplotlib's grace_hopper.jpg); nothing is downloaded. They are found
without importing those packages. When none is installed the "photo" kind falls back to clutter,
so outputs are byte-identical only between environments with the same photo files (the dataset
json records which were used).
"""
from __future__ import annotations

import colorsys
import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

from .config import BACKGROUND_KINDS, SynthConfig
from .shapes import SUBPIXEL_BITS, blob_outline, place

# (package, path inside the package) of real photographs shipped by common pip packages.
_PHOTO_CANDIDATES = (
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


@functools.lru_cache(maxsize=None)
def _find_photos() -> tuple[tuple[str, Path], ...]:
    """(label "package/path", file) of each installed sample photograph, in a fixed order."""
    found = []
    for package, relative in _PHOTO_CANDIDATES:
        spec = importlib.util.find_spec(package)  # locates without importing the package
        for root in (spec.submodule_search_locations or []) if spec else []:
            if (Path(root) / relative).is_file():
                found.append((f"{package}/{relative}", Path(root) / relative))
                break
    return tuple(found)


def available_photos() -> tuple[Path, ...]:
    """Paths of the installed sample photographs (possibly none), in a fixed order."""
    return tuple(path for _, path in _find_photos())


def photo_labels() -> list[str]:
    """Environment-independent names of the photographs in use, for the dataset's info."""
    return [label for label, _ in _find_photos()]


@functools.lru_cache(maxsize=None)
def _load_photo(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read sample photo '{path}'")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image.setflags(write=False)
    return image


def random_rgb(rng: np.random.Generator, max_saturation: float,
               value: tuple[float, float] = (0.15, 0.85)) -> np.ndarray:
    """(3,) float32 RGB in 0..255 of a random colour with bounded saturation."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, max_saturation),
                              rng.uniform(*value))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _coordinates(size_hw: tuple[int, int], angle: float) -> np.ndarray:
    """(H, W) float32 coordinate along direction `angle`, in pixels."""
    height, width = size_hw
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    return np.float32(np.cos(angle)) * xs + np.float32(np.sin(angle)) * ys


def expand(weight: np.ndarray, rgb: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 weights -> (H, W, 3) float32 `offset + weight * rgb`.

    Built channel by channel and merged: numpy broadcasting over a trailing axis of 3 is several
    times slower than three contiguous 2-D operations.
    """
    base = np.zeros(3, dtype=np.float32) if offset is None else offset
    return cv2.merge([weight * np.float32(rgb[c]) + np.float32(base[c]) for c in range(3)])


def _blend(weight: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(H, W) weights in 0..1 -> (H, W, 3) mix of two RGB colours."""
    return expand(weight.astype(np.float32, copy=False), second - first, first)


def _flat(size_hw, rng, saturation):
    return expand(np.ones(size_hw, dtype=np.float32), random_rgb(rng, saturation))


def _gradient(size_hw, rng, saturation):
    along = _coordinates(size_hw, rng.uniform(0, 2 * np.pi))
    weight = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    return _blend(weight, random_rgb(rng, saturation), random_rgb(rng, saturation))


def _smooth_noise(size_hw, rng, saturation):
    height, width = size_hw
    cells = int(rng.integers(3, 12))
    coarse = rng.uniform(0, 1, size=(cells, cells)).astype(np.float32)
    weight = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return _blend(np.clip(weight, 0, 1), random_rgb(rng, saturation), random_rgb(rng, saturation))


def _stripes(size_hw, rng, saturation):
    period = rng.uniform(6, 48)
    wave = np.sin(_coordinates(size_hw, rng.uniform(0, np.pi)) * (2 * np.pi / period))
    weight = (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    return _blend(weight, random_rgb(rng, saturation), random_rgb(rng, saturation))


def _checkerboard(size_hw, rng, saturation):
    angle, cell = rng.uniform(0, np.pi / 2), rng.uniform(8, 48)
    first = np.floor(_coordinates(size_hw, angle) / cell)
    second = np.floor(_coordinates(size_hw, angle + np.pi / 2) / cell)
    weight = ((first + second) % 2).astype(np.float32)
    return _blend(weight, random_rgb(rng, saturation), random_rgb(rng, saturation))


def _photo(size_hw, rng, saturation):
    photos = available_photos()
    if not photos:
        return _clutter(size_hw, rng, saturation, blob_count=(10, 30))
    photo = _load_photo(photos[int(rng.integers(len(photos)))])
    height, width = size_hw
    scale = rng.uniform(0.5, 1.0)  # the crop covers this fraction of the photo's short side
    crop_h = max(int(min(photo.shape[0], photo.shape[1] * height / width) * scale), 8)
    crop_w = max(int(crop_h * width / height), 8)
    top = int(rng.integers(0, photo.shape[0] - crop_h + 1))
    left = int(rng.integers(0, photo.shape[1] - crop_w + 1))
    crop = photo[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    image = cv2.resize(np.ascontiguousarray(crop), (width, height),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    # Pull the photo towards grey so that vocabulary colours stay the most saturated things.
    keep = np.float32(rng.uniform(0.3, 1.0) * min(1.0, saturation + 0.3))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.addWeighted(image, keep, cv2.merge([grey, grey, grey]), 1.0 - keep, 0.0)


def _clutter(size_hw, rng, saturation, blob_count=(10, 40)):
    image = _gradient(size_hw, rng, saturation)
    for _ in range(int(rng.integers(blob_count[0], blob_count[1] + 1))):
        draw_distractor(image, rng, scale=rng.uniform(0.02, 0.12))
    return image


_MAKERS = {"flat": _flat, "gradient": _gradient, "noise": _smooth_noise, "stripes": _stripes,
           "checkerboard": _checkerboard, "photo": _photo}


def make_background(kind: str, size_hw: tuple[int, int], rng: np.random.Generator,
                    saturation: float, clutter_blobs: tuple[int, int] = (10, 40)) -> np.ndarray:
    """(H, W, 3) float32 RGB background of the given kind."""
    if kind == "clutter":
        return _clutter(size_hw, rng, saturation, blob_count=clutter_blobs)
    if kind not in _MAKERS:
        raise ValueError(f"unknown background kind '{kind}'; use one of "
                         f"{', '.join(sorted([*_MAKERS, 'clutter']))}")
    return np.ascontiguousarray(_MAKERS[kind](size_hw, rng, saturation), dtype=np.float32)


def distractor_outline(rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], float]:
    """(unit polygons, x aspect) of an out-of-vocabulary thing: a lumpy blob, a long ellipse or
    a thin stick; `shapes.place` puts it into a frame."""
    kind = rng.integers(3)
    if kind == 0:
        return (blob_outline(rng),), 1.0
    if kind == 1:  # an ellipse at least 2.5 times longer than wide never reads as a circle
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        return (np.stack([np.cos(t), np.sin(t)], axis=1),), float(rng.uniform(0.15, 0.4))
    stick = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    return (stick,), float(rng.uniform(0.04, 0.2))


def draw_distractor(image: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """Paints one distractor of radius `scale` x frame diagonal at a random place, in place."""
    height, width = image.shape[:2]
    center = rng.uniform([0, 0], [width, height])
    radius = scale * float(np.hypot(height, width))
    outline, aspect = distractor_outline(rng)
    polygons = place(outline, center, radius, rng.uniform(0, np.pi), aspect)
    color = random_rgb(rng, 1.0, value=(0.1, 1.0))
    fixed = [np.round(p * (1 << SUBPIXEL_BITS)).astype(np.int32) for p in polygons]
    cv2.fillPoly(image, fixed, color.tolist(), lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)


def sample_background(rng: np.random.Generator, config: SynthConfig,
                      size_hw: tuple[int, int]) -> np.ndarray:
    """A background of a kind drawn with `config.background_weights`."""
    weights = np.asarray(config.background_weights, dtype=np.float64)
    if not config.use_photos:
        weights[BACKGROUND_KINDS.index("photo")] = 0.0
    kind = BACKGROUND_KINDS[int(rng.choice(len(BACKGROUND_KINDS), p=weights / weights.sum()))]
    return make_background(kind, size_hw, rng, config.background_saturation,
                           config.clutter_blobs)
