import pytest
import torch

from perception_core.model.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    inverse_sigmoid,
    masks_to_boxes,
)


def test_conversions_hand_values_and_round_trip():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.3, 0.2, 0.2]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.2, 0.2, 0.4]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    random_xyxy = box_cxcywh_to_xyxy(torch.rand(2, 5, 4))
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(random_xyxy)), random_xyxy)


def test_area_and_pairwise_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    torch.testing.assert_close(box_area(b), torch.tensor([4.0, 4.0, 1.0]))
    iou, union = box_iou(a, b)
    # overlap 1, union 4 + 4 - 1 = 7
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 4.0, 5.0]]))


def test_generalized_iou_hand_values_and_disjoint_negative():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0]])
    giou = generalized_box_iou(a, b)
    # disjoint: iou 0, enclosing 3, union 2 -> -(3 - 2) / 3; half overlap: 1/3 - 0
    torch.testing.assert_close(giou, torch.tensor([[-1 / 3, 1.0, 1 / 3]]))
    assert giou[0, 0] < 0
    torch.testing.assert_close(elementwise_generalized_box_iou(a.expand(3, 4), b), giou[0])


def test_generalized_iou_rejects_degenerate_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[1.0, 0.0, 0.5, 1.0]])
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(good, bad)


def test_elementwise_iou_matches_diagonal_of_pairwise():
    a = box_cxcywh_to_xyxy(torch.rand(6, 4))
    b = box_cxcywh_to_xyxy(torch.rand(6, 4))
    torch.testing.assert_close(elementwise_box_iou(a, b), box_iou(a, b)[0].diagonal())


def test_masks_to_boxes_including_empty_mask():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1..2, columns 2..4
    masks[1, 4, 0] = True  # single pixel at x=0, y=4
    boxes = masks_to_boxes(masks)
    torch.testing.assert_close(
        boxes, torch.tensor([[2.0, 1.0, 4.0, 2.0], [0.0, 4.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    )
    assert masks_to_boxes(torch.zeros(0, 5, 6, dtype=torch.bool)).shape == (0, 4)


def test_inverse_sigmoid_inverts_and_stays_finite():
    x = torch.tensor([-3.0, 0.0, 2.5])
    torch.testing.assert_close(inverse_sigmoid(torch.sigmoid(x)), x, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()
