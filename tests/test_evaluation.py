"""COCO AP (pycocotools), calibration (ECE) on cases with analytic answers, and `mobius eval` end
to end on a tiny generated split with a small torch model and its ONNX export."""
from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from perception_core.cli import main as mobius
from perception_core.evaluation.calibration import (calibration, expected_calibration_error, match_ious,
                                                    recall_at_scores, reliability_diagram)
from perception_core.evaluation.coco_eval import evaluate_coco
from perception_core.evaluation.detections import ImageDetections, coco_results, detections_from_coco_results, json_rle
from perception_core.evaluation.eval_command import score

HEIGHT, WIDTH = 120, 60
TINY_MODEL = """name: tiny_eval
hidden_dim: 32
backbone: {variant: conv_small, width_multiplier: 0.25}
pixel_decoder: {type: bottleneck, num_blocks: 1, bottleneck_stride: 16, ffn_dim: 64, heads: 4}
decoder: {num_layers: 2, num_queries: 12, ffn_dim: 64, heads: 4}
pruning: {min_kept: 6}
"""


def rectangle(x1: int, y1: int, x2: int, y2: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def coco_ground_truth(rectangles_per_image: list[list[tuple[int, tuple]]]) -> dict:
    """COCO dict from [[(category_id, (x1, y1, x2, y2)), ...] per image]; image ids from 1."""
    images, annotations = [], []
    for image_id, rectangles in enumerate(rectangles_per_image, start=1):
        images.append({"id": image_id, "height": HEIGHT, "width": WIDTH, "file_name": f"{image_id}.png"})
        for category, (x1, y1, x2, y2) in rectangles:
            rle = json_rle(mask_utils.encode(np.asfortranarray(rectangle(x1, y1, x2, y2).astype(np.uint8))))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "segmentation": rle, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in ((1, "red star"), (2, "blue ring"), (5, "green cross"))]}


def perfect_detections(gt: dict, score_value: float = 1.0) -> list[ImageDetections]:
    detections = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        detections.append(ImageDetections(image["id"], [score_value] * len(anns), [a["category_id"] for a in anns],
                                          np.asarray(boxes, float).reshape(-1, 4), [a["segmentation"] for a in anns]))
    return detections


GT = coco_ground_truth([[(1, (5, 5, 30, 40)), (2, (30, 60, 55, 110))], [(1, (10, 70, 50, 100))], [],
                        [(5, (0, 0, 60, 120))]])


# ----------------------------------------------------------------------------- COCO AP

def test_perfect_detections_give_ap_1_and_zero_calibration_error():
    metrics = score(GT, perfect_detections(GT), GT["categories"], holdout=["red star"])
    for kind in ("box", "mask"):
        assert metrics[kind]["AP"] == pytest.approx(1.0) and metrics[kind]["AP75"] == pytest.approx(1.0)
        assert metrics["calibration"][kind]["ece"] == pytest.approx(0.0)
    assert metrics["holdout"]["holdout_mask"]["AP"] == pytest.approx(1.0)
    assert metrics["holdout"]["compositions"] == ["red star"]
    assert metrics["per_category"]["blue ring"] == {"box_AP": pytest.approx(1.0), "mask_AP": pytest.approx(1.0)}
    assert metrics["recall_at_score"] == {"iou": "mask", "hit_iou": 0.5,
                                          "recall": {"0.1": 1.0, "0.2": 1.0, "0.3": 1.0, "0.4": 1.0, "0.5": 1.0}}


def test_zero_detections_give_ap_0_and_unknown_images_are_rejected():
    result = evaluate_coco(GT, [])
    assert result.stats["bbox"]["AP"] == 0.0 and result.stats["segm"]["AP"] == 0.0
    assert result.num_detections == 0
    with pytest.raises(ValueError, match="image ids \\[42\\]"):
        evaluate_coco(GT, [ImageDetections(42, [0.5], [1], [[0, 0, 5, 5]])], iou_types=("bbox",))
    with pytest.raises(ValueError, match="category ids \\[9\\]"):
        evaluate_coco(GT, [ImageDetections(1, [0.5], [9], [[0, 0, 5, 5]])], iou_types=("bbox",))


