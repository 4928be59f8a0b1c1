"""One evaluation of a trained variant on the test split at one pruning setting: COCO box/mask AP
(pycocotools), calibration error (ECE of confidence against mask IoU, evaluation/calibration.py)
and decoder GFLOPs per frame from the queries each frame's decoder kept.

Images go through the deployment path of `mobius eval` (evaluation/predict.detect_image: letterbox,
one forward with all prompts, the given pruning, top-k queries as detections). The test images and
prompt embeddings are loaded once (`TestSet`) and reused by every evaluation. Results are cached
per run folder (RUN/evaluations.json), keyed by checkpoint, setting, size and test-split content.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model.prune_schedule import thresholds
from .data import file_digest
from .decoder_flops import DecoderCost
from .spec import PruningSetting

CACHE = "evaluations.json"


@dataclass
class TestSet:
    """The test split, read once: ground truth, decoded images, prompted categories and their
    MiniLM embeddings (same order as the training prompts)."""
    annotations: Path
    ground_truth: dict
    images: list[tuple[int, np.ndarray]]   # (image id, (H, W, 3) uint8 RGB)
    categories: list[dict]                 # prompted category records, in prompt order
    text: object                           # TextEmbeddings (P, T, 384)
    digest: str

    @property
    def num_prompts(self) -> int:
        return len(self.categories)

    @property
    def tokens(self) -> int:
        return int(self.text.mask.shape[1])


def load_test_set(annotations: Path, images_dir: Path, prompt_names: Sequence[str], text) -> TestSet:
    """Reads the test json and its images; prompt_names must be categories of the json."""
    from ..training.annotations import check_image_files, read_annotation_file, read_image
    from .spec import AblationError

    data = read_annotation_file(annotations)
    by_name = {c["name"]: c for c in data["categories"]}
    missing = [name for name in prompt_names if name not in by_name]
    if missing:
        raise AblationError(f"test split '{annotations}' lacks the training categories {missing[:5]}; "
                            f"train and test must share one category list")
    check_image_files(images_dir, [r["file_name"] for r in data["images"]], annotations)
    images = [(int(r["id"]), read_image(images_dir / r["file_name"])) for r in data["images"]]
    return TestSet(annotations, data, images, [by_name[name] for name in prompt_names], text, file_digest(annotations))


def prune_settings(model_config, setting: PruningSetting):
    """PruneSettings for the decoder, or None for no pruning (beta, alpha, min_kept: the model's)."""
    from ..model.decoder import PruneSettings

    if setting.schedule is None:
        return None
    pruning, layers = model_config.pruning, model_config.decoder.num_layers
    taus = thresholds(layers, setting.schedule, setting.b_low, setting.b_high, pruning.beta, pruning.alpha)
    return PruneSettings(tuple(taus), pruning.min_kept)


def evaluate_setting(model, test: TestSet, setting: PruningSetting, size: int, cost: DecoderCost,
                     top_k: int = 100, progress: bool = False) -> dict:
    """Metrics of `model` on `test` with pruning `setting`; see the module docstring."""
    from tqdm import tqdm

    from ..evaluation.eval_command import score
    from ..evaluation.predict import ModelRunner, detect_image

    settings = prune_settings(model.config, setting)
    model.prune = settings
    runner = ModelRunner.from_torch(model, size, prune=settings is not None)
    ids = np.asarray([int(c["id"]) for c in test.categories], dtype=np.int64)
    detections, kept_counts = [], Counter()
    for image_id, image in tqdm(test.images, desc=f"eval {setting.name}", unit="image", leave=False,
                                disable=not progress):
        found, kept = detect_image(runner, image, test.text, ids, image_id, top_k)
        detections.append(found)
        kept_counts[tuple(int(n) for n in kept)] += 1
    metrics = score(test.ground_truth, detections, test.categories)
    frames = sum(kept_counts.values())
    kept_mean = np.sum([np.asarray(k) * c for k, c in kept_counts.items()], axis=0) / frames
    return {
        "setting": setting.name, "schedule": setting.schedule, "b_low": setting.b_low, "b_high": setting.b_high,
        "taus": list(settings.taus) if settings else None, "min_kept": settings.min_kept if settings else None,
        "box_AP": metrics["box"]["AP"], "box_AP50": metrics["box"]["AP50"],
        "mask_AP": metrics["mask"]["AP"] if metrics["mask"] else None,
        "mask_AP50": metrics["mask"]["AP50"] if metrics["mask"] else None,
        "ece_mask": metrics["calibration"].get("mask", {}).get("ece"),
        "ece_box": metrics["calibration"]["box"]["ece"],
        "decoder_gflops": sum(cost.gflops(k) * c for k, c in kept_counts.items()) / frames,
        "kept_per_layer_mean": [float(v) for v in kept_mean],
        "kept_histogram": [[list(k), c] for k, c in sorted(kept_counts.items(), reverse=True)],
        "images": frames,
    }


class EvaluationCache:
    """RUN/evaluations.json: key -> metrics, written after every new evaluation."""

    def __init__(self, folder: Path, checkpoint_step: int, test: TestSet, size: int, top_k: int):
        self.path = folder / CACHE
        self.prefix = {"step": checkpoint_step, "test": test.digest, "size": size, "top_k": top_k,
                       "prompts": [c["name"] for c in test.categories]}
        self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def key(self, setting: PruningSetting) -> str:
        return json.dumps({**self.prefix, "setting": list(setting.key())}, sort_keys=True)

    def get(self, setting: PruningSetting) -> dict | None:
        return self.entries.get(self.key(setting))

    def put(self, setting: PruningSetting, result: dict) -> None:
        self.entries[self.key(setting)] = result
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.entries))
        temporary.replace(self.path)
