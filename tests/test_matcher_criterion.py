import math

import pytest
import torch
import torch.nn.functional as F

from perception_core.training.criterion import HybridMatching, LossConfig, SetCriterion
from perception_core.training.matcher import HungarianMatcher

NUM_PROMPTS = 3
TARGET_SIZE = 32  # padded input resolution of the target masks
MASK_SIZE = 8  # stride-4 prediction masks


def rectangle_mask(x1: int, y1: int, x2: int, y2: int, size: int = TARGET_SIZE) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def make_target(rectangles: list[tuple[int, int, int, int]], labels: list[int]) -> dict:
    """Instances from pixel rectangles (x1, y1, x2, y2) on a TARGET_SIZE grid; multiples of 4."""
    xyxy = torch.tensor(rectangles, dtype=torch.float32) / TARGET_SIZE
    boxes = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
    masks = torch.stack([rectangle_mask(*r) for r in rectangles])
    return {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": boxes, "masks": masks}


def empty_target() -> dict:
    return {
        "labels": torch.zeros(0, dtype=torch.int64),
        "boxes": torch.zeros(0, 4),
        "masks": torch.zeros(0, TARGET_SIZE, TARGET_SIZE, dtype=torch.bool),
    }


def perfect_outputs(targets: list[dict], num_queries: int, order: list[list[int]]) -> dict:
    """Outputs where query order[b][k] is an exact copy of target k of image b; others are junk."""
    batch = len(targets)
    logits = torch.full((batch, num_queries, NUM_PROMPTS), -8.0)
    boxes = torch.tensor([0.9, 0.9, 0.05, 0.05]).repeat(batch, num_queries, 1)
    masks = torch.full((batch, num_queries, MASK_SIZE, MASK_SIZE), -20.0)
    for b, target in enumerate(targets):
        for k, query in enumerate(order[b]):
            logits[b, query, target["labels"][k]] = 8.0
            boxes[b, query] = target["boxes"][k]
            # (H, W) -> (1, 1, H, W) -> stride-4 average -> +-20 logits
            small = F.avg_pool2d(target["masks"][k][None, None].float(), TARGET_SIZE // MASK_SIZE)
            masks[b, query] = (small[0, 0] * 40 - 20)
    return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks}


@pytest.fixture
def two_images():
    torch.manual_seed(0)
    targets = [
        make_target([(0, 0, 16, 16), (16, 8, 32, 24), (4, 20, 12, 32)], [0, 2, 1]),
        make_target([(8, 8, 24, 28)], [1]),
    ]
    return targets


def small_config(**overrides) -> LossConfig:
    defaults = dict(num_points=256, aux=False, enc=False)
    defaults.update(overrides)
    return LossConfig(**defaults)


def as_dict(indices):
    return [dict(zip(q.tolist(), t.tolist())) for q, t in indices]


# ----------------------------------------------------------------------------- matcher


@pytest.mark.parametrize("with_masks", [False, True])
def test_matcher_recovers_permutation(two_images, with_masks):
    order = [[4, 0, 2], [3]]
    outputs = perfect_outputs(two_images, num_queries=5, order=order)
    if not with_masks:
        del outputs["pred_masks"]
    indices = HungarianMatcher(num_points=256)(outputs, two_images)
    assert as_dict(indices) == [{4: 0, 0: 1, 2: 2}, {3: 0}]
    for query_index, target_index in indices:
        assert query_index.dtype == torch.int64 and target_index.dtype == torch.int64


def test_matcher_uses_mask_cost_when_boxes_and_classes_are_uninformative(two_images):
    order = [[1, 3, 0], [2]]
    outputs = perfect_outputs(two_images, num_queries=4, order=order)
    outputs["pred_logits"].zero_()
    outputs["pred_boxes"][:] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    matcher = HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0, num_points=512)
    assert as_dict(matcher(outputs, two_images)) == [{1: 0, 3: 1, 0: 2}, {2: 0}]


