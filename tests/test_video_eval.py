"""Video AP (YouTube-VIS protocol) and tracking metrics (trackeval) on constructed cases whose
answers are known, cross-checked against pycocotools' COCOeval and trackeval's own YouTube-VIS
loader; and `mobius eval-video` end to end."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import warnings

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from perception_core.cli import main as mobius
from perception_core.evaluation import eval_video_command
from perception_core.evaluation.detections import json_rle
from perception_core.evaluation.video_ap import Tube, tube_iou, video_ap
from perception_core.evaluation.video_eval import evaluate_video
from perception_core.runtime.tracker import TrackerConfig

HEIGHT, WIDTH, FRAMES = 32, 48, 6


def rle_of(mask: np.ndarray) -> dict:
    return json_rle(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def uncompressed_rle(rle: dict) -> dict:
    """Compressed RLE -> {"size", "counts": [run lengths, starting with zeros, column-major]}."""
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice
        warnings.simplefilter("ignore", DeprecationWarning)
        flat = mask_utils.decode(rle).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": rle["size"], "counts": [int(c) for c in counts]}


def box_mask(x: int, y: int, w: int, h: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y:y + h, x:x + w] = True
    return mask


def moving_track(x0: int, y0: int, dx: int, frames: int = FRAMES) -> list[dict]:
    return [rle_of(box_mask(x0 + dx * t, y0, 8, 8)) for t in range(frames)]


def ytvis_ground_truth() -> dict:
    """Two videos: video 1 has two category-1 tracks (left/right, moving towards each other) and
    one category-2 track that leaves after 3 frames; video 2 has one category-2 track."""
    videos = [{"id": v, "height": HEIGHT, "width": WIDTH, "length": FRAMES,
               "file_names": [f"v{v}/{t:05d}.jpg" for t in range(FRAMES)]} for v in (1, 2)]
    leaving = moving_track(2, 22, 2)[:3] + [None] * (FRAMES - 3)
    tracks = [(1, 1, moving_track(2, 2, 2)), (1, 1, moving_track(36, 2, -2)), (1, 2, leaving),
              (2, 2, moving_track(10, 10, 3))]
    annotations = [{"id": i + 1, "video_id": v, "category_id": c, "segmentations": s, "iscrowd": 0,
                    "height": HEIGHT, "width": WIDTH, "length": FRAMES} for i, (v, c, s) in enumerate(tracks)]
    return {"videos": videos, "annotations": annotations,
            "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}]}


def perfect_results(gt: dict) -> list[dict]:
    return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 0.9,
             "segmentations": a["segmentations"]} for a in gt["annotations"]]


# ----------------------------------------------------------------------------- constructed cases

def test_tube_iou_sums_intersections_and_unions_over_frames():
    full = rle_of(box_mask(0, 0, 10, 10))
    half = rle_of(box_mask(0, 0, 5, 10))
    truth = Tube(1, 1, [full, full, None])
    assert tube_iou(truth, Tube(1, 1, [full, full, None])) == 1.0
    assert tube_iou(truth, Tube(1, 1, [full, None, None])) == pytest.approx(100 / 200)
    assert tube_iou(truth, Tube(1, 1, [half, full, full])) == pytest.approx((50 + 100) / (100 + 100 + 100))
    assert tube_iou(Tube(1, 1, [None] * 3), Tube(1, 1, [None] * 3)) == 0.0


def test_perfect_results_give_ap_1_hota_1_and_no_id_switches():
    gt = ytvis_ground_truth()
    metrics = evaluate_video(gt, perfect_results(gt))
    ap, tracking = metrics["video_ap"], metrics["tracking"]
    assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0) and ap["AR1"] == pytest.approx(0.75)
    assert ap["per_category"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    for name in ("HOTA", "DetA", "AssA", "IDF1", "MOTA"):
        assert tracking[name] == pytest.approx(1.0), name
    assert tracking["IDSW"] == 0 and tracking["mode"] == "per_category"


def test_swapping_ids_halfway_costs_association_not_detection():
    gt = ytvis_ground_truth()
    results = perfect_results(gt)
    first, second = results[0]["segmentations"], results[1]["segmentations"]
    half = FRAMES // 2
    results[0]["segmentations"] = first[:half] + second[half:]
    results[1]["segmentations"] = second[:half] + first[half:]
    metrics = evaluate_video(gt, results)
    tracking = metrics["tracking"]
    assert tracking["IDSW"] >= 1
    assert tracking["DetA"] == pytest.approx(1.0)  # every mask is still right
    assert tracking["AssA"] < 0.9 and tracking["IDF1"] < 0.9 and tracking["HOTA"] < 0.95
    # each swapped tube overlaps either gt tube in half its frames: IoU 3a / 9a = 1/3 < 0.5
    assert metrics["video_ap"]["per_category"][1] == pytest.approx(0.0)
    assert metrics["video_ap"]["per_category"][2] == pytest.approx(1.0)


def test_empty_results_score_zero():
    metrics = evaluate_video(ytvis_ground_truth(), [])
    assert metrics["video_ap"]["AP"] == 0.0 and metrics["video_ap"]["AR100"] == 0.0
    for name in ("HOTA", "DetA", "AssA", "IDF1"):
        assert metrics["tracking"][name] == 0.0


def test_wrong_category_counts_only_per_category():
    gt = ytvis_ground_truth()
    results = perfect_results(gt)
    for result in results:
        result["category_id"] = 3 - result["category_id"]
    per_category = evaluate_video(gt, results)
    agnostic = evaluate_video(gt, results, tracking_mode="class_agnostic")
    assert per_category["tracking"]["HOTA"] == 0.0 and per_category["video_ap"]["AP"] == 0.0
    assert agnostic["tracking"]["HOTA"] == pytest.approx(1.0) and agnostic["tracking"]["mode"] == "class_agnostic"


def test_score_threshold_drops_low_results_from_tracking_only():
    gt = ytvis_ground_truth()
    results = perfect_results(gt)
    results[3]["score"] = 0.1
    metrics = evaluate_video(gt, results, score_threshold=0.5)
    assert metrics["video_ap"]["AP"] == pytest.approx(1.0)
    assert metrics["tracking"]["DetA"] < 1.0 and metrics["tracking"]["result_tracks"] == 3


def test_single_frame_video_ap_equals_pycocotools_segm_ap():
    """Random boxes with noise, duplicates, misses and false positives over 3 categories: the video
    AP of 1-frame videos must equal COCOeval's segm AP on the same data."""
    rng = np.random.default_rng(3)
    images, annotations, truths, results, records = [], [], [], [], []
    for image_id in range(1, 9):
        images.append({"id": image_id, "height": HEIGHT, "width": WIDTH})
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = rng.integers(0, 30), rng.integers(0, 18), rng.integers(4, 16), rng.integers(4, 14)
            category = int(rng.integers(1, 4))
            rle = rle_of(box_mask(x, y, w, h))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": rle, "area": float(w * h), "bbox": [x, y, w, h], "iscrowd": 0})
            truths.append(Tube(image_id, category, [rle]))
            for _ in range(rng.integers(0, 3)):  # noisy copies, sometimes with the wrong category
                jitter = rng.integers(-1, 2, size=4)
                noisy = rle_of(box_mask(max(0, x + jitter[0]), max(0, y + jitter[1]), max(1, w + jitter[2]),
                                        max(1, h + jitter[3])))
                label = category if rng.random() < 0.8 else int(rng.integers(1, 4))
                score = float(rng.random())
                results.append(Tube(image_id, label, [noisy], score))
                records.append({"image_id": image_id, "category_id": label, "segmentation": noisy, "score": score})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(records), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = video_ap(truths, results, [1, 2, 3])
    assert 0.2 < evaluator.stats[0] < 0.95  # a non-trivial case
    for index, name in ((0, "AP"), (1, "AP50"), (2, "AP75"), (6, "AR1"), (7, "AR10"), (8, "AR100")):
        assert ours[name] == pytest.approx(evaluator.stats[index], abs=1e-12), name


