"""COCO / YouTube-VIS annotation files and images, without torch: reading and checking the json,
category tables, segmentations to RLE and masks, image files. datasets.py builds the training
datasets on these; the evaluators (`mobius eval`, `eval-video`, `bag eval`) use them directly, so
evaluation with an ONNX model needs no torch."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from ..config import ConfigError


class DatasetError(ConfigError):
    """An annotation file or image folder is missing, unreadable or malformed."""


def read_annotation_file(path: str | os.PathLike) -> dict:
    """Parsed json, or DatasetError saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file '{path}' not found; generate the procedural data with "
                           f"'mobius data' or fix the path in the recipe")
    try:
        with path.open("rb") as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"annotation file '{path}' is not readable json: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise DatasetError(f"annotation file '{path}' has no 'categories' list; expected COCO "
                           f"instances or YouTube-VIS json")
    return data


def annotation_format(data: dict) -> str:
    """'coco' (has 'images') or 'ytvis' (has 'videos')."""
    if isinstance(data.get("videos"), list):
        return "ytvis"
    if isinstance(data.get("images"), list):
        return "coco"
    raise DatasetError("annotation json has neither 'images' (COCO) nor 'videos' (YouTube-VIS)")


def category_table(data: dict, path: str | os.PathLike) -> tuple[list[str], dict[int, int]]:
    """(names ordered by category id, category id -> label index)."""
    try:
        records = sorted(data["categories"], key=lambda c: int(c["id"]))
        names = [str(c["name"]) for c in records]
        label_of = {int(c["id"]): index for index, c in enumerate(records)}
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"annotation file '{path}': malformed category record ({error!r}); each "
                           f"needs an integer 'id' and a 'name'") from None
    if not names:
        raise DatasetError(f"annotation file '{path}' lists no categories")
    if len(set(names)) != len(names):
        raise DatasetError(f"annotation file '{path}' has duplicate category names; prompts must differ")
    return names, label_of


def to_rle(segmentation, height: int, width: int) -> dict:
    """COCO polygons, uncompressed RLE or compressed RLE -> compressed RLE."""
    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_segmentations(segmentations: Sequence, height: int, width: int) -> np.ndarray:
    """n COCO segmentations -> (n, height, width) bool, decoded in one call."""
    rles = [to_rle(segmentation, height, width) for segmentation in segmentations]
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice, once per mask
        warnings.filterwarnings("ignore", message=".*copy keyword", category=DeprecationWarning)
        masks = mask_utils.decode(rles)  # (H, W, n) uint8
    return np.ascontiguousarray(masks.transpose(2, 0, 1), dtype=bool)  # (H, W, n) -> (n, H, W)


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"image '{path}' is missing or not a readable image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_image_files(root: Path, file_names: Sequence[str], annotation_file) -> None:
    if not root.is_dir():
        raise DatasetError(f"image folder '{root}' not found (images of '{annotation_file}')")
    missing = [name for name in file_names if not (root / name).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image file(s) of '{annotation_file}' are missing under "
                           f"'{root}', e.g. {missing[:3]}")


def restrict_categories(data: dict, keep: str | Sequence[str], path) -> list[dict]:
    """The json's category records limited to `keep` ("seen" or names), in the json's order."""
    records = data.get("categories")
    if not isinstance(records, list):
        raise DatasetError(f"annotation file '{path}' has no 'categories' list")
    if keep == "seen":
        used = {int(a["category_id"]) for a in data.get("annotations", []) if "category_id" in a}
        kept = [c for c in records if int(c.get("id", -1)) in used]
        if not kept:
            raise DatasetError(f"annotation file '{path}' has no annotations, so no category is seen")
        return kept
    wanted = set(keep)
    kept = [c for c in records if c.get("name") in wanted]
    missing = wanted - {c.get("name") for c in kept}
    if missing:
        raise DatasetError(f"annotation file '{path}' lacks the categories {sorted(missing)}")
    return kept
