"""Training-only queries (denoising, one-to-many, temporal query passing) and the overfit check that
the whole pipeline learns: a tiny model on a handful of generated images reaches mask AP50 >= 0.9
on them, measured with pycocotools."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from perception_core.config import ConfigError
from perception_core.model.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou
from perception_core.model.build import build_model
from perception_core.model.mobius import query_attention_mask
from perception_core.runtime.preprocess import preprocess
from perception_core.runtime.postprocess import to_instances
from perception_core.training import engine
from perception_core.training.criterion import LossConfig, PrefixSupervision, SetCriterion
from perception_core.training.datasets import CocoDataset
from perception_core.training.denoising import group_mask, make_denoising_queries
from perception_core.training.matcher import HungarianMatcher
from perception_core.training.recipe import ModelSection
from perception_core.training.synth.config import make_config
from perception_core.training.synth.writer import write_split
from perception_core.training.temporal import CarriedQueries, track_assignment
from test_training_engine import single_thread, tiny_config, write_tiny_coco  # noqa: F401 (fixture)


def boxes_target(boxes, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "instance_ids": torch.arange(len(labels)) + 100}


# ----------------------------------------------------------------------------- denoising

def test_denoising_positives_stay_close_and_negatives_move_away():
    targets = [boxes_target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]], [1, 2]),
               boxes_target([[0.5, 0.5, 0.4, 0.2]], [0])]
    prompts = torch.randn(3, 8)
    dn = make_denoising_queries(targets, prompts, groups=3, box_noise=0.4, label_noise=0.0,
                                generator=torch.Generator().manual_seed(0))
    assert dn.queries.shape == (2, 3 * 2 * 2, 8) and dn.boxes.shape == (2, 12, 4)
    for image, target in enumerate(targets):
        rows, target_index = dn.indices[image]
        assert len(rows) == 3 * len(target["labels"])
        positives = elementwise_box_iou(box_cxcywh_to_xyxy(dn.boxes[image, rows]),
                                        box_cxcywh_to_xyxy(target["boxes"][target_index]))
        negatives = elementwise_box_iou(box_cxcywh_to_xyxy(dn.boxes[image, rows + 2]),
                                        box_cxcywh_to_xyxy(target["boxes"][target_index]))
        assert positives.min() > 0.45          # each edge moved < 0.4 of half the size
        assert (negatives < positives).all()   # negatives moved 1-2x as far
        # content is the prompt embedding of the instance's label (no label noise here)
        torch.testing.assert_close(dn.queries[image, rows], prompts[target["labels"][target_index]])
    assert make_denoising_queries([boxes_target(np.zeros((0, 4)), [])], prompts, 2, 0.4, 0.2) is None


def test_attention_masks_isolate_denoising_groups_and_the_one_to_many_group():
    mask = group_mask(2, 3)
    assert mask.shape == (6, 6) and not mask[:3, :3].any() and mask[:3, 3:].all()
    full = query_attention_mask(mask, total=6 + 4 + 2, group=2, device="cpu")
    assert full[6:, :6].all()                 # matching queries never see ground-truth-built rows
    assert not full[:6, 6:10].any()           # denoising rows may look at the matching queries
    assert full[10:, :10].all() and full[:10, 10:].all()  # one-to-many group is blind to the rest
    assert not full[6:10, 6:10].any()


# ----------------------------------------------------------------------------- prefix supervision

def test_track_rows_keep_their_instance_and_selected_rows_match_the_rest():
    criterion = SetCriterion(HungarianMatcher(num_points=16), LossConfig(num_points=16))
    target = boxes_target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]], [0, 1])
    # row 0: a track query carrying instance 1 but predicting instance 0's box (a bad track);
    # rows 1-2: selected queries, row 2 predicts instance 0 exactly.
    outputs = {"pred_logits": torch.zeros(1, 3, 2),
               "pred_boxes": torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.5, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]])}
    prefix = PrefixSupervision(track_rows=1, track_indices=[(torch.tensor([0]), torch.tensor([1]))])
    rows, targets = criterion._assign_with_tracks(outputs, [target], prefix)[0]
    assignment = dict(zip(rows.tolist(), targets.tolist()))
    assert assignment == {0: 1, 2: 0}  # fixed pair kept, although row 0 would match instance 0 better
    losses = criterion(dict(outputs, num_prefix=1), [target], prefix)
    assert set(losses) == {"loss_class", "loss_bbox", "loss_giou"}
    assert losses["loss_bbox"] > 0  # row 0 is pulled to instance 1: a real error, not matched away


def test_carried_queries_follow_instance_ids_and_drop_vanished_ones():
    carried = CarriedQueries(torch.zeros(2, 2, 4), torch.zeros(2, 2, 4),
                             [torch.tensor([100, 101]), torch.tensor([7])])
    later = [boxes_target([[0.5, 0.5, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]], [0, 0]),
             boxes_target([[0.5, 0.5, 0.1, 0.1]], [0])]
    later[0]["instance_ids"] = torch.tensor([101, 100])
    later[1]["instance_ids"] = torch.tensor([8])  # instance 7 left the frame
    (rows0, targets0), (rows1, targets1) = track_assignment(carried, later)
    assert rows0.tolist() == [0, 1] and targets0.tolist() == [1, 0]
    assert rows1.numel() == 0 and targets1.numel() == 0


def test_hybrid_matching_needs_both_settings(tmp_path):
    root = tmp_path / "data"
    write_tiny_coco(root, 2)
    with pytest.raises(ConfigError, match="one_to_many"):
        tiny_config(root, tmp_path / "run", "loss.hybrid.repeats=2")
    with pytest.raises(ConfigError, match="one_to_many"):
        tiny_config(root, tmp_path / "run", "queries.one_to_many=5")
    with pytest.raises(ConfigError, match="YouTube-VIS"):
        engine.train(tiny_config(root, tmp_path / "run", "queries.temporal=true", "batch_size=1"), device="cpu",
                     show_progress=False)


def test_training_with_all_extra_queries_on_video_pairs(tmp_path, single_thread):  # noqa: F811
    paths = write_split(tmp_path, "train", 0, 2, 0, make_config("easy", video_size=(64, 80), frames=(5, 5),
                                                                use_photos=False), progress=False)
    config = tiny_config(tmp_path / "train", tmp_path / "run", "optim.max_steps=3", "queries.temporal=true",
                         "queries.denoising_groups=2", "queries.one_to_many=6", "loss.hybrid.repeats=2",
                         f"data.train_annotations={paths.videos}", f"data.train_images={tmp_path / 'train' / 'videos'}")
    result = engine.train(config, device="cpu", show_progress=False)
    assert result.final_step == 3 and result.skipped_steps == 0
    assert all(np.isfinite(step.loss) and step.loss > 0 for step in result.history)


# ----------------------------------------------------------------------------- overfit

def mask_ap(checkpoint: Path, root: Path, size: int) -> COCOeval:
    """pycocotools segm evaluation of a checkpoint on the images of root/instances.json."""
    contents = engine.load_checkpoint(checkpoint)
    section = contents["config"]["model"]
    model = build_model(ModelSection(section["preset"], section["overrides"]).build_config())
    model.load_state_dict(contents["model"])
    model.eval()
    dataset = CocoDataset(root / "instances.json", root)
    text = engine.encode_prompts(dataset.category_names, 16)
    category_ids = sorted(c["id"] for c in json.loads((root / "instances.json").read_text())["categories"])
    results = []
    for record in dataset.images:
        frame = cv2.cvtColor(cv2.imread(str(root / record["file_name"])), cv2.COLOR_BGR2RGB)
        image, box = preprocess(frame, size)
        with torch.no_grad():
            out = model(torch.from_numpy(image), text.tokens, text.mask, text.pooled)
        for instance in to_instances(out["pred_logits"][0].numpy(), out["pred_boxes"][0].numpy(),
                                     out["pred_masks"][0].numpy(), box, threshold=0.0):
            rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": record["id"], "category_id": category_ids[instance.label],
                            "score": instance.score, "segmentation": rle})
    ground_truth = COCO(str(root / "instances.json"))
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def test_tiny_model_overfits_a_few_images_to_mask_ap50_above_0_9(tmp_path, single_thread):  # noqa: F811
    root = tmp_path / "data"
    write_tiny_coco(root, 4, seed=5)  # 64 x 80 images, 8 instances in all
    # no augmentation; short side 77 = the scale of a 96 px letterbox, where the model is evaluated
    config = tiny_config(root, tmp_path / "run", "optim.max_steps=220", "optim.milestones=[180]",
                         "batch_size=4", "data.train_sizes=[77]", "data.flip_probability=0",
                         "data.crop_probability=0", "data.color_jitter=0", "data.hue_jitter=0",
                         "checkpoint_interval=1000", "eval_interval=220", "eval_ap_images=4", "data.val_size=96",
                         f"data.val_annotations={root / 'instances.json'}", f"data.val_images={root}")
    result = engine.train(config, device="cpu", show_progress=False)
    losses = [step.loss for step in result.history]
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    evaluation = mask_ap(result.checkpoint, root, size=96)
    ap, ap50 = evaluation.stats[0], evaluation.stats[1]
    assert ap50 >= 0.9, f"mask AP50 {ap50:.3f} after overfitting 4 images"
    assert ap >= 0.5, f"mask AP {ap:.3f}"
    # the periodic evaluation inside training (no pruning, same 96 px letterbox) agrees
    rows = (tmp_path / "run" / "val_metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert int(last[0]) == 220 and float(last[header.index("mask_AP50")]) >= 0.9
