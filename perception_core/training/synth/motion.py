"""Object and camera motion for clips.

Objects move with constant acceleration (so paths curve and speeds change smoothly), grow or
shrink exponentially and spin. Three kinds of paths:

  free          random start in the frame, random velocity and acceleration;
  exit/re-enter thrown towards a frame edge and pulled back by the acceleration: the parabola is
                solved so the object is completely outside the frame (camera shake included)
                for a few frames around its peak and back inside before the clip ends;
  crossing      aimed to pass over another object's position at a chosen time (occlusion).

Coordinates are "world" pixels: frame pixels when the camera offset is zero. The camera offset
of frame t is an integer (dx, dy); the frame shows world pixels shifted by it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SynthConfig


@dataclass(frozen=True)
class Trajectory:
    start: np.ndarray         # (2,) x, y centre at frame 0, world pixels
    velocity: np.ndarray      # (2,) pixels / frame at frame 0
    acceleration: np.ndarray  # (2,) pixels / frame^2
    radius: float             # circumradius at frame 0, pixels
    growth: float             # d log(radius) / d frame
    angle: float              # rotation at frame 0, radians
    spin: float               # radians / frame

    def center(self, t: float) -> np.ndarray:
        return self.start + self.velocity * t + 0.5 * self.acceleration * t * t

    def radius_at(self, t: float) -> float:
        return self.radius * float(np.exp(self.growth * t))

    def angle_at(self, t: float) -> float:
        return self.angle + self.spin * t


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(angle), np.sin(angle)])


def _spin_and_growth(rng, config: SynthConfig, length: int) -> tuple[float, float, float]:
    """(angle, spin, growth) so that the scale at the last frame is in config.scale_change."""
    growth = np.log(rng.uniform(*config.scale_change)) / max(length - 1, 1)
    return (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(-config.max_spin, config.max_spin)),
            float(growth))


def free_path(rng: np.random.Generator, config: SynthConfig, frame_hw: tuple[int, int],
              radius: float, length: int) -> Trajectory:
    height, width = frame_hw
    angle, spin, growth = _spin_and_growth(rng, config, length)
    return Trajectory(start=rng.uniform([0.0, 0.0], [width, height]),
                      velocity=_random_direction(rng) * rng.uniform(0, config.max_speed * width),
                      acceleration=_random_direction(rng) * rng.uniform(
                          0, config.max_acceleration * width),
                      radius=radius, growth=growth, angle=angle, spin=spin)


def _edge_start(rng, frame_hw) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(start, outward edge normal, tilted unit direction of travel, start depth inside edge)."""
    height, width = frame_hw
    side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
    normal = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])[side]
    extent = width if side < 2 else height
    depth = rng.uniform(0.1, 0.3) * extent  # start this far inside the edge
    along = rng.uniform(0.2, 0.8) * (height if side < 2 else width)
    position = {0: (depth, along), 1: (width - depth, along),
                2: (along, depth), 3: (along, height - depth)}[side]
    tilt = rng.uniform(-0.5, 0.5)  # radians away from the normal
    cos, sin = np.cos(tilt), np.sin(tilt)
    direction = np.array([cos * normal[0] - sin * normal[1], sin * normal[0] + cos * normal[1]])
    return np.array(position, dtype=np.float64), normal, direction, depth


def exit_reenter_path(rng: np.random.Generator, config: SynthConfig, frame_hw: tuple[int, int],
                      radius: float, length: int, margin: float) -> Trajectory | None:
    """A path that is fully outside the frame around its middle; None if the clip is too short.

    Distance along the (tilted) direction of travel is D(t) = peak - k (t - t_mid)^2 with
    D(0) = 0, i.e. velocity 2 k t_mid and acceleration -2 k. The centre is D cos(tilt) - depth
    beyond the edge, which exceeds the largest radius + camera margin when D > `escape`, i.e. for
    |t - t_mid| < half_out. Sideways drift runs parallel to the edge so it cannot undo that.
    """
    last = length - 1
    if last < 6:
        return None
    angle, spin, growth = _spin_and_growth(rng, config, length)
    start, normal, direction, depth = _edge_start(rng, frame_hw)
    t_mid = rng.uniform(0.3, 0.45) * last
    half_out = rng.uniform(1.0, max(1.0, min(0.2 * last, t_mid - 1.5)))
    largest_radius = radius * max(1.0, float(np.exp(growth * last)))
    escape = (depth + largest_radius + margin + 1.0) / float(np.dot(direction, normal))
    ratio = (half_out / t_mid) ** 2
    peak = escape / (1.0 - ratio)  # so that D(t_mid +- half_out) = escape
    k = peak / t_mid ** 2
    drift = np.array([-normal[1], normal[0]]) * rng.normal(0, 0.3 * config.max_speed)
    return Trajectory(start=start, velocity=direction * 2 * k * t_mid + drift * frame_hw[1],
                      acceleration=-2 * k * direction, radius=radius, growth=growth,
                      angle=angle, spin=spin)


def crossing_path(rng: np.random.Generator, config: SynthConfig, frame_hw: tuple[int, int],
                  radius: float, length: int, target: Trajectory) -> Trajectory:
    """A path through `target`'s position at a random time in the middle of the clip."""
    angle, spin, growth = _spin_and_growth(rng, config, length)
    meet = max(rng.uniform(0.3, 0.7) * (length - 1), 1.0)
    speed = rng.uniform(0.5, 1.5) * config.max_speed * frame_hw[1]
    velocity = _random_direction(rng) * speed
    acceleration = _random_direction(rng) * rng.uniform(0, config.max_acceleration * frame_hw[1])
    # start + velocity * meet + acceleration * meet^2 / 2 = target's centre at `meet`
    start = target.center(meet) - velocity * meet - 0.5 * acceleration * meet ** 2
    return Trajectory(start=start, velocity=velocity, acceleration=acceleration, radius=radius,
                      growth=growth, angle=angle, spin=spin)


def camera_path(rng: np.random.Generator, length: int, jitter: float) -> tuple[np.ndarray, int]:
    """((length, 2) int camera offsets dx, dy, margin) with |offset| <= margin.

    A slow sway (two sines of random period) plus frame-to-frame shake, both of amplitude about
    `jitter` pixels.
    """
    margin = int(np.ceil(2 * jitter))
    if margin == 0:
        return np.zeros((length, 2), dtype=np.int64), 0
    t = np.arange(length)[:, None]
    periods = rng.uniform(8, 40, size=(1, 2))
    phases = rng.uniform(0, 2 * np.pi, size=(1, 2))
    sway = jitter * np.sin(2 * np.pi * t / periods + phases)
    shake = rng.normal(0, 0.4 * jitter, size=(length, 2))
    offsets = np.clip(np.round(sway + shake), -margin, margin).astype(np.int64)
    return offsets, margin
