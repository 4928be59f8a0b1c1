"""Tracked frames -> YouTube-VIS results json (what `mobius eval-video` and trackeval read).

One entry per (track, category): {"video_id", "category_id", "score", "segmentations"} where
segmentations holds, for every frame of the video, a COCO RLE of the track's mask or None when the
track is not there (or carried another label that frame, after a prompt change). score is the mean
score over the frames it covers. Category ids are the 1-based prompt index by default, or the ids a
dataset json gives the prompt names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .postprocess import encode_rle


class YtvisResults:
    """Accumulates FrameResults of one video frame by frame (masks are RLE-encoded at once, so
    long videos do not keep full masks in memory)."""

    def __init__(self, video_id: int, category_ids: Mapping[str, int] | None = None):
        self.video_id = int(video_id)
        self.category_ids = dict(category_ids) if category_ids is not None else None
        self._auto: dict[str, int] = {}                      # prompt -> 1-based index of first use
        self._tracks: dict[tuple[int, int], dict[int, tuple[float, dict]]] = {}
        self.num_frames = 0

    def category_of(self, label: str, label_index: int) -> int:
        if self.category_ids is None:
            if label not in self._auto:                      # its 1-based prompt index, unless a prompt
                used = set(self._auto.values())              # that came earlier already holds that id
                self._auto[label] = label_index + 1 if label_index + 1 not in used else max(used) + 1
            return self._auto[label]
        if label not in self.category_ids:
            raise ValueError(f"prompt {label!r} has no category in the dataset (known: "
                             f"{sorted(self.category_ids)}); use the dataset's category names as prompts")
        return self.category_ids[label]

    def add(self, result) -> None:
        """Appends one frame (a processor.FrameResult)."""
        frame = self.num_frames
        for inst in result.instances:
            key = (inst.track_id, self.category_of(inst.label, inst.label_index))
            self._tracks.setdefault(key, {})[frame] = (float(inst.score), encode_rle(inst.mask))
        self.num_frames += 1

    def to_list(self) -> list[dict]:
        entries = []
        for (track_id, category_id), frames in sorted(self._tracks.items()):
            segmentations = [frames[f][1] if f in frames else None for f in range(self.num_frames)]
            entries.append({"video_id": self.video_id, "category_id": int(category_id),
                            "score": float(np.mean([score for score, _ in frames.values()])),
                            "segmentations": segmentations, "track_id": int(track_id)})
        return entries


def to_ytvis_results(results: Iterable, video_id: int = 1, category_ids: Mapping[str, int] | None = None) -> list[dict]:
    """FrameResults of one video (in order) -> YouTube-VIS result entries."""
    collector = YtvisResults(video_id, category_ids)
    for result in results:
        collector.add(result)
    return collector.to_list()


def category_ids_from_dataset(path: str | Path, prompts: Sequence[str] = ()) -> dict[str, int]:
    """{category name: id} from a COCO / YouTube-VIS json ("categories": [{"id", "name"}]); every
    prompt must be one of the names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset json '{path}' not found")
    try:
        categories = json.loads(path.read_text(encoding="utf-8"))["categories"]
        mapping = {str(c["name"]): int(c["id"]) for c in categories}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"'{path}' is not a COCO/YouTube-VIS json with categories [{{id, name}}]: {error}") from None
    unknown = [p for p in prompts if p not in mapping]
    if unknown:
        raise ValueError(f"prompts {unknown} are not categories of '{path}' (it has {sorted(mapping)})")
    return mapping


def write_json(entries: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path