def test_batched_matching_equals_matching_each_image_alone(monkeypatch):
    """The batch's costs are built at once with padded targets; at the same sampled points, each
    image's costs and assignment equal those of matching that image on its own (images with 0, 1
    and 4 targets; random outputs, so every cost term matters)."""
    generator = torch.Generator().manual_seed(3)
    targets = [make_target([(0, 0, 16, 16), (16, 8, 32, 24), (4, 20, 12, 32), (8, 4, 28, 12)], [0, 2, 1, 2]),
               empty_target(), make_target([(8, 8, 24, 28)], [1])]
    outputs = {"pred_logits": torch.randn(3, 7, NUM_PROMPTS, generator=generator),
               "pred_boxes": torch.rand(3, 7, 4, generator=generator) * 0.5 + 0.25,
               "pred_masks": torch.randn(3, 7, MASK_SIZE, MASK_SIZE, generator=generator)}
    points = torch.rand(1, 64, 2, generator=generator)
    monkeypatch.setattr(torch, "rand", lambda batch, *shape, **kwargs: points.expand(batch, -1, -1).clone())
    matcher = HungarianMatcher(num_points=64)
    sizes = [len(target["labels"]) for target in targets]
    batched = matcher._cost_matrices(outputs, targets, sizes)
    together = matcher(outputs, targets)
    for image, target in enumerate(targets):
        one = {key: value[image : image + 1] for key, value in outputs.items()}
        if sizes[image]:
            alone = matcher._cost_matrices(one, [target], sizes[image : image + 1])[0]
            torch.testing.assert_close(batched[image, :, : sizes[image]], alone)
        query, target_index = matcher(one, [target])[0]
        assert torch.equal(together[image][0], query) and torch.equal(together[image][1], target_index)
    assert [len(query) for query, _ in together] == [4, 0, 1]


def test_matcher_empty_targets_and_empty_predictions(two_images):
    outputs = perfect_outputs([two_images[0], empty_target()], num_queries=4, order=[[0, 1, 2], []])
    indices = HungarianMatcher(num_points=64)(outputs, [two_images[0], empty_target()])
    assert len(indices[0][0]) == 3
    assert indices[1][0].numel() == 0 and indices[1][1].numel() == 0
    no_queries = {key: value[:, :0] for key, value in outputs.items()}
    indices = HungarianMatcher(num_points=64)(no_queries, [two_images[0], empty_target()])
    assert all(q.numel() == 0 and t.numel() == 0 for q, t in indices)


# ----------------------------------------------------------------------------- classification

ALPHA, GAMMA = 0.25, 2.0


def one_query_case(logits: list[float], classification: str = "calibration"):
    """1 query, 2 prompts, GT prompt 1; predicted box has IoU 0.5 with the GT box."""
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}
    outputs = {
        "pred_logits": torch.tensor([[logits]], requires_grad=True),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.4]]]),  # area 0.08 inside 0.16 -> IoU 0.5
    }
    criterion = SetCriterion(HungarianMatcher(), small_config(classification=classification))
    return criterion, outputs, [target]


def test_calibration_loss_matches_hand_computation():
    criterion, outputs, targets = one_query_case([0.3, -0.2])
    loss = criterion(outputs, targets)["loss_class"]
    p0, p1 = torch.sigmoid(torch.tensor([0.3, -0.2])).tolist()
    iou = 0.5
    negative = (1 - ALPHA) * p0**GAMMA * -math.log(1 - p0)
    positive = ALPHA * abs(iou - p1) ** GAMMA * -(iou * math.log(p1) + (1 - iou) * math.log(1 - p1))
    assert loss.item() == pytest.approx(negative + positive, rel=1e-5)


def test_calibration_target_is_iou_not_one():
    iou_logit = 0.0  # sigmoid(0) = 0.5 = IoU
    gradients = {}
    for name, logit in [("below", -1.0), ("at", iou_logit), ("above", 1.0), ("near_one", 4.0)]:
        criterion, outputs, targets = one_query_case([-10.0, logit])
        loss = criterion(outputs, targets)["loss_class"]
        loss.backward()
        gradients[name] = (loss.item(), outputs["pred_logits"].grad[0, 0, 1].item())
    assert gradients["below"][1] < 0  # descent raises p toward the IoU
    assert gradients["above"][1] > 0  # descent lowers p toward the IoU
    assert abs(gradients["at"][1]) < 1e-6 and gradients["at"][0] < 1e-4
    assert gradients["near_one"][0] > gradients["above"][0] > gradients["at"][0]


def test_focal_switch_gives_standard_focal_loss():
    logits = torch.tensor([0.3, -0.2])
    criterion, outputs, targets = one_query_case(logits.tolist(), classification="focal")
    loss = criterion(outputs, targets)["loss_class"]
    one_hot = torch.tensor([0.0, 1.0])
    # RetinaNet / torchvision sigmoid_focal_loss
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    p_t = p * one_hot + (1 - p) * (1 - one_hot)
    alpha_t = ALPHA * one_hot + (1 - ALPHA) * (1 - one_hot)
    expected = (alpha_t * ce * (1 - p_t) ** GAMMA).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_invalid_classification_name_is_rejected():
    with pytest.raises(ValueError, match="classification"):
        LossConfig(classification="softmax")


# ----------------------------------------------------------------------------- boxes and masks


