"""End to end on video: train a tiny model on a generated clip (in the test), then segment and track
the clip with the FrameProcessor (query propagation + association) and score it with the
YouTube-VIS / trackeval metrics. Proves that detection quality turns into stable tracks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from perception_core.config import to_dict
from perception_core.evaluation.video_eval import evaluate_video
from perception_core.infer import run_video
from perception_core.model.build import build_model, save_weights
from perception_core.runtime.processor import FrameProcessor, ProcessorConfig
from perception_core.runtime.ytvis_results import to_ytvis_results
from perception_core.training import engine
from perception_core.training.annotations import read_image
from perception_core.training.recipe import ModelSection
from perception_core.training.synth.config import make_config
from perception_core.training.synth.writer import write_split
from test_training_engine import single_thread, tiny_config  # noqa: F401 (fixture)

# 320 steps: measured HOTA 0.88 (DetA 0.88, AssA 0.89, IDSW 0); seeds 1-3 0.92 / 0.87 / 0.84. At 260
# steps some trajectories had not converged: a float-rounding-level change of the model's layout
# (same function, float64-equal) moved seed 0 from 0.88 to 0.55 (AssA 0.41) while seeds 1-3 stayed
# 0.83-0.92; the test must not depend on a lucky trajectory.
HOTA_MIN = 0.75
IDSW_MAX = 1


def deployable(checkpoint: Path, folder: Path) -> tuple[Path, Path]:
    """Training checkpoint -> (safetensors weights, preset YAML) for the runtime's torch backend."""
    contents = engine.load_checkpoint(checkpoint)
    section = contents["config"]["model"]
    config = ModelSection(section["preset"], section["overrides"]).build_config()
    model = build_model(config)
    model.load_state_dict(contents["model"])
    weights, preset = folder / "model.safetensors", folder / "model.yaml"
    save_weights(model, weights)
    preset.write_text(yaml.safe_dump(to_dict(config)))
    return weights, preset


def test_tracking_a_generated_clip_reaches_hota_threshold(tmp_path, single_thread):  # noqa: F811
    synth = make_config("easy", video_size=(96, 128), frames=(12, 12), use_photos=False, objects_per_video=(2, 3),
                         video_area_fraction=(0.05, 0.2), distractors=(0, 1))
    paths = write_split(tmp_path, "train", 0, 1, 3, synth, progress=False)
    videos = tmp_path / "train" / "videos"
    config = tiny_config(tmp_path / "train", tmp_path / "run", "optim.max_steps=320", "optim.milestones=[272]",
                         "batch_size=4", "data.train_sizes=[96]", "data.max_size=128", "data.flip_probability=0",
                         "data.crop_probability=0", "data.color_jitter=0", "data.hue_jitter=0",
                         "checkpoint_interval=1000", f"data.train_annotations={paths.videos}",
                         f"data.train_images={videos}")
    result = engine.train(config, device="cpu", show_progress=False)
    weights, preset = deployable(result.checkpoint, tmp_path)

    data = json.loads(paths.videos.read_text())
    video = data["videos"][0]
    present = sorted({track["category_id"] for track in data["annotations"]})
    names = {category["id"]: category["name"] for category in data["categories"]}
    prompts = [names[c] for c in present]
    processor = FrameProcessor(ProcessorConfig(backend="torch", model=str(weights), preset=str(preset), size=128,
                                               threads=1, score_threshold=0.3), prompts)
    frames = [read_image(videos / name) for name in video["file_names"]]
    results = run_video(processor, frames, progress=False)

    # per-frame outputs are consistent with each other
    for frame, output in zip(frames, results):
        assert output.id_image.shape == frame.shape[:2] and output.id_image.dtype == np.uint16
        ids = {instance.track_id for instance in output.instances}
        assert set(np.unique(output.id_image)) - {0} <= ids
    entries = to_ytvis_results(results, video_id=video["id"], category_ids={names[c]: c for c in present})
    metrics = evaluate_video(data, entries, category_ids=present)
    tracking = metrics["tracking"]
    assert tracking["HOTA"] >= HOTA_MIN, tracking
    assert tracking["IDSW"] <= IDSW_MAX, tracking
    assert metrics["video_ap"]["AP50"] >= 0.75, metrics["video_ap"]
