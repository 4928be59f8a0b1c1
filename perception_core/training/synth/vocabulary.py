"""The benchmark's vocabulary: 8 shapes x 8 colours = 64 categories, attributes and prompts.

A COCO category is one colour-shape composition::

    {"id": 28, "name": "red star", "supercategory": "star", "shape": "star", "color": "red"}

Ids are 1-based, ordered by shape then colour: ``id = shape_index * 8 + color_index + 1``.
Every annotation carries ``"attributes": {"color", "shape", "size"}``. The size word is relative to
the frame so that it means the same at every resolution (fractions of the frame area, of the
*visible* mask; for a video track, the median over the frames where the track is visible):

    small  < 2 %    (about 78 x 78 px of a 640 x 480 frame: COCO small plus the lower COCO medium)
    medium < 10 %
    large  >= 10 %

Prompts are plain phrases built from these words: "star", "red star", "small blue ring",
"the red star", "red objects". A prompt refers to *every* annotation whose attributes agree with
each word it contains (articles are ignored, so "the red star" means all red stars), which lets an
evaluation score the prompt "star" against the stars of every colour.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "hexagon",
                           "heart")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "magenta", "white")
SIZES: tuple[str, ...] = ("small", "medium", "large")
# Upper bounds (visible area / frame area) of "small" and "medium"; larger is "large".
SIZE_THRESHOLDS: tuple[float, float] = (0.02, 0.10)

PROMPT_KINDS: tuple[str, ...] = ("shape", "composition", "phrase", "all")
_KIND_ALIASES = {"category": "shape", "attribute": "composition"}  # the wording
_IGNORED_WORDS = frozenset({"the", "a", "an", "all", "every", "any"})
_WILDCARD_NOUNS = frozenset({"object", "shape", "thing"})
_SYNONYMS = {"big": "large", "tiny": "small", "little": "small", "circular": "circle"}


class VocabularyError(ValueError):
    """A composition name or prompt uses words outside the benchmark vocabulary."""


def composition_name(shape: str, color: str) -> str:
    """'red star' for shape 'star' and colour 'red'."""
    return f"{color} {shape}"


def category_id(shape: str, color: str) -> int:
    """1-based COCO category id of a composition."""
    if shape not in SHAPES or color not in COLORS:
        raise VocabularyError(f"unknown composition '{color} {shape}'; "
                              f"shapes: {', '.join(SHAPES)}; colours: {', '.join(COLORS)}")
    return SHAPES.index(shape) * len(COLORS) + COLORS.index(color) + 1


def composition_of(category: int) -> tuple[str, str]:
    """(shape, colour) of a 1-based category id."""
    if not 1 <= category <= len(SHAPES) * len(COLORS):
        raise VocabularyError(f"category id {category} outside 1..{len(SHAPES) * len(COLORS)}")
    shape_index, color_index = divmod(category - 1, len(COLORS))
    return SHAPES[shape_index], COLORS[color_index]


def present_names(records: list[dict]) -> list[str]:
    """Composition names ("red star", ...) of the categories in annotation or track records (each
    with a "category_id"), in category-id order: a generated clip's own prompts."""
    return [composition_name(*composition_of(i)) for i in sorted({int(r["category_id"]) for r in records})]


def categories() -> list[dict]:
    """The 64 COCO category records, ordered by id."""
    return [{"id": category_id(shape, color), "name": composition_name(shape, color),
             "supercategory": shape, "shape": shape, "color": color}
            for shape in SHAPES for color in COLORS]


def all_composition_names() -> list[str]:
    return [composition_name(shape, color) for shape in SHAPES for color in COLORS]


