"""Still images: sample a scene (objects, distractors, background), compose it, annotate it.

Layout. Each object draws a composition uniformly from those allowed in the split, an area that
is log-uniform in `area_fraction` of the frame, a rotation, and a position: free, touching an
earlier object (centre distance about the sum of their equal-area radii, so the visible masks
share a border) or overlapping one. Depth order puts larger things at the back, shuffled by
`depth_shuffle`, so occlusion is common but small objects are not always buried.

Randomness comes from one numpy Generator per concern (layout, looks, background, camera), all
derived from the image's seed, so that e.g. switching blur off does not move any object.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import appearance, backgrounds
from .compose import Layer, bbox_of, mask_of, paint_dropping_hidden
from .config import SynthConfig, excluded_compositions, make_config
from .photometric import apply_photometric, sample_photometric
from .shapes import area_factor, place, radius_for_area, rasterize_polygons, rasterize_shape
from .vocabulary import allowed_compositions, category_id, size_attribute

Seed = int | Sequence[int]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    center: np.ndarray  # (2,) x, y in pixels
    radius: float       # circumradius, pixels
    angle: float        # radians
    depth_key: float    # larger is painted earlier (further back)


def streams(seed: Seed, count: int) -> list[np.random.Generator]:
    """`count` independent generators derived from an int or a sequence of ints."""
    entropy = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else int(seed)
    return [np.random.default_rng(child) for child in
            np.random.SeedSequence(entropy).spawn(count)]


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def equal_area_radius(shape: str, radius: float) -> float:
    """Radius of the circle with the same area: how far the shape reaches on average."""
    return radius * float(np.sqrt(area_factor(shape) / np.pi))


def _pick_composition(rng, pairs, anchor: SceneObject | None, same_color_probability: float):
    if anchor is not None and rng.random() < same_color_probability:
        same = [pair for pair in pairs if pair[1] == anchor.color]
        if same:
            pairs = same
    return pairs[int(rng.integers(len(pairs)))]


def _sample_object(rng, config: SynthConfig, frame_hw, pairs, placed) -> SceneObject:
    height, width = frame_hw
    roll = rng.random()
    touching = bool(placed) and roll < config.touch_probability
    overlapping = bool(placed) and not touching and \
        roll < config.touch_probability + config.overlap_probability
    anchor = placed[int(rng.integers(len(placed)))] if placed else None
    shape, color = _pick_composition(rng, pairs, anchor if touching else None,
                                     config.same_color_neighbor_probability)
    area = log_uniform(rng, *config.area_fraction)
    radius = radius_for_area(shape, area * height * width)
    if touching or overlapping:
        reach = equal_area_radius(anchor.shape, anchor.radius) + equal_area_radius(shape, radius)
        distance = reach * (rng.uniform(0.9, 1.05) if touching else rng.uniform(0.2, 0.7))
        direction = rng.uniform(0, 2 * np.pi)
        center = anchor.center + distance * np.array([np.cos(direction), np.sin(direction)])
    else:
        center = rng.uniform([0.0, 0.0], [width, height])
    depth = np.log(area) + rng.normal(0.0, config.depth_shuffle)
    return SceneObject(shape, color, center, radius, float(rng.uniform(0, 2 * np.pi)), depth)


def sample_objects(rng: np.random.Generator, config: SynthConfig, frame_hw: tuple[int, int],
                   pairs: list[tuple[str, str]]) -> list[SceneObject]:
    """The vocabulary objects of one image, in sampling order."""
    count = int(rng.integers(config.objects_per_image[0], config.objects_per_image[1] + 1))
    placed: list[SceneObject] = []
    for _ in range(count):
        placed.append(_sample_object(rng, config, frame_hw, pairs, placed))
    return placed


def _distractor_layers(rng, config: SynthConfig, frame_hw) -> list[tuple[float, Layer]]:
    """(depth key, layer) of out-of-vocabulary occluders."""
    height, width = frame_hw
    layers = []
    for _ in range(int(rng.integers(config.distractors[0], config.distractors[1] + 1))):
        area = log_uniform(rng, 0.005, 0.1)
        radius = float(np.sqrt(area * height * width / np.pi)) * 1.3
        center = rng.uniform([0.0, 0.0], [width, height])
        angle = float(rng.uniform(0, 2 * np.pi))
        look = appearance.sample_free_look(rng, config.texture_probability)
        depth = np.log(area) + rng.normal(0.0, config.depth_shuffle)
        outline, aspect = backgrounds.distractor_outline(rng)
        patch = rasterize_polygons(place(outline, center, radius, angle, aspect), frame_hw)
        if patch is not None:
            fill = appearance.paint(look, patch.mask.shape, (patch.top, patch.left), center,
                                      radius, angle)
            layers.append((depth, Layer(patch, fill, owner=-1)))
    return layers


def object_layers(objects: list[SceneObject], looks: list[appearance.Look],
                  frame_hw: tuple[int, int], progress: float = 0.0) -> list[tuple[float, Layer]]:
    """(depth key, layer) of each object that reaches into the frame."""
    layers = []
    for index, (item, look) in enumerate(zip(objects, looks)):
        patch = rasterize_shape(item.shape, item.center, item.radius, item.angle, frame_hw)
        if patch is not None:
            fill = appearance.paint(look, patch.mask.shape, (patch.top, patch.left),
                                      item.center, item.radius, item.angle, progress)
            layers.append((item.depth_key, Layer(patch, fill, owner=index)))
    return layers


def back_to_front(keyed_layers: list[tuple[float, Layer]]) -> list[Layer]:
    """Layers sorted by descending depth key (stable, so ties keep their sampling order)."""
    order = sorted(range(len(keyed_layers)), key=lambda i: -keyed_layers[i][0])
    return [keyed_layers[i][1] for i in order]


def annotate(objects: list[SceneObject], layers: list[Layer], labels: np.ndarray) -> list[dict]:
    """One instance record per drawn object, in depth order (back to front)."""
    frame_area = labels.size
    instances = []
    for index, layer in enumerate(layers):
        if layer.owner < 0:
            continue
        item = objects[layer.owner]
        mask = mask_of(labels, index, layer.patch)
        area = int(mask.sum())
        instances.append({
            "mask": mask, "bbox": bbox_of(mask), "area": area,
            "category_id": category_id(item.shape, item.color),
            "attributes": {"color": item.color, "shape": item.shape,
                           "size": size_attribute(area, frame_area)},
            "visible_fraction": round(area / int(layer.patch.mask.sum()), 4),
        })
    return instances


def generate_image(seed: Seed, config: SynthConfig | None = None,
                   split: str = "train") -> tuple[np.ndarray, list[dict]]:
    """One annotated image, fully determined by (seed, config, split).

    Returns the (H, W, 3) uint8 RGB image and a list of instances, each a dict with
    "mask" ((H, W) bool, visible part only), "bbox" ([x, y, w, h] pixel extent of the mask),
    "area" (mask pixels), "category_id", "attributes" ({"color", "shape", "size"}) and
    "visible_fraction" (visible / unoccluded in-frame pixels). In split "train" the config's
    held-out compositions are never drawn.
    """
    config = config or make_config()
    frame_hw = tuple(config.image_size)
    layout_rng, look_rng, background_rng, camera_rng = streams(seed, 4)
    pairs = allowed_compositions(excluded_compositions(config, split))
    objects = sample_objects(layout_rng, config, frame_hw, pairs)
    looks = [appearance.sample_look(item.color, look_rng, config.texture_probability)
             for item in objects]
    keyed = object_layers(objects, looks, frame_hw) + \
        _distractor_layers(layout_rng, config, frame_hw)
    background = backgrounds.sample_background(background_rng, config, frame_hw)
    image, labels, layers = paint_dropping_hidden(background, back_to_front(keyed),
                                                  config.min_visible_pixels)
    instances = annotate(objects, layers, labels)
    photometric = sample_photometric(camera_rng, config)
    return apply_photometric(image, photometric, camera_rng), instances
