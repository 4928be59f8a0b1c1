"""Offline evaluation on a rosbag2: camera topic -> frame processor -> result bag, results, metrics.

The frames of one image topic form one video. Ground truth comes from a YouTube-VIS json (--gt) or a
GroundTruthFrame topic (--gt-topic; found automatically when the bag has one). Image frames pair
with ground-truth frames by header stamp when the ground truth lists stamps (`stamps_ns`, as every
ground truth written or read here does), else by position on the topic. Metrics are those of
perception_core.evaluation.video_eval (video AP, HOTA, IDF1, ID switches); this module only feeds it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from . import messages, reader
from .reader import SkipLog
from .results import ResultBagWriter
from .sample import IMAGE_TOPIC


@dataclass(frozen=True)
class BagEvalConfig:
    topic: str = IMAGE_TOPIC           # sensor_msgs/Image or CompressedImage topic to segment
    gt_json: str | None = None         # YouTube-VIS ground truth (one video)
    gt_topic: str | None = None        # GroundTruthFrame topic; None: the bag's own if it has one
    storage: str | None = None         # result bag storage (sqlite3 | mcap); None: same as the input
    prompts: tuple[str, ...] | None = None  # None: the ground-truth categories that occur
    progress: bool = True              # tqdm progress bar


@dataclass
class BagEvalReport:
    messages: int                      # messages on the image topic
    frames: int                        # frames segmented
    unmatched: int                     # segmented frames without a ground-truth frame
    skipped: SkipLog                   # undecodable messages (images and ground truth)
    prompts: list[str]
    latency_ms: dict[str, float]       # processor time per frame: p50, p90, p99, mean, max
    results: list[dict]                # YouTube-VIS results
    metrics: dict | None               # evaluate_video's output; None without ground truth
    ground_truth: dict | None = field(default=None, repr=False)  # the YouTube-VIS ground truth used


def _ground_truth(bag_reader: Any, config: BagEvalConfig, skipped: SkipLog) -> dict | None:
    from ..evaluation.video_eval import load_ground_truth

    if config.gt_json and config.gt_topic:
        raise ValueError("give either --gt (a json file) or --gt-topic, not both")
    if config.gt_json:
        data = load_ground_truth(config.gt_json)
        if len(data["videos"]) != 1:
            raise ValueError(f"ground truth '{config.gt_json}' has {len(data['videos'])} videos; a bag topic is one "
                             f"video, so give a json with exactly one")
        return data
    topic = config.gt_topic or reader.find_topic(bag_reader, messages.GROUND_TRUTH_FRAME)
    return reader.ground_truth_from_topic(bag_reader, topic, skipped) if topic else None


def _frame_index(video: dict, frame: reader.BagFrame) -> int | None:
    """Position of a bag frame in the ground-truth video (None: no such frame)."""
    stamps = video.get("stamps_ns")
    if stamps:
        return _stamp_lookup(video).get(frame.stamp_ns)
    return frame.index if frame.index < int(video["length"]) else None


def _stamp_lookup(video: dict) -> dict[int, int]:
    if "_lookup" not in video:
        video["_lookup"] = {int(s): t for t, s in enumerate(video["stamps_ns"])}
    return video["_lookup"]


def _prompts_and_categories(config: BagEvalConfig, truth: dict | None) -> tuple[list[str], dict[str, int]]:
    """Prompts, and prompt -> category id for those that name a ground-truth category."""
    from .. import assets

    if truth is None:
        return list(config.prompts or assets.DEFAULT_PROMPTS), {}
    by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in truth["categories"]}
    if config.prompts:
        prompts = list(config.prompts)
    else:
        present = sorted({int(a["category_id"]) for a in truth["annotations"]})
        names = {int(c["id"]): str(c["name"]) for c in truth["categories"]}
        prompts = [names[c] for c in present] or list(assets.DEFAULT_PROMPTS)
    mapping = {p: by_name[p.strip().lower()] for p in prompts if p.strip().lower() in by_name}
    for prompt in prompts:
        if prompt not in mapping:
            print(f"[bag] prompt '{prompt}' names no ground-truth category: its instances go to the result bag "
                  f"but are not evaluated")
    return prompts, mapping


class _Collector:
    """runtime.ytvis_results over a video whose frames may be missing (skipped messages) or carry
    prompts that are no ground-truth category (left out of the results)."""

    def __init__(self, length: int, label_to_category: dict[str, int], video_id: int):
        from ..runtime.ytvis_results import YtvisResults

        self.length, self.mapping = length, label_to_category
        self.ytvis = YtvisResults(video_id, label_to_category)

    def _add(self, instances: list) -> None:
        self.ytvis.add(SimpleNamespace(instances=[i for i in instances if i.label in self.mapping]))

    def add(self, index: int | None, instances: list) -> bool:
        """Frame `index` of the video; False when it has no place (no such frame, or seen already)."""
        if index is None or not self.ytvis.num_frames <= index < self.length:
            return False
        while self.ytvis.num_frames < index:  # frames lost to skipped messages: nothing found there
            self._add([])
        self._add(instances)
        return True

    def results(self) -> list[dict]:
        while self.ytvis.num_frames < self.length:
            self._add([])
        return self.ytvis.to_list()


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {}
    values = np.asarray(latencies_ms, dtype=np.float64)
    return {**{f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)},
            "mean": float(values.mean()), "max": float(values.max())}


def evaluate_bag(bag: str | Path, out_bag: str | Path, config: BagEvalConfig,
                 processor_config: Any) -> BagEvalReport:
    """Segments every image of config.topic with a runtime FrameProcessor(processor_config) (the
    node's), writes the result bag `out_bag` and returns results and metrics."""
    from ..evaluation.video_eval import evaluate_video
    from ..runtime.processor import FrameProcessor

    skipped = SkipLog()
    bag_reader = reader.open_bag(bag)
    try:
        reader.topic_connections(bag_reader, config.topic, reader.IMAGE_TYPES)  # fail before writing anything
        truth = _ground_truth(bag_reader, config, skipped)
        prompts, mapping = _prompts_and_categories(config, truth)
        processor = FrameProcessor(processor_config, prompts)
        total = reader.count_messages(bag_reader, config.topic)
        video = truth["videos"][0] if truth else {"id": 1, "length": total}
        collector = _Collector(int(video["length"]), mapping, int(video["id"]))
        frames, unmatched, latencies = 0, 0, []
        with ResultBagWriter(out_bag, config.storage or reader.storage_of(bag)) as writer:
            bar = tqdm(reader.read_frames(bag_reader, config.topic, skipped), total=total, desc="frames",
                       unit="frame", disable=not config.progress)
            for frame in bar:
                result = processor.process(frame.image, frame.stamp_ns / 1e9)
                latencies.append(float(result.timings_ms["total"]))
                writer.write(frame, result, prompts)
                frames += 1
                index = _frame_index(video, frame) if truth else frame.index
                if not collector.add(index, result.instances):
                    unmatched += 1
    finally:
        bag_reader.close()
    video.pop("_lookup", None)
    results = collector.results()
    metrics = None
    if truth is not None and mapping:
        metrics = evaluate_video(truth, results, category_ids=sorted(set(mapping.values())))
    return BagEvalReport(total, frames, unmatched, skipped, prompts, latency_summary(latencies), results,
                         metrics, truth)
