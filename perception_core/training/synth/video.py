"""Clips: moving, growing, spinning objects with track ids, over a shaking camera.

A clip samples its actors once (vocabulary objects and out-of-vocabulary distractors, each with a
`motion.Trajectory`, a fixed depth and a `appearance.Look` whose colour drifts slowly inside its
colour name), a background larger than the frame by the camera margin, and one set of camera
effects whose gain changes over the clip. Every frame is then composed like a still image, so
masks are visible parts only; a frame where an object shows fewer than `min_visible_pixels`
pixels (hidden, or outside the frame) has no mask for it (None), and objects never visible in
any frame are not tracks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import appearance, backgrounds, motion
from .compose import Layer, bbox_of, mask_of, paint, visible_pixel_count
from .config import SynthConfig, excluded_compositions, make_config
from .photometric import apply_photometric, sample_photometric
from .scene import Seed, back_to_front, log_uniform, streams
from .shapes import place, radius_for_area, rasterize_polygons, unit_outline
from .vocabulary import allowed_compositions, category_id, size_attribute

_EXIT_REENTER_MAX_AREA = 0.06  # objects thrown out of the frame stay small enough to come back


@dataclass(frozen=True)
class Actor:
    outline: tuple[np.ndarray, ...]  # unit polygons (shapes.unit_outline or a distractor's)
    aspect: float                    # x stretch of the outline (distractors only)
    path: motion.Trajectory
    look: appearance.Look
    depth_key: float                 # larger is painted earlier (further back)
    shape: str | None                # None for distractors
    color: str | None


def _path_kind(rng, config: SynthConfig, has_earlier: bool) -> str:
    roll = rng.random()
    if roll < config.exit_reenter_probability:
        return "exit_reenter"
    if has_earlier and roll < config.exit_reenter_probability + config.crossing_probability:
        return "crossing"
    return "free"


def _object_path(rng, kind: str, config: SynthConfig, frame_hw, radius: float, length: int,
                 margin: int, earlier: list[Actor]) -> motion.Trajectory:
    path = None
    if kind == "exit_reenter":  # None when the clip is too short to leave and come back
        path = motion.exit_reenter_path(rng, config, frame_hw, radius, length, margin)
    elif kind == "crossing":
        target = earlier[int(rng.integers(len(earlier)))].path
        path = motion.crossing_path(rng, config, frame_hw, radius, length, target)
    return path or motion.free_path(rng, config, frame_hw, radius, length)


def _sample_objects(rng, look_rng, config: SynthConfig, frame_hw, length: int, margin: int,
                    pairs: list[tuple[str, str]]) -> list[Actor]:
    height, width = frame_hw
    actors: list[Actor] = []
    for _ in range(int(rng.integers(config.objects_per_video[0],
                                    config.objects_per_video[1] + 1))):
        shape, color = pairs[int(rng.integers(len(pairs)))]
        kind = _path_kind(rng, config, bool(actors))
        area = log_uniform(rng, *config.video_area_fraction)
        if kind == "exit_reenter":  # keep thrown objects small enough to leave and come back
            area = min(area, _EXIT_REENTER_MAX_AREA)
        radius = radius_for_area(shape, area * height * width)
        path = _object_path(rng, kind, config, frame_hw, radius, length, margin, actors)
        depth = np.log(area) + rng.normal(0.0, config.depth_shuffle)
        look = appearance.sample_look(color, look_rng, config.texture_probability,
                                      config.color_drift)
        actors.append(Actor(unit_outline(shape), 1.0, path, look, depth, shape, color))
    return actors


def _sample_distractors(rng, config: SynthConfig, frame_hw, length: int) -> list[Actor]:
    """Static occluders (they move only with the camera) and moving blobs."""
    height, width = frame_hw
    static = int(rng.integers(config.distractors[0], config.distractors[1] + 1)) // 2
    moving = int(rng.integers(config.moving_distractors[0], config.moving_distractors[1] + 1))
    actors = []
    for index in range(static + moving):
        area = log_uniform(rng, 0.005, 0.05)
        radius = float(np.sqrt(area * height * width / np.pi)) * 1.3
        path = motion.free_path(rng, config, frame_hw, radius, length)
        if index < static:
            path = motion.Trajectory(path.start, np.zeros(2), np.zeros(2), radius, 0.0,
                                     path.angle, 0.0)
        outline, aspect = backgrounds.distractor_outline(rng)
        look = appearance.sample_free_look(rng, config.texture_probability)
        depth = np.log(area) + rng.normal(0.0, config.depth_shuffle)
        actors.append(Actor(outline, aspect, path, look, depth, None, None))
    return actors


def _frame_layers(actors: list[Actor], t: int, offset: np.ndarray, frame_hw,
                  progress: float) -> list[Layer]:
    """Back-to-front layers of frame t; layer.owner indexes `actors` (-1 for distractors)."""
    keyed = []
    for index, actor in enumerate(actors):
        center = actor.path.center(t) - offset
        radius, angle = actor.path.radius_at(t), actor.path.angle_at(t)
        patch = rasterize_polygons(place(actor.outline, center, radius, angle, actor.aspect),
                                   frame_hw)
        if patch is None:
            continue
        fill = appearance.paint(actor.look, patch.mask.shape, (patch.top, patch.left), center,
                                radius, angle, progress)
        keyed.append((actor.depth_key, Layer(patch, fill, index if actor.shape else -1)))
    return back_to_front(keyed)


def _empty_track(actor: Actor, length: int) -> dict:
    return {"category_id": category_id(actor.shape, actor.color),
            "attributes": {"color": actor.color, "shape": actor.shape},
            "masks": [None] * length, "bboxes": [None] * length, "areas": [None] * length}


def _record_frame(tracks: dict[int, dict], layers: list[Layer], labels: np.ndarray, t: int,
                  min_visible_pixels: int) -> None:
    for index, layer in enumerate(layers):
        if layer.owner < 0 or layer.owner not in tracks:
            continue
        if visible_pixel_count(labels, index, layer.patch) < min_visible_pixels:
            continue
        mask = mask_of(labels, index, layer.patch)
        track = tracks[layer.owner]
        track["masks"][t], track["bboxes"][t] = mask, bbox_of(mask)
        track["areas"][t] = int(mask.sum())


def _finish_tracks(tracks: dict[int, dict], frame_area: int) -> list[dict]:
    """Drops never-visible tracks, numbers the rest 1.. and adds the median size attribute."""
    finished = []
    for owner in sorted(tracks):
        track = tracks[owner]
        areas = [a for a in track["areas"] if a is not None]
        if not areas:
            continue
        track["attributes"]["size"] = size_attribute(float(np.median(areas)), frame_area)
        finished.append({"track_id": len(finished) + 1, **track})
    return finished


def generate_video(seed: Seed, config: SynthConfig | None = None,
                   split: str = "train") -> tuple[list[np.ndarray], list[dict]]:
    """One annotated clip, fully determined by (seed, config, split).

    Returns the frames ((H, W, 3) uint8 RGB, H, W = config.video_size) and the tracks, each a
    dict with "track_id" (1.., unique in the clip), "category_id", "attributes" ({"color",
    "shape", "size"}, size from the median visible area) and per frame "masks" ((H, W) bool or
    None), "bboxes" ([x, y, w, h] or None) and "areas" (int or None).
    """
    config = config or make_config()
    frame_hw = tuple(config.video_size)
    layout_rng, look_rng, background_rng, camera_rng = streams(seed, 4)
    length = int(layout_rng.integers(config.frames[0], config.frames[1] + 1))
    offsets, margin = motion.camera_path(camera_rng, length, config.camera_jitter)
    pairs = allowed_compositions(excluded_compositions(config, split))
    actors = _sample_objects(layout_rng, look_rng, config, frame_hw, length, margin, pairs)
    object_count = len(actors)
    actors += _sample_distractors(layout_rng, config, frame_hw, length)
    world = backgrounds.sample_background(
        background_rng, config, (frame_hw[0] + 2 * margin, frame_hw[1] + 2 * margin))
    photometric = sample_photometric(camera_rng, config)
    tracks = {index: _empty_track(actors[index], length) for index in range(object_count)}
    frames = []
    for t in range(length):
        progress = t / max(length - 1, 1)
        dx, dy = (int(v) for v in offsets[t])
        background = world[margin + dy:margin + dy + frame_hw[0],
                           margin + dx:margin + dx + frame_hw[1]]
        layers = _frame_layers(actors, t, np.array([dx, dy], dtype=np.float64), frame_hw,
                               progress)
        image, labels = paint(background, layers)
        _record_frame(tracks, layers, labels, t, config.min_visible_pixels)
        frames.append(apply_photometric(image, photometric, camera_rng, progress))
    return frames, _finish_tracks(tracks, frame_hw[0] * frame_hw[1])