def test_false_positive_on_an_image_without_ground_truth_lowers_ap():
    detections = perfect_detections(GT, 0.5) + [ImageDetections(3, [0.9], [1], [[0, 0, 20, 20]],
                                                                rectangle(0, 0, 20, 20)[None])]
    result = evaluate_coco(GT, detections)
    assert result.stats["segm"]["AP"] < 0.99
    assert result.per_category("segm")[2] == pytest.approx(1.0)  # other categories untouched


def noisy_detections(gt: dict, seed: int) -> list[ImageDetections]:
    rng = np.random.default_rng(seed)
    detections = []
    for image in perfect_detections(gt):
        boxes = np.clip(image.boxes + rng.integers(-6, 7, size=image.boxes.shape), 0, [WIDTH, HEIGHT] * 2)
        extra = rng.integers(0, 3)
        boxes = np.concatenate([boxes, np.sort(rng.integers(0, 60, size=(extra, 4)), axis=1) + [0, 0, 1, 1]])
        labels = np.concatenate([image.category_ids, rng.choice([1, 2, 5], size=extra)])
        masks = np.stack([rectangle(*b) for b in boxes.astype(int)]) if len(boxes) else np.zeros((0, HEIGHT, WIDTH), bool)
        detections.append(ImageDetections(image.image_id, rng.random(len(boxes)), labels, boxes, masks))
    return detections


def test_subset_ap_equals_pycocotools_restricted_to_those_categories():
    detections = noisy_detections(GT, 1)
    result = evaluate_coco(GT, detections)
    gt = COCO()
    gt.dataset = GT
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(gt, gt.loadRes(coco_results(detections, iou_type)), iou_type)
            evaluator.params.catIds = [1, 5]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            subset = result.subset(iou_type, [1, 5])
            assert 0.05 < evaluator.stats[0] < 0.95
            assert subset["AP"] == pytest.approx(evaluator.stats[0], abs=1e-12)
            assert subset["AP50"] == pytest.approx(evaluator.stats[1], abs=1e-12)
    assert result.subset("segm", [42]) is None


def test_rle_and_bool_masks_and_results_json_round_trip_agree():
    detections = noisy_detections(GT, 2)
    as_rle = [ImageDetections(d.image_id, d.scores, d.category_ids, d.boxes, [json_rle(r) for r in d.rles])
              for d in detections]
    reloaded = detections_from_coco_results(json.loads(json.dumps(coco_results(detections, "both"))))
    reference = evaluate_coco(GT, detections).stats
    assert evaluate_coco(GT, as_rle).stats == reference
    assert evaluate_coco(GT, reloaded).stats == reference


# ----------------------------------------------------------------------------- calibration

def nested_detections(scores: np.ndarray, ious: np.ndarray) -> tuple[dict, list[ImageDetections]]:
    """One 100-row gt rectangle per image and a detection covering its top round(100 * iou) rows:
    mask IoU and box IoU are exactly that fraction."""
    rows = np.round(np.asarray(ious) * 100).astype(int)
    gt = coco_ground_truth([[(1, (10, 10, 20, 110))] for _ in rows])
    detections = [ImageDetections(i + 1, [s], [1], [[10, 10, 20, 10 + r]], rectangle(10, 10, 20, 10 + r)[None])
                  for i, (s, r) in enumerate(zip(scores, rows))]
    return gt, detections


@pytest.mark.parametrize("kind", ["mask", "box"])
def test_calibrated_confidence_has_zero_ece_and_constant_overconfidence_its_offset(kind):
    ious = np.linspace(0.05, 0.75, 15)
    gt, exact = nested_detections(ious, ious)
    assert calibration(gt, exact, iou_kind=kind).ece == pytest.approx(0.0, abs=1e-12)
    gt, over = nested_detections(ious + 0.2, ious)
    result = calibration(gt, over, iou_kind=kind)
    assert result.ece == pytest.approx(0.2, abs=1e-12) and result.n == 15


