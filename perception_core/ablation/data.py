"""The data of an ablation: DIR/train and DIR/test in the layout `mobius data synth` writes
(DIR/{split}/instances.json, images under DIR/{split}/images), given with --data or generated here
at the scale's sizes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .spec import AblationError, Scale

MARKER = "ablation_data.json"  # what generated a folder; a mismatch regenerates it
TRAIN_SEED, TEST_SEED = 1, 3   # as the default model's data (training/recipes/mobius_nano_synth_cpu.yaml)


@dataclass(frozen=True)
class DataPaths:
    root: Path
    train_annotations: Path
    train_images: Path
    test_annotations: Path
    test_images: Path
    generated: bool                  # written by this command (at the scale's sizes)

    def describe(self) -> dict:
        return {"root": str(self.root), "train_annotations": str(self.train_annotations),
                "test_annotations": str(self.test_annotations), "generated": self.generated,
                "train_images": _count_images(self.train_annotations),
                "test_images": _count_images(self.test_annotations)}


def planned_data(root: Path) -> DataPaths:
    """Where generate_data(root, ...) writes (nothing is written here)."""
    return DataPaths(root, *split_paths(root, "train"), *split_paths(root, "test"), generated=True)


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    return root / split / "instances.json", root / split / "images"


def existing_data(root: Path) -> DataPaths:
    """DataPaths of a given --data folder; AblationError if the layout is not there."""
    if not root.is_dir():
        raise AblationError(f"--data folder '{root}' not found; leave --data out to generate the procedural "
                            f"benchmark at the scale's sizes, or write it with 'mobius data synth'")
    paths = {}
    for split in ("train", "test"):
        annotations, images = split_paths(root, split)
        if not annotations.is_file() or not images.is_dir():
            raise AblationError(f"--data '{root}' lacks the {split} split ({annotations} and {images}/); "
                                f"write it with 'mobius data synth --out {root} --split {split} --images N'")
        paths[split] = (annotations, images)
    return DataPaths(root, *paths["train"], *paths["test"], generated=False)


def _synth_request(scale: Scale) -> dict:
    return {"difficulty": scale.difficulty, "image_size": list(scale.image_size), "use_photos": scale.use_photos,
            "area_fraction": list(scale.area_fraction) if scale.area_fraction else None,
            "train_images": scale.train_images, "test_images": scale.test_images,
            "seeds": [TRAIN_SEED, TEST_SEED]}


def generate_data(root: Path, scale: Scale, workers: int, progress: bool = True) -> DataPaths:
    """Writes root/train and root/test at the scale's sizes unless a previous call already did.

    workers > 1 generates in spawned processes, so this process never starts OpenCV's thread pool:
    DataLoader workers forked from it afterwards would hang on that pool's locks."""
    from ..training.synth import make_config, write_split

    request = _synth_request(scale)
    marker = root / MARKER
    complete = all(p.exists() for split in ("train", "test") for p in split_paths(root, split))
    if not (complete and marker.is_file() and json.loads(marker.read_text()) == request):
        overrides = {"image_size": scale.image_size, "use_photos": scale.use_photos}
        if scale.area_fraction:
            overrides["area_fraction"] = scale.area_fraction
        config = make_config(scale.difficulty, **overrides)
        marker.unlink(missing_ok=True)
        for split, count, seed in (("train", scale.train_images, TRAIN_SEED), ("test", scale.test_images, TEST_SEED)):
            write_split(root, split, count, 0, seed=seed, config=config, workers=workers, progress=progress)
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(request))
    return planned_data(root)


def _count_images(annotations: Path) -> int:
    return len(json.loads(annotations.read_text()).get("images", []))


def file_digest(path: Path) -> str:
    """Short content hash: evaluation caches are keyed by it (a regenerated test split misses)."""
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]

