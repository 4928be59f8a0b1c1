"""docs/MODEL_CARD.md's renderer: recorded numbers go in as recorded, the reliability diagram is linked
only when it exists, the score-threshold advice follows the recorded recall and the node's YAML."""
from perception_core.evaluation.record import confidence_gap
from perception_core.training.model_card import CALIBRATION_PLOT, node_score_threshold, render

INFO = {"step": 4200, "size": 384, "default_prompts": ["red circle"], "recipe": {"batch_size": 8},
        "metrics": {"eval test": {"data": "t.json", "images": 5, "prompts": 3, "model": "onnx m.onnx", "size": 384,
                                  "box_AP": 0.123, "mask_AP": 0.456, "ece_mask_iou": 0.0312, "ece_box_iou": 0.02}}}
TRAINING = {"steps": 4200, "hours": 4.5, "first_loss": 96.9, "last_loss": 20.1}
LATENCY = {"load": "1.0", "ms": {1: 20.0, 2: 15.0}}


def test_card_reports_the_recorded_metrics_and_links_the_plot_only_when_given():
    with_plot = render(INFO, TRAINING, LATENCY, {"total": 1.41}, CALIBRATION_PLOT)
    without = render(INFO, TRAINING, LATENCY, {"total": 1.41})
    assert "| mask | 45.6 |" in with_plot and "| box | 12.3 |" in with_plot
    assert "0.0312" in with_plot and "4200 steps in 4.5 h" in with_plot
    assert f"![calibration]({CALIBRATION_PLOT})" in with_plot
    assert "![calibration]" not in without


def test_score_advice_follows_the_recorded_gap_recall_and_node_threshold():
    image = {**INFO["metrics"]["eval test"], "confidence_minus_mask_iou": -0.123,
             "recall_at_score": {"iou": "mask", "hit_iou": 0.5, "recall": {"0.1": 0.61, "0.4": 0.052, "0.5": None}}}
    text = render({**INFO, "metrics": {"eval test": image}}, TRAINING, LATENCY, {"total": 1.41}, node_threshold=0.4)
    assert "scores 0.12 below the IoU it reaches, on average" in text
    assert "above a score threshold: 61.0% at 0.1, 5.2% at 0.4;" in text
    assert "the node's default threshold of 0.4 (config/segment.yaml, also used by `make demo`) keeps 5.2%" in text
    over = {**image, "confidence_minus_mask_iou": 0.05}
    text = render({**INFO, "metrics": {"eval test": over}}, TRAINING, LATENCY, {}, node_threshold=0.3)
    assert "scores 0.05 above the IoU" in text and "keeps" not in text    # no recall recorded at 0.3
    assert "below the IoU" not in render(INFO, TRAINING, LATENCY, {})      # nothing recorded: no claim


def test_node_threshold_comes_from_the_shipped_yaml_and_the_gap_from_calibration_bins(tmp_path):
    from mobius_ros.parameters import load_defaults

    assert node_score_threshold() == load_defaults()["score_threshold"]
    assert node_score_threshold(tmp_path / "absent.yaml") is None
    bins = {"counts": [2, 0, 1], "mean_confidence": [0.1, None, 0.7], "mean_iou": [0.3, None, 0.4]}
    assert confidence_gap(bins) == (2 * (0.1 - 0.3) + (0.7 - 0.4)) / 3
    assert confidence_gap({"counts": [0, 0], "mean_confidence": [None, None], "mean_iou": [None, None]}) is None


def test_card_states_the_stored_score_calibration_or_its_absence():
    record = {"a": 0.9418, "b": 1.0502, "fit_on": "data/synth/val/instances.json", "images": 300, "detections": 6000,
              "ece_raw": 0.1499, "ece_calibrated": 0.0403}
    calibrated = {**INFO["metrics"]["eval test"], "scores": "calibrated (a=0.942, b=1.050)"}
    text = render({**INFO, "metrics": {"eval test": calibrated}}, TRAINING, LATENCY, {}, score_calibration=record)
    assert "s' = sigmoid(0.942 logit(s) + 1.050), fitted on `data/synth/val/instances.json` (300 images" in text
    assert "the ECE went from 0.1499 (raw) to 0.0403" in text and "recorded with raw scores" not in text
    raw = {**calibrated, "scores": "raw"}
    assert "recorded with raw scores" in render({**INFO, "metrics": {"eval test": raw}}, TRAINING, LATENCY, {},
                                                score_calibration=record)
    assert "no `mobius calibrate` fit is stored" in render(INFO, TRAINING, LATENCY, {})


def test_card_splits_the_steps_of_a_fine_tuned_model():
    tuned = {**INFO, "step": 11600, "init_step": 9800, "init_weights": "perception_core/assets/mobius_nano.safetensors"}
    assert ("Trained for 11600 steps (0 skipped): 9800 before, then 1800 in a run started from those weights "
            "(`model.init_weights=perception_core/assets/mobius_nano.safetensors`).") in render(tuned, TRAINING,
                                                                                                LATENCY, {})
    assert "Trained for 4200 steps (0 skipped)." in render(INFO, TRAINING, LATENCY, {})


def test_video_line_names_the_clips_threshold_and_the_tracker_settings_recorded():
    video = {"data": "v.json", "videos": 48, "score_threshold": 0.4, "video_AP": 0.243, "HOTA": 0.503,
             "IDF1": 0.531, "IDSW": 32, "tracker": {"keep_score": 0.5, "match_threshold": 0.35,
                                                    "embedding_weight": 0.7, "confirm_hits": 2}}
    text = render({**INFO, "metrics": {**INFO["metrics"], "eval-video test": video}}, TRAINING, LATENCY, {})
    assert ("(48 clips, score threshold 0.4, tracker keep_score 0.5, match_threshold 0.35, embedding_weight 0.7, "
            "confirm_hits 2): video AP 24.3, HOTA 50.3, IDF1 53.1, ID switches 32." in text)
    older = {k: v for k, v in video.items() if k != "tracker"}       # recorded before the settings were
    assert "(48 clips, score threshold 0.4): video AP 24.3" in render(
        {**INFO, "metrics": {**INFO["metrics"], "eval-video test": older}}, TRAINING, LATENCY, {})