def test_perfect_predictions_give_near_zero_box_and_mask_losses(two_images):
    config = small_config(importance_sample_ratio=0.0, num_points=1024)
    criterion = SetCriterion(HungarianMatcher(num_points=256), config)
    perfect = perfect_outputs(two_images, num_queries=4, order=[[0, 1, 2], [3]])
    worse = {key: value.clone() for key, value in perfect.items()}
    worse["pred_boxes"][..., :2] += 0.1
    worse["pred_masks"] = -worse["pred_masks"]
    good_losses = criterion(perfect, two_images)
    bad_losses = criterion(worse, two_images)
    assert good_losses["loss_bbox"].item() < 1e-6 and good_losses["loss_giou"].item() < 1e-6
    # Not exactly 0 for masks: bilinear sampling of a stride-4 prediction and of a full-resolution
    # target disagree in the one-pixel band along each boundary (measured ~0.04 for both).
    assert good_losses["loss_mask"].item() < 0.08 and good_losses["loss_dice"].item() < 0.06
    for name in ("loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        assert bad_losses[name].item() > 5 * good_losses[name].item() + 0.05, name


def test_aux_enc_suffixes_and_weighted_total(two_images):
    config = small_config(aux=True, enc=True, num_points=64)
    criterion = SetCriterion(HungarianMatcher(num_points=64), config)
    outputs = perfect_outputs(two_images, num_queries=4, order=[[0, 1, 2], [3]])
    outputs["aux_outputs"] = [{k: v + 0.1 * i for k, v in outputs.items()} for i in range(2)]
    outputs["enc_outputs"] = {key: outputs[key] for key in ("pred_logits", "pred_boxes")}
    losses = criterion(outputs, two_images)
    base = {"loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"}
    expected = base | {f"{n}_{i}" for n in base for i in (0, 1)}
    expected |= {"loss_class_enc", "loss_bbox_enc", "loss_giou_enc"}  # enc has no masks here
    assert set(losses) == expected
    weights = {
        "loss_class": 4.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 5.0, "loss_dice": 5.0
    }
    manual = sum(weights[next(b for b in base if n.startswith(b))] * v for n, v in losses.items())
    torch.testing.assert_close(criterion.weighted_total(losses), manual)
    with pytest.raises(KeyError):
        criterion.weighted_total({"loss_unknown": torch.tensor(1.0)})


def test_one_to_many_group_matches_every_target_repeatedly(two_images):
    config = small_config(hybrid=HybridMatching(repeats=2), num_points=64)
    criterion = SetCriterion(HungarianMatcher(num_points=64), config)
    outputs = perfect_outputs(two_images, num_queries=4, order=[[0, 1, 2], [3]])
    # 8 one-to-many queries: two exact copies of each target
    one_to_many = perfect_outputs(two_images, num_queries=8, order=[[0, 1, 2], [3]])
    duplicate = perfect_outputs(two_images, num_queries=8, order=[[4, 5, 6], [7]])
    for key in one_to_many:
        one_to_many[key][:, 4:] = duplicate[key][:, 4:]
    outputs["one_to_many"] = one_to_many
    losses = criterion(outputs, two_images)
    names = ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
    assert {f"{name}_o2m" for name in names} <= set(losses)
    assert losses["loss_bbox_o2m"].item() < 1e-6  # every repeated target found an exact copy


# ----------------------------------------------------------------------------- edge cases


def test_empty_targets_give_finite_losses_and_gradients():
    criterion = SetCriterion(HungarianMatcher(num_points=64), small_config(aux=True, num_points=64))
    logits = torch.zeros(2, 4, NUM_PROMPTS, requires_grad=True)
    boxes = torch.full((2, 4, 4), 0.5, requires_grad=True)
    masks = torch.zeros(2, 4, MASK_SIZE, MASK_SIZE, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks}
    outputs["aux_outputs"] = [dict(outputs)]
    losses = criterion(outputs, [empty_target(), empty_target()])
    assert all(torch.isfinite(value) for value in losses.values())
    for name in ("loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        assert losses[name].item() == 0.0
    criterion.weighted_total(losses).backward()
    assert (logits.grad > 0).all()  # every probability is pushed down
    assert boxes.grad is not None and masks.grad is not None


def test_mixed_mask_and_box_only_targets_raise(two_images):
    box_only = {key: value for key, value in two_images[1].items() if key != "masks"}
    outputs = perfect_outputs(two_images, num_queries=4, order=[[0, 1, 2], [3]])
    criterion = SetCriterion(HungarianMatcher(num_points=64), small_config(num_points=64))
    with pytest.raises(ValueError, match="masks"):
        criterion(outputs, [two_images[0], box_only])


def test_num_boxes_is_averaged_over_ranks(monkeypatch, two_images):
    import torch.distributed as dist

    def fake_all_reduce(tensor):  # the other rank holds 8 boxes
        tensor += 8

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    assert SetCriterion._num_boxes(two_images, torch.device("cpu")) == 6.0  # (4 + 8) / 2
    monkeypatch.setattr(dist, "all_reduce", lambda tensor: None)
    assert SetCriterion._num_boxes([empty_target()], torch.device("cpu")) == 1.0  # clamped
