"""Camera effects applied after composition: illumination, blur, sensor noise, JPEG artifacts.

None of them changes a mask: the annotations describe the scene geometry, not the pixels' looks.
Illumination is a global gain times a linear gradient across the frame times a slight colour tint;
with strength s = `SynthConfig.illumination_strength` the gain lies in 1 +- 0.6 s and the gradient
in 1 +- 0.6 s, bounded so that the colour names survive it.
A video samples one `Photometric` per clip and modulates its gain over time (`gain_at`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from .config import SynthConfig

_NOISE_BANK_SEED = 20240611  # fixed: the bank must be identical in every process


@dataclass(frozen=True)
class Photometric:
    gain: float                       # global brightness factor
    gain_swing: float                 # videos: relative gain change amplitude over the clip
    gain_phase: float                 # videos: phase of that change, radians
    tint: tuple[float, float, float]  # per-channel RGB factor (white balance error)
    gradient_angle: float             # direction of the illumination gradient, radians
    gradient_strength: float          # brightness difference between the two frame sides / 2
    blur_sigma: float                 # 0: no blur
    noise_sigma: float                # grey levels; 0: no noise
    jpeg_quality: int | None          # None: no JPEG round trip

    def gain_at(self, progress: float) -> float:
        """Gain at `progress` in 0..1 through a clip (a half-period sine: one slow change)."""
        return self.gain * (1.0 + self.gain_swing * np.sin(np.pi * progress + self.gain_phase))


def sample_photometric(rng: np.random.Generator, config: SynthConfig) -> Photometric:
    strength = config.illumination_strength
    blur = rng.uniform(*config.blur_sigma) if rng.random() < config.blur_probability else 0.0
    jpeg = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)) \
        if rng.random() < config.jpeg_probability else None
    return Photometric(
        gain=float(rng.uniform(1.0 - 0.6 * strength, 1.0 + 0.6 * strength)),
        gain_swing=float(rng.uniform(0.0, 0.6 * strength)),
        gain_phase=float(rng.uniform(0, 2 * np.pi)),
        tint=tuple(float(t) for t in rng.uniform(1.0 - 0.15 * strength, 1.0 + 0.15 * strength, 3)),
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        gradient_strength=float(rng.uniform(0.0, 0.6 * strength)),
        blur_sigma=float(blur),
        noise_sigma=float(rng.uniform(*config.noise_sigma)),
        jpeg_quality=jpeg)


def _light_field(size_hw: tuple[int, int], params: Photometric, gain: float) -> np.ndarray:
    """(H, W) float32 multiplicative light field (before the per-channel tint)."""
    height, width = size_hw
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    slope = np.float32(params.gradient_strength / np.sqrt(2.0))
    return np.float32(gain) * (1.0 + slope * (np.float32(np.cos(params.gradient_angle)) * xs
                                              + np.float32(np.sin(params.gradient_angle)) * ys))


@functools.lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """(2H, 2W) float32 standard normal noise, the same in every process.

    Drawing fresh Gaussian noise costs more than the rest of an image; a random crop of a fixed
    bank, chosen by the image's own generator, is as good for training and keeps determinism.
    """
    bank = np.random.default_rng(_NOISE_BANK_SEED).standard_normal((2 * height, 2 * width),
                                                                    dtype=np.float32)
    bank.setflags(write=False)
    return bank


def _noise_crop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    bank = _noise_bank(height, width)
    top, left = rng.integers(0, height + 1), rng.integers(0, width + 1)
    crop = bank[top:top + height, left:left + width]
    return crop.T if rng.random() < 0.5 and height == width else crop


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 RGB -> JPEG at `quality` -> uint8 RGB (the artifacts are the point)."""
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])


def apply_photometric(image: np.ndarray, params: Photometric, rng: np.random.Generator,
                      progress: float = 0.0) -> np.ndarray:
    """float32 (H, W, 3) RGB 0..255 -> uint8 RGB with every effect applied.

    Works channel by channel on contiguous planes (much faster than broadcasting over the
    trailing RGB axis): light, blur, then sensor noise (a luminance part shared by the channels
    plus a weaker independent colour part), then rounding and the optional JPEG round trip.
    """
    height, width = image.shape[:2]
    field = _light_field((height, width), params, params.gain_at(progress))
    luminance = None
    if params.noise_sigma > 0:
        luminance = np.float32(0.85 * params.noise_sigma) * _noise_crop(rng, height, width)
    planes = []
    for channel, tint in zip(cv2.split(image), params.tint):
        plane = channel * (field * np.float32(tint))
        if params.blur_sigma > 0:
            plane = cv2.GaussianBlur(plane, (0, 0), params.blur_sigma)
        if luminance is not None:
            plane += luminance
            plane += np.float32(0.5 * params.noise_sigma) * _noise_crop(rng, height, width)
        plane += 0.5  # astype truncates: this rounds to nearest
        planes.append(np.clip(plane, 0, 255, out=plane).astype(np.uint8))
    result = cv2.merge(planes)
    if params.jpeg_quality is not None:
        result = jpeg_round_trip(result, params.jpeg_quality)
    return result