def test_ece_formula_on_known_bins():
    assert expected_calibration_error([0.9] * 4, [1, 1, 0, 0]).ece == pytest.approx(0.4)
    # half the detections in a calibrated bin, half over-confident by 0.4: 0.5 * 0 + 0.5 * 0.4
    result = expected_calibration_error([0.1, 0.1, 0.95, 0.95], [0.1, 0.1, 0.55, 0.55])
    assert result.ece == pytest.approx(0.2)
    assert result.counts.sum() == 4 and result.counts[1] == 2 and result.counts[14] == 2
    assert expected_calibration_error([], []).ece == 0.0
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error([1.5], [0.5])


def test_greedy_matching_gives_duplicates_iou_0_and_other_categories_never_match():
    gt = coco_ground_truth([[(1, (10, 10, 20, 110))]])
    box, mask = [[10, 10, 20, 110]], rectangle(10, 10, 20, 110)[None]
    duplicates = [ImageDetections(1, [0.9, 0.8, 0.7], [1, 1, 2], box * 3, np.repeat(mask, 3, axis=0))]
    _, best = match_ious(gt, duplicates, matching="best")
    _, greedy = match_ious(gt, duplicates, matching="greedy")
    assert best.tolist() == [1.0, 1.0, 0.0] and greedy.tolist() == [1.0, 0.0, 0.0]


def test_recall_at_scores_counts_objects_found_above_each_threshold():
    # GT holds 4 objects on images 1, 2 and 4 (image 3 is empty); detections in image order
    perfect = perfect_detections(GT)
    scores = {1: [0.9, 0.35], 2: [0.15], 4: [0.6]}
    detections = [ImageDetections(d.image_id, scores.get(d.image_id, []), d.category_ids, d.boxes, d.masks)
                  for d in perfect]
    recall = recall_at_scores(GT, detections, thresholds=(0.1, 0.3, 0.5, 0.95))
    assert recall == {0.1: 1.0, 0.3: 0.75, 0.5: 0.5, 0.95: 0.0}
    # a wrong category, a poor overlap and a duplicate find nothing more
    first = detections[0]
    shifted = first.boxes[:1] + [0, 30, 0, 30]
    star = rectangle(5, 5, 30, 40)
    boxes = np.concatenate([first.boxes[:1], shifted] + [first.boxes[:1]] * 2)
    extra = ImageDetections(1, [0.99] * 4, [2, 1, 1, 1], boxes, np.stack([star, rectangle(5, 35, 30, 70), star, star]))
    recall = recall_at_scores(GT, [extra, *detections[1:]], thresholds=(0.1, 0.95), iou_kind="mask")
    assert recall == {0.1: 0.75, 0.95: 0.25}          # image 1: the star once, the ring missed
    # images without detections count their objects as missed; no objects at all gives None
    assert recall_at_scores(GT, detections[:1], thresholds=(0.1,), iou_kind="box") == {0.1: 0.5}
    empty = {**GT, "annotations": []}
    assert recall_at_scores(empty, [], thresholds=(0.1,)) == {0.1: None}
    with pytest.raises(ValueError, match="iou_kind"):
        recall_at_scores(GT, detections, iou_kind="polygon")


def test_reliability_diagram_is_a_png(tmp_path):
    ious = np.linspace(0.05, 0.95, 30)
    gt, detections = nested_detections(np.clip(ious + 0.1, 0, 1), ious)
    path = reliability_diagram([calibration(gt, detections, iou_kind=k) for k in ("mask", "box")],
                               tmp_path / "reliability.png")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 300


# ----------------------------------------------------------------------------- mobius eval end to end