def test_tracking_metrics_equal_trackeval_youtube_vis_evaluator(tmp_path):
    """Our data dicts fed to trackeval's metrics give what trackeval's own YouTube-VIS loader gives."""
    import trackeval

    gt = ytvis_ground_truth()
    results = perfect_results(gt)
    results[0]["segmentations"] = results[0]["segmentations"][:3] + results[1]["segmentations"][3:]
    results[2]["segmentations"] = [rle_of(box_mask(3, 21, 8, 9))] * 2 + [None] * (FRAMES - 2)
    results.append({"video_id": 2, "category_id": 1, "score": 0.5, "segmentations": moving_track(20, 20, 1)})
    # trackeval reads ground truth in the official layout: uncompressed RLE and per-frame areas
    official = json.loads(json.dumps(gt))
    for track in official["annotations"]:
        track["areas"] = [None if s is None else int(mask_utils.area(s)) for s in track["segmentations"]]
        track["segmentations"] = [None if s is None else uncompressed_rle(s) for s in track["segmentations"]]
    (tmp_path / "gt" / "youtube_vis_val").mkdir(parents=True)
    (tmp_path / "gt" / "youtube_vis_val" / "gt.json").write_text(json.dumps(official))
    (tmp_path / "tr" / "youtube_vis_val" / "ours" / "data").mkdir(parents=True)
    (tmp_path / "tr" / "youtube_vis_val" / "ours" / "data" / "res.json").write_text(json.dumps(results))
    quiet = {"PRINT_CONFIG": False}
    evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                     "TIME_PROGRESS": False, "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False,
                                     "PLOT_CURVES": False, "DISPLAY_LESS_PROGRESS": True})
    dataset = trackeval.datasets.YouTubeVIS({"GT_FOLDER": str(tmp_path / "gt") + "/",
                                             "TRACKERS_FOLDER": str(tmp_path / "tr") + "/", "SPLIT_TO_EVAL": "val",
                                             "OUTPUT_FOLDER": str(tmp_path / "out"), **quiet})
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(quiet), trackeval.metrics.Identity(quiet)]
    with contextlib.redirect_stdout(io.StringIO()):
        reference = evaluator.evaluate([dataset], metrics)[0]["YouTubeVIS"]["ours"]["COMBINED_SEQ"]["cls_comb_det_av"]
    ours = evaluate_video(gt, results)["tracking"]
    assert 0.3 < ours["HOTA"] < 0.99
    for name in ("HOTA", "DetA", "AssA"):
        assert ours[name] == pytest.approx(float(np.mean(reference["HOTA"][name])), abs=1e-9), name
    assert ours["IDF1"] == pytest.approx(float(reference["Identity"]["IDF1"]), abs=1e-9)
    assert ours["IDSW"] == int(reference["CLEAR"]["IDSW"])


