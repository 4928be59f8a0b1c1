"""Procedural benchmark generator: determinism, annotation validity, vocabulary, CLI.

Everything runs at tiny frame sizes so the whole file takes a few seconds on one core.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from perception_core import cli
from perception_core.training.synth import (VocabularyError, annotations_for_prompts,
                                            categories, generate_image, generate_video,
                                            make_config, parse_prompt, prompt_category_ids,
                                            prompts_for, write_split)

HOLDOUT = ("red star", "blue ring")
# pycocotools' annToMask trips a numpy 2 deprecation inside pycocotools itself.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def tiny(difficulty: str = "normal", **overrides):
    settings = dict(image_size=(96, 96), video_size=(64, 96), frames=(10, 12))
    return make_config(difficulty, **{**settings, **overrides})


def tree_digest(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def touches_border(bbox, height: int, width: int) -> bool:
    x, y, w, h = bbox
    return x <= 0 or y <= 0 or x + w >= width or y + h >= height


@pytest.fixture(scope="module")
def written_split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_split(out, "val", n_images=6, n_videos=2, seed=3, config=tiny("hard"), progress=False)
    return out / "val"


def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path):
    config = tiny()
    write_split(tmp_path / "a", "train", 3, 2, seed=11, config=config, workers=1, progress=False)
    write_split(tmp_path / "b", "train", 3, 2, seed=11, config=config, workers=2, progress=False)
    write_split(tmp_path / "c", "train", 3, 2, seed=12, config=config, progress=False)
    first, second, other = (tree_digest(tmp_path / name) for name in "abc")
    assert len(first) >= 2 + 3 + 2 * 10 and first == second  # 2 json, 3 images, >= 20 frames
    assert other["train/instances.json"] != first["train/instances.json"]
    assert other["train/images/000000.jpg"] != first["train/images/000000.jpg"]


def test_coco_masks_match_area_and_bbox(written_split):
    coco = COCO(str(written_split / "instances.json"))
    assert len(coco.dataset["categories"]) == 64 and coco.dataset["annotations"]
    for annotation in coco.dataset["annotations"]:
        mask = coco.annToMask(annotation)
        rows, columns = np.nonzero(mask)
        assert mask.sum() == annotation["area"] >= 20
        assert annotation["bbox"] == [columns.min(), rows.min(), columns.max() - columns.min() + 1,
                                      rows.max() - rows.min() + 1]
        assert set(annotation["attributes"]) == {"color", "shape", "size"}
    for image in coco.dataset["images"]:
        assert (written_split / "images" / image["file_name"]).is_file()


def test_visible_masks_of_an_image_never_overlap():
    config = tiny("hard")
    for seed in range(8):
        image, instances = generate_image(seed, config)
        assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
        coverage = np.sum([item["mask"] for item in instances], axis=0)
        assert coverage.max() <= 1


def test_some_objects_touch():
    """Touching placement: two visible masks share a border (4-neighbourhood) somewhere."""
    config = tiny()
    for seed in range(20):
        masks = [item["mask"] for item in generate_image(seed, config)[1]]
        for index, mask in enumerate(masks):
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:-1] |= mask[1:]
            grown[:, 1:] |= mask[:, :-1]
            grown[:, :-1] |= mask[:, 1:]
            if any((grown & other).any() for other in masks[index + 1:]):
                return
    pytest.fail("no two objects touch in 20 images")


def test_pixels_show_exactly_the_masks_when_effects_are_off():
    """With flat colours and no camera effects, mask pixels are one colour and the rest is
    background: the painted outlines and the annotated masks agree pixel for pixel."""
    config = tiny("easy", distractors=(0, 0), texture_probability=0.0, noise_sigma=(0.0, 0.0),
                  blur_probability=0.0, jpeg_probability=0.0, illumination_strength=0.0,
                  background_weights=(1.0, 0, 0, 0, 0, 0, 0), objects_per_image=(3, 6))
    for seed in range(6):
        image, instances = generate_image(seed, config)
        covered = np.zeros(image.shape[:2], dtype=bool)
        for item in instances:
            assert len(np.unique(image[item["mask"]], axis=0)) == 1
            covered |= item["mask"]
        if not covered.all():
            assert len(np.unique(image[~covered], axis=0)) == 1


def test_ytvis_json_structure(written_split):
    data = json.loads((written_split / "videos.json").read_text())
    videos = {video["id"]: video for video in data["videos"]}
    assert len(videos) == 2 and len(data["categories"]) == 64
    for video in videos.values():
        assert len(video["file_names"]) == video["length"]
        assert all((written_split / "videos" / name).is_file() for name in video["file_names"])
        track_ids = [a["track_id"] for a in data["annotations"] if a["video_id"] == video["id"]]
        assert len(track_ids) == len(set(track_ids))
    for annotation in data["annotations"]:
        length = videos[annotation["video_id"]]["length"]
        assert len(annotation["segmentations"]) == len(annotation["bboxes"]) == length
        assert len(annotation["areas"]) == length
        assert any(segmentation is not None for segmentation in annotation["segmentations"])
        for segmentation, area in zip(annotation["segmentations"], annotation["areas"]):
            assert (segmentation is None) == (area is None)


def test_an_object_leaves_the_frame_and_comes_back():
    config = tiny()
    frames, tracks = generate_video(0, config, "val")
    height, width = frames[0].shape[:2]
    for track in tracks:
        boxes = track["bboxes"]
        for t in range(1, len(boxes)):
            if boxes[t - 1] is not None and boxes[t] is None:
                back = next((u for u in range(t, len(boxes)) if boxes[u] is not None), None)
                if back is not None and touches_border(boxes[t - 1], height, width) \
                        and touches_border(boxes[back], height, width):
                    assert track["masks"][t] is None and track["masks"][back].any()
                    return
    pytest.fail("no track left the frame and came back in clip 0 of seed 0")


def _compositions(split: str, config, images: int, videos: int) -> set[str]:
    seen = []
    for seed in range(images):
        seen += [item["attributes"] for item in generate_image(seed, config, split)[1]]
    for seed in range(videos):
        seen += [track["attributes"] for track in generate_video(seed, config, split)[1]]
    return [f"{a['color']} {a['shape']}" for a in seen]


def test_heldout_compositions_never_appear_in_train_but_do_in_test():
    config = tiny("hard", holdout_compositions=",".join(HOLDOUT), image_size=(64, 64))
    train = _compositions("train", config, images=50, videos=4)
    test = _compositions("test", config, images=50, videos=4)
    assert len(train) > 300 and not set(train) & set(HOLDOUT)
    assert set(test) & set(HOLDOUT)


def test_heldout_compositions_are_recorded_in_info(tmp_path):
    config = tiny(holdout_compositions="Red Star, blue ring")
    paths = write_split(tmp_path, "train", 1, 1, seed=0, config=config, progress=False)
    for path in (paths.instances, paths.videos):
        assert json.loads(path.read_text())["info"]["holdout_compositions"] == list(HOLDOUT)


def test_bad_holdout_name_fails_before_writing(tmp_path, capsys):
    out = tmp_path / "never"
    code = cli.main(["data", "synth", "--out", str(out), "--split", "train", "--images", "2",
                     "--seed", "0", "--holdout-compositions", "red star,purple ring"])
    error = capsys.readouterr().err
    assert code == 2 and "'purple ring'" in error and "magenta heart" in error
    assert not out.exists()
    with pytest.raises(VocabularyError, match="purple ring"):
        tiny(holdout_compositions="purple ring")


def test_cli_writes_a_split(tmp_path):
    code = cli.main(["data", "synth", "--out", str(tmp_path), "--split", "test", "--images", "2",
                     "--videos", "1", "--seed", "0", "--image-size", "64", "80", "--video-size",
                     "48", "64", "--frames", "5", "--quiet"])
    assert code == 0
    coco = json.loads((tmp_path / "test" / "instances.json").read_text())
    videos = json.loads((tmp_path / "test" / "videos.json").read_text())
    assert [(i["height"], i["width"]) for i in coco["images"]] == [(64, 80)] * 2
    assert videos["videos"][0]["length"] == 5 and videos["videos"][0]["width"] == 64


def test_object_sizes_span_small_and_large():
    config = tiny()
    fractions = [item["area"] / (96 * 96)
                 for seed in range(40) for item in generate_image(seed, config)[1]]
    assert min(fractions) <= 0.02 and max(fractions) >= 0.30
    sizes = {item["attributes"]["size"] for seed in range(40)
             for item in generate_image(seed, config)[1]}
    assert sizes == {"small", "medium", "large"}


def test_hard_scenes_are_more_crowded_than_easy_ones():
    def mean_count(difficulty):
        config = tiny(difficulty)
        return np.mean([len(generate_image(seed, config)[1]) for seed in range(12)])
    assert mean_count("hard") > mean_count("easy") + 1


def test_categories_are_the_64_compositions():
    records = categories()
    assert [c["id"] for c in records] == list(range(1, 65))
    star = next(c for c in records if c["name"] == "red star")
    assert star == {"id": star["id"], "name": "red star", "supercategory": "star",
                    "shape": "star", "color": "red"}


def test_prompts_refer_to_the_right_annotations():
    annotations = [
        {"id": 1, "attributes": {"color": "red", "shape": "star", "size": "small"}},
        {"id": 2, "attributes": {"color": "blue", "shape": "star", "size": "large"}},
        {"id": 3, "attributes": {"color": "blue", "shape": "ring", "size": "small"}},
        {"id": 4, "category_id": next(c["id"] for c in categories() if c["name"] == "red star")},
    ]
    matches = annotations_for_prompts(
        ["star", "red star", "small blue ring", "the red star", "blue things", "large stars"],
        annotations)
    assert matches == {"star": [1, 2, 4], "red star": [1, 4], "small blue ring": [3],
                       "the red star": [1, 4], "blue things": [2, 3], "large stars": [2]}
    assert prompts_for(categories()[0], "shape") == ["circle"]
    assert prompts_for(annotations[2], "composition") == ["blue ring"]
    for prompt in prompts_for(annotations[2], "all"):  # every prompt for it finds it (only)
        assert annotations_for_prompts([prompt], annotations)[prompt] == [3]
    assert len(prompt_category_ids("star")) == 8 and len(prompt_category_ids("red")) == 8
    with pytest.raises(VocabularyError, match="unknown word 'purple'"):
        parse_prompt("purple star")
