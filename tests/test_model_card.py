"""docs/MODEL_CARD.md's renderer: recorded numbers go in as recorded, the reliability diagram is linked
only when it exists."""
from perception_core.training.model_card import CALIBRATION_PLOT, render

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