def test_bad_results_are_rejected_with_clear_errors():
    gt = ytvis_ground_truth()
    results = perfect_results(gt)
    with pytest.raises(ValueError, match="6 frames"):
        evaluate_video(gt, [{**results[0], "segmentations": results[0]["segmentations"][:2]}])
    with pytest.raises(ValueError, match="video id 9"):
        evaluate_video(gt, [{**results[0], "video_id": 9}])
    with pytest.raises(ValueError, match="category id 7"):
        evaluate_video(gt, [{**results[0], "category_id": 7}])
    with pytest.raises(ValueError, match="needs video_id"):
        evaluate_video(gt, [{"video_id": 1}])
    small = rle_of(box_mask(0, 0, 2, 2, height=8, width=8))
    with pytest.raises(ValueError, match="mask size"):
        evaluate_video(gt, [{**results[0], "segmentations": [small] * FRAMES}])


# ----------------------------------------------------------------------------- mobius eval-video

TINY_MODEL = """name: tiny_eval
hidden_dim: 32
backbone: {variant: conv_small, width_multiplier: 0.25}
pixel_decoder: {type: bottleneck, num_blocks: 1, bottleneck_stride: 16, ffn_dim: 64, heads: 4}
decoder: {num_layers: 2, num_queries: 12, ffn_dim: 64, heads: 4}
pruning: {min_kept: 6}
"""


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory):
    """2 generated clips of 4 frames (96 x 128) and random tiny-model weights."""
    import torch

    from perception_core.model.build import build_from_name, save_weights
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.writer import write_split

    root = tmp_path_factory.mktemp("eval_video")
    config = make_config("easy", video_size=(96, 128), frames=(4, 4), use_photos=False)
    paths = write_split(root, "val", 0, 2, 0, config, progress=False)
    (root / "tiny.yaml").write_text(TINY_MODEL)
    torch.manual_seed(0)
    save_weights(build_from_name(str(root / "tiny.yaml")), root / "tiny.safetensors")
    return root, paths.videos


