"""`mobius infer` end to end on a generated clip with a tiny random-weights model: the overlay video
decodes with the right frame count, the YouTube-VIS json has one segmentation per frame per track
and decodes back to the processor's masks, prompt switches change labels, inputs of every kind."""
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from perception_core.cli import main as mobius
from perception_core.infer import FrameSource, run_video
from perception_core.runtime.processor import FrameProcessor, ProcessorConfig
from perception_core.runtime.ytvis_results import to_ytvis_results
from perception_core.training.synth.config import make_config
from perception_core.training.synth.video import generate_video
from runtime_models import tiny_weights

FRAMES = 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames, _ = generate_video(4, make_config("easy", frames=(FRAMES, FRAMES), video_size=(96, 128)))
    folder = tmp_path_factory.mktemp("clip")
    video = folder / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    images = folder / "images"
    images.mkdir()
    for index, frame in enumerate(frames):
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        writer.write(bgr)
        cv2.imwrite(str(images / f"{index:04d}.png"), bgr)
    writer.release()
    return frames, video, images


def model_args():
    """The torch backend (no export needed); onnxruntime = torch is tested in test_processor.py."""
    model = tiny_weights()
    return ["--weights", str(model.weights), "--config", str(model.preset), "--size", str(model.size),
            "--threads", "1", "--threshold", "0.5"]


def count_frames(path):
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    return frames


def test_infer_video_writes_overlay_and_ytvis_results(clip, tmp_path):
    frames, video, _ = clip
    out, results = tmp_path / "overlay.mp4", tmp_path / "results.json"
    assert mobius(["infer", str(video), "--prompts", "red star,circle", *model_args(),
                   "--out", str(out), "--json", str(results)]) == 0
    assert count_frames(out) == FRAMES
    entries = json.loads(results.read_text())
    assert entries, "the tiny model produces tracks"
    assert {e["category_id"] for e in entries} <= {1, 2}
    for entry in entries:
        assert entry["video_id"] == 1 and 0.5 <= entry["score"] <= 1.0
        assert len(entry["segmentations"]) == FRAMES
        present = [s for s in entry["segmentations"] if s is not None]
        assert present and all(tuple(s["size"]) == (96, 128) for s in present)
    ids = [(e["track_id"], e["category_id"]) for e in entries]
    assert len(ids) == len(set(ids))


def test_results_decode_to_the_processor_masks(clip):
    frames, _, _ = clip
    model = tiny_weights()
    config = ProcessorConfig(backend="torch", model=str(model.weights), preset=str(model.preset), size=model.size,
                             threads=1, score_threshold=0.5)
    results = run_video(FrameProcessor(config, ["red star", "circle"]), frames, progress=False)
    assert len(results) == FRAMES
    entries = to_ytvis_results(results, video_id=7)
    for frame, result in enumerate(results):
        for inst in result.instances:
            entry = next(e for e in entries if e["track_id"] == inst.track_id
                         and e["category_id"] == inst.label_index + 1)
            decoded = mask_utils.decode(entry["segmentations"][frame]).astype(bool)
            assert np.array_equal(decoded, inst.mask) and entry["video_id"] == 7
    covered = sum(s is not None for e in entries for s in e["segmentations"])
    assert covered == sum(len(r.instances) for r in results)


def test_prompt_switch_between_frames_changes_labels(clip, tmp_path):
    _, _, images = clip
    results = tmp_path / "results.json"
    assert mobius(["infer", str(images), "--prompts", "red star,circle", "--prompts-at", "3:blue square",
                   *model_args(), "--json", str(results)]) == 0
    entries = json.loads(results.read_text())
    before = {e["category_id"] for e in entries if any(e["segmentations"][:3])}
    after = {e["category_id"] for e in entries if any(e["segmentations"][3:])}
    assert before and before <= {1, 2}
    assert after == {3}                    # 'blue square' is new: the next free category id
    for entry in entries:                  # no label leaks across the switch
        frames = entry["segmentations"][:3] if entry["category_id"] == 3 else entry["segmentations"][3:]
        assert all(s is None for s in frames)


def test_single_image_and_dataset_category_ids(clip, tmp_path):
    frames, _, images = clip
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"videos": [], "categories": [{"id": 11, "name": "red star"},
                                                             {"id": 12, "name": "circle"}]}))
    results = tmp_path / "one.json"
    image = sorted(images.iterdir())[0]
    assert mobius(["infer", str(image), "--prompts", "red star,circle", *model_args(), "--data", str(data),
                   "--json", str(results), "--out", str(tmp_path / "one.mp4")]) == 0
    entries = json.loads(results.read_text())
    assert entries and {e["category_id"] for e in entries} <= {11, 12}
    assert all(len(e["segmentations"]) == 1 for e in entries)
    assert count_frames(tmp_path / "one.mp4") == 1
    # a prompt the dataset does not know is an error that names the categories
    assert mobius(["infer", str(image), "--prompts", "purple heart", *model_args(), "--data", str(data)]) == 2


def test_bad_inputs(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not found"):
        FrameSource(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        FrameSource(tmp_path / "empty")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="OpenCV"):
        FrameSource(junk)
    assert mobius(["infer", str(junk), "--prompts", "red star", *model_args()]) == 2
    assert "OpenCV" in capsys.readouterr().err
    assert mobius(["infer", str(junk), "--prompts", " ,x", *model_args()]) == 2
    assert "empty" in capsys.readouterr().err