@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    """3 generated images (96 x 128) with a held-out composition, and random tiny-model weights."""
    import torch

    from perception_core.model.build import build_from_name, save_weights
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.writer import write_split

    root = tmp_path_factory.mktemp("eval")
    config = make_config("easy", image_size=(96, 128), use_photos=False, holdout_compositions=("red star",))
    paths = write_split(root, "val", 3, 0, 0, config, progress=False)
    (root / "tiny.yaml").write_text(TINY_MODEL)
    torch.manual_seed(0)
    save_weights(build_from_name(str(root / "tiny.yaml")), root / "tiny.safetensors")
    return root, paths.instances


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = mobius(["eval", "--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def torch_eval(capsys, root, data, saved, *extra: str) -> tuple[int, str, str]:
    return run_eval(capsys, "--weights", str(root / "tiny.safetensors"), "--preset", str(root / "tiny.yaml"),
                    "--data", str(data), "--size", "128", "--threads", "1", "--save-detections", str(saved), *extra)


def test_mobius_eval_torch_on_a_generated_split(tiny_split, capsys, tmp_path):
    root, data = tiny_split
    code, out, err = torch_eval(capsys, root, data, tmp_path / "torch.json", "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["images"] == 3 and metrics["prompts"] == 64 and 0 < metrics["detections"] <= 3 * 12
    for kind in ("box", "mask"):
        assert 0.0 <= metrics[kind]["AP"] <= 1.0 and 0.0 <= metrics[kind]["AP50"] <= 1.0
        assert 0.0 <= metrics["calibration"][kind]["ece"] <= 1.0
    assert metrics["holdout"]["compositions"] == ["red star"]  # from the json's info
    # the saved detections, scored through the same path, reproduce the printed numbers
    saved = detections_from_coco_results(json.loads((tmp_path / "torch.json").read_text()))
    gt = json.loads(data.read_text())
    assert score(gt, saved, gt["categories"])["mask"] == metrics["mask"]
    recall = list(metrics["recall_at_score"]["recall"].values())
    assert all(a >= b for a, b in zip(recall, recall[1:]))        # a higher threshold never finds more
    # and the ground truth itself, as detections, scores AP 1 through that path
    assert score(gt, perfect_detections(gt), gt["categories"])["mask"]["AP"] == pytest.approx(1.0)

    code, out, err = torch_eval(capsys, root, data, tmp_path / "subset.json", "--prompts", "red star,blue ring",
                                "--calibration-plot", str(tmp_path / "reliability.png"))
    assert code == 0, err
    assert "3 images, 2 prompts" in out and "held-out compositions: red star" in out
    assert "objects found (mask IoU >= 0.5) at score >= 0.1: " in out
    assert {d["category_id"] for d in json.loads((tmp_path / "subset.json").read_text())} <= {25, 38}
    assert cv2.imread(str(tmp_path / "reliability.png")) is not None


def test_mobius_eval_onnx_finds_what_torch_finds(tiny_split, capsys, tmp_path):
    """The shipped model's ONNX and weights when they exist (no export needed), else the tiny model
    exported here."""
    from perception_core import assets

    root, data = tiny_split
    if assets.ONNX.is_file() and assets.WEIGHTS.is_file():
        onnx_path, weights, preset, size = assets.ONNX, assets.WEIGHTS, assets.PRESET, assets.SIZE
    else:
        from perception_core.model.build import build_from_name, load_weights
        from perception_core.runtime.export import export_onnx

        weights, preset, size = root / "tiny.safetensors", root / "tiny.yaml", 128
        onnx_path = export_onnx(load_weights(build_from_name(str(preset)), weights), tmp_path / "tiny.onnx", size)
    common = ["--preset", str(preset), "--data", str(data), "--threads", "1"]
    code, _, err = run_eval(capsys, "--weights", str(weights), "--size", str(size), *common,
                            "--save-detections", str(tmp_path / "torch.json"))
    assert code == 0, err
    code, _, err = run_eval(capsys, "--onnx", str(onnx_path), *common, "--save-detections", str(tmp_path / "onnx.json"))
    assert code == 0, err
    onnx_dets = json.loads((tmp_path / "onnx.json").read_text())
    torch_dets = json.loads((tmp_path / "torch.json").read_text())
    for image_id in (1, 2, 3):  # same pruning, same detections
        onnx_scores = sorted(d["score"] for d in onnx_dets if d["image_id"] == image_id)
        torch_scores = sorted(d["score"] for d in torch_dets if d["image_id"] == image_id)
        assert len(onnx_scores) == len(torch_scores) > 0
        np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)


def test_mobius_eval_reports_clear_errors(tiny_split, capsys, tmp_path):
    root, data = tiny_split
    weights = ["--weights", str(root / "tiny.safetensors"), "--preset", str(root / "tiny.yaml")]
    code, _, err = run_eval(capsys, *weights, "--data", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json' not found" in err
    code, _, err = run_eval(capsys, "--weights", str(tmp_path / "none.safetensors"), "--data", str(data))
    assert code == 2 and "none.safetensors' not found" in err
    code, _, err = run_eval(capsys, *weights, "--data", str(data), "--prompts", "purple unicorn")
    assert code == 2 and "purple unicorn" in err
    code, _, err = run_eval(capsys, *weights, "--data", str(data), "--images", str(tmp_path))
    assert code == 2 and "missing under" in err


def test_record_writes_its_entry_and_keeps_the_others(tmp_path, tiny_split, capsys):
    from perception_core.evaluation.record import image_summary, record_metrics

    info = tmp_path / "model.json"
    info.write_text(json.dumps({"preset": "mobius_nano", "step": 7, "metrics": {"eval-video val": {"HOTA": 0.5}}}))
    metrics = score(GT, perfect_detections(GT), GT["categories"], holdout=["red star"])
    record_metrics("eval val", image_summary({**metrics, "model": "x"}, "val.json"), info)
    written = json.loads(info.read_text())
    assert written["step"] == 7 and written["metrics"]["eval-video val"] == {"HOTA": 0.5}
    entry = written["metrics"]["eval val"]
    assert entry["mask_AP"] == pytest.approx(1.0) and entry["ece_box_iou"] == pytest.approx(0.0)
    assert entry["holdout_mask_AP"] == pytest.approx(1.0) and entry["holdout_compositions"] == ["red star"]
    assert entry["recall_at_score"]["recall"]["0.4"] == 1.0
    with pytest.raises(FileNotFoundError, match="ship a model first"):
        record_metrics("eval val", {}, tmp_path / "absent.json")
    root, data = tiny_split
    code, _, err = run_eval(capsys, "--weights", str(root / "tiny.safetensors"), "--data", str(data), "--record")
    assert code == 2 and "shipped model" in err


def test_training_checkpoint_brings_its_own_architecture(tiny_split, tmp_path):
    """A `mobius train` checkpoint ({"model", "config": {"model": {preset, overrides}}}) loads
    without --preset: the architecture comes from the checkpoint, overrides included."""
    import torch

    from perception_core.evaluation.predict import load_torch_model
    from perception_core.model.build import build_from_name

    root, _ = tiny_split
    torch.manual_seed(1)
    model = build_from_name(str(root / "tiny.yaml"), ["decoder.num_layers=3"])
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "step": 5,
                "config": {"model": {"preset": str(root / "tiny.yaml"), "overrides": {"decoder": {"num_layers": 3}}}}},
               path)
    loaded = load_torch_model(path)
    assert loaded.config.decoder.num_layers == 3 and loaded.deployed
    assert torch.equal(loaded.state_dict()["decoder.level_embed"], model.state_dict()["decoder.level_embed"])
    with pytest.raises(ValueError, match="do not match"):
        load_torch_model(path, preset=str(root / "tiny.yaml"))  # 2 layers: the weights do not fit