def eval_video(capsys, *args: str) -> tuple[int, str, str]:
    code = mobius(["eval-video", "--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_mobius_eval_video_scores_perfect_results_file(tiny_videos, capsys, tmp_path):
    _, data = tiny_videos
    gt = json.loads(data.read_text())
    (tmp_path / "perfect.json").write_text(json.dumps(perfect_results(gt)))
    code, out, err = eval_video(capsys, "--data", str(data), "--results", str(tmp_path / "perfect.json"), "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["video_ap"]["AP"] == pytest.approx(1.0) and metrics["tracking"]["HOTA"] == pytest.approx(1.0)
    assert metrics["tracking"]["IDSW"] == 0 and metrics["results"] == len(gt["annotations"]) > 0


def test_mobius_eval_video_runs_the_frame_processor_and_its_results_rescore_identically(tiny_videos, capsys, tmp_path):
    root, data = tiny_videos
    saved = tmp_path / "results.json"
    code, out, err = eval_video(capsys, "--data", str(data), "--weights", str(root / "tiny.safetensors"),
                                "--preset", str(root / "tiny.yaml"), "--size", "128", "--threads", "1",
                                "--score-threshold", "0.0", "--json", "--save-results", str(saved))
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["frames"] == 8 and metrics["videos_run"] == 2 and metrics["prompts"] == 64
    assert 0.0 <= metrics["video_ap"]["AP"] <= 1.0 and 0.0 <= metrics["tracking"]["HOTA"] <= 1.0
    results = json.loads(saved.read_text())
    assert len(results) == metrics["results"] > 0  # threshold 0: random weights still produce tracks
    assert all(len(r["segmentations"]) == 4 and r["video_id"] in (1, 2) for r in results)
    code, out, err = eval_video(capsys, "--data", str(data), "--results", str(saved), "--json")
    assert code == 0, err
    rescored = json.loads(out)
    assert rescored["video_ap"] == metrics["video_ap"] and rescored["tracking"] == metrics["tracking"]


def test_mobius_eval_video_reports_clear_errors(tiny_videos, capsys, tmp_path):
    root, data = tiny_videos
    code, _, err = eval_video(capsys, "--data", str(tmp_path / "none.json"))
    assert code == 2 and "none.json' not found" in err
    code, _, err = eval_video(capsys, "--data", str(data), "--results", str(tmp_path / "none_results.json"))
    assert code == 2 and "none_results.json' not found" in err
    (tmp_path / "bad.json").write_text(json.dumps([{"video_id": 1, "category_id": 1, "score": 1.0,
                                                    "segmentations": [None]}]))
    code, _, err = eval_video(capsys, "--data", str(data), "--results", str(tmp_path / "bad.json"))
    assert code == 2 and "4 frames" in err
    code, _, err = eval_video(capsys, "--data", str(data), "--onnx", str(tmp_path / "none.onnx"))
    assert code == 2 and "none.onnx' not found" in err


def test_tracker_settings_reach_the_processor_and_bad_ones_are_refused(tiny_videos, capsys, tmp_path):
    from perception_core.runtime.stream_options import tracker_config

    assert tracker_config([]) == TrackerConfig()
    assert tracker_config(["keep_score=0.45", " confirm_hits=3"]) == TrackerConfig(keep_score=0.45, confirm_hits=3)
    root, data = tiny_videos
    model = ["--data", str(data), "--weights", str(root / "tiny.safetensors"), "--preset", str(root / "tiny.yaml"),
             "--size", "128", "--threads", "1", "--score-threshold", "0.0", "--json"]
    parser = argparse.ArgumentParser()
    eval_video_command.add_arguments(parser)
    args = parser.parse_args([*model, "--tracker", "keep_score=0.45", "--tracker", "max_age=4"])
    processor = eval_video_command.make_processor(args, ["red circle"])
    assert processor.config.tracker == TrackerConfig(keep_score=0.45, max_age=4)
    code, out, err = eval_video(capsys, *model, "--tracker", "keep_score=0.45", "--tracker", "max_age=4")
    assert code == 0 and json.loads(out)["frames"] == 8, err
    for bad, message in (("keep=0.5", "KEY one of keep_score"), ("keep_score", "expected KEY=VALUE"),
                         ("max_age=1.5", "max_age takes an integer"), ("keep_score=high", "takes a number"),
                         ("keep_score=1.5", "keep_score=1.5 must be in [0, 1]")):
        code, _, err = eval_video(capsys, *model, "--tracker", bad)
        assert code == 2 and message in err, (bad, err)