def parse_compositions(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Canonical composition names from "red star, Blue ring" (or a list of names).

    Raises VocabularyError naming every unknown entry and listing the valid names.
    """
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [" ".join(item.lower().split()) for item in items if item.strip()]
    valid = set(all_composition_names())
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise VocabularyError(
            f"unknown composition(s) {', '.join(repr(n) for n in unknown)}; a composition is "
            f"'<colour> <shape>' with colour in {{{', '.join(COLORS)}}} and shape in "
            f"{{{', '.join(SHAPES)}}}; valid names: {', '.join(all_composition_names())}")
    return tuple(dict.fromkeys(names))  # de-duplicated, order kept


def allowed_compositions(excluded: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(shape, colour) pairs that may be generated when `excluded` names are held out."""
    excluded_names = set(parse_compositions(list(excluded)))
    return [(shape, color) for shape in SHAPES for color in COLORS
            if composition_name(shape, color) not in excluded_names]


def size_attribute(visible_area: float, frame_area: float) -> str:
    """'small' | 'medium' | 'large' from the visible area relative to the frame area."""
    fraction = visible_area / float(frame_area)
    if fraction < SIZE_THRESHOLDS[0]:
        return "small"
    return "medium" if fraction < SIZE_THRESHOLDS[1] else "large"


def _attributes_of(item: Mapping | str) -> dict:
    """Attributes of a category record, an annotation, or a composition name."""
    if isinstance(item, str):
        words = item.lower().split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise VocabularyError(f"'{item}' is not a composition such as 'red star'")
        return {"color": words[0], "shape": words[1]}
    if "attributes" in item:
        return dict(item["attributes"])
    if "shape" in item and "color" in item:
        return {"shape": item["shape"], "color": item["color"]}
    raise VocabularyError("expected a category (with 'shape' and 'color'), an annotation "
                          "(with 'attributes') or a composition name")


def prompts_for(item: Mapping | str, kind: str = "composition") -> list[str]:
    """Prompts that refer to `item` (a category, an annotation or a composition name).

    kind: "shape" (or "category") -> ["star"]; "composition" (or "attribute") -> ["red star"];
    "phrase" -> ["the red star", "a red star", "small red star", "the small red star",
    "small star"] (size words only when the item has a size attribute); "all" -> all of these.
    Every returned prompt refers to the item under `prompt_refers_to`.
    """
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in PROMPT_KINDS:
        raise VocabularyError(f"unknown prompt kind '{kind}'; use one of "
                              f"{', '.join([*PROMPT_KINDS, *_KIND_ALIASES])}")
    attributes = _attributes_of(item)
    shape, color, size = attributes["shape"], attributes["color"], attributes.get("size")
    prompts = {"shape": [shape], "composition": [composition_name(shape, color)]}
    phrases = [f"the {color} {shape}", f"a {color} {shape}"]
    if size is not None:
        phrases += [f"{size} {color} {shape}", f"the {size} {color} {shape}", f"{size} {shape}"]
    prompts["phrase"] = phrases
    if kind == "all":
        return list(dict.fromkeys(prompts["shape"] + prompts["composition"] + phrases))
    return prompts[kind]


@dataclass(frozen=True)
class PromptQuery:
    """The constraints a prompt puts on an annotation; None means "any"."""
    shape: str | None = None
    color: str | None = None
    size: str | None = None


def _singular(word: str) -> str:
    if word.endswith("es") and word[:-2] in SHAPES:  # crosses
        return word[:-2]
    if word.endswith("s") and (word[:-1] in SHAPES or word[:-1] in _WILDCARD_NOUNS):
        return word[:-1]
    return word


def parse_prompt(prompt: str) -> PromptQuery:
    """PromptQuery of a phrase such as 'the small blue rings'; raises VocabularyError."""
    words = [_singular(_SYNONYMS.get(w, w)) for w in re.findall(r"[a-z]+", prompt.lower())]
    found: dict[str, str] = {}
    for word in words:
        if word in _IGNORED_WORDS or word in _WILDCARD_NOUNS:
            continue
        slot = ("shape" if word in SHAPES else "color" if word in COLORS
                else "size" if word in SIZES else None)
        if slot is None:
            raise VocabularyError(
                f"prompt '{prompt}': unknown word '{word}'; prompts combine sizes "
                f"({', '.join(SIZES)}), colours ({', '.join(COLORS)}) and shapes "
                f"({', '.join(SHAPES)})")
        if slot in found and found[slot] != word:
            raise VocabularyError(f"prompt '{prompt}' names two {slot}s: {found[slot]}, {word}")
        found[slot] = word
    if not found:
        raise VocabularyError(f"prompt '{prompt}' names no shape, colour or size")
    return PromptQuery(**found)


def prompt_refers_to(prompt: str | PromptQuery, attributes: Mapping) -> bool:
    """Whether an annotation with these attributes is one of the things the prompt names."""
    query = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    return all(wanted is None or attributes.get(key) == wanted
               for key, wanted in (("shape", query.shape), ("color", query.color),
                                   ("size", query.size)))


def prompt_category_ids(prompt: str) -> list[int]:
    """Category ids a prompt can refer to (its size word, if any, is not a category property)."""
    query = parse_prompt(prompt)
    return [category_id(shape, color) for shape in SHAPES for color in COLORS
            if query.shape in (None, shape) and query.color in (None, color)]


def annotations_for_prompts(prompts: Sequence[str],
                            annotations: Iterable[Mapping]) -> dict[str, list[int]]:
    """For each prompt, the ids of the annotations it refers to (COCO or YouTube-VIS records).

    An annotation without "attributes" is resolved from its "category_id"; its size then only
    matches prompts without a size word.
    """
    queries = {prompt: parse_prompt(prompt) for prompt in prompts}
    matches: dict[str, list[int]] = {prompt: [] for prompt in prompts}
    for annotation in annotations:
        attributes = annotation.get("attributes")
        if attributes is None:
            shape, color = composition_of(annotation["category_id"])
            attributes = {"shape": shape, "color": color}
        for prompt, query in queries.items():
            if prompt_refers_to(query, attributes):
                matches[prompt].append(annotation["id"])
    return matches
