"""Box utilities shared by the model, the matcher and the criterion.

Conventions:
- ``cxcywh``: (center x, center y, width, height); the model predicts these normalised to [0, 1]
  by the padded input size.
- ``xyxy``: (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1, in any consistent unit.

Everything here is tensor-only (no Python loops over boxes) so that it traces and exports to ONNX.
torchvision is not a dependency, so the few ops we need are written out.
"""

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    center_x, center_y, width, height = boxes.unbind(-1)
    half_width, half_height = 0.5 * width, 0.5 * height
    return torch.stack(
        [
            center_x - half_width,
            center_y - half_height,
            center_x + half_width,
            center_y + half_height,
        ],
        dim=-1,
    )


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...,) area."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes.

    Returns ``(iou, union)``, both (N, M). Boxes of zero area give IoU 0 against
    everything that does not overlap them (the union is clamped away from 0).
    """
    area_a = box_area(boxes_a)
    area_b = box_area(boxes_b)
    # (N, 1, 2) against (M, 2) broadcasts to the (N, M, 2) intersection corners
    top_left = torch.max(boxes_a[:, None, :2], boxes_b[:, :2])
    bottom_right = torch.min(boxes_a[:, None, 2:], boxes_b[:, 2:])
    width_height = (bottom_right - top_left).clamp(min=0)
    intersection = width_height[..., 0] * width_height[..., 1]
    union = area_a[:, None] + area_b - intersection
    iou = intersection / union.clamp(min=torch.finfo(union.dtype).tiny)
    return iou, union


def _check_not_degenerate(boxes: Tensor, name: str) -> None:
    # Skipped while tracing/exporting: a data-dependent raise cannot be put in a graph.
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or boxes.numel() == 0:
        return
    if not bool((boxes[:, 2:] >= boxes[:, :2]).all()):
        raise ValueError(
            f"generalized_box_iou got degenerate boxes in '{name}' (x2 < x1 or y2 < y1); "
            "boxes must be xyxy: convert cxcywh with box_cxcywh_to_xyxy and make sure "
            "widths/heights are non-negative (e.g. sigmoid the box head output)"
        )


def generalized_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Pairwise generalized IoU (https://giou.stanford.edu/) of (N, 4) and (M, 4) xyxy boxes.

    Returns (N, M) values in [-1, 1]; disjoint boxes give negative values.
    Raises ValueError for degenerate boxes (x2 < x1 or y2 < y1), which would give inf/nan.
    """
    _check_not_degenerate(boxes_a, "boxes_a")
    _check_not_degenerate(boxes_b, "boxes_b")
    iou, union = box_iou(boxes_a, boxes_b)
    # smallest enclosing box, (N, M, 2) corners
    top_left = torch.min(boxes_a[:, None, :2], boxes_b[:, :2])
    bottom_right = torch.max(boxes_a[:, None, 2:], boxes_b[:, 2:])
    width_height = (bottom_right - top_left).clamp(min=0)
    enclosing_area = width_height[..., 0] * width_height[..., 1]
    tiny = torch.finfo(enclosing_area.dtype).tiny
    return iou - (enclosing_area - union) / enclosing_area.clamp(min=tiny)


def elementwise_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of paired xyxy boxes: (..., 4) and (..., 4) of the same shape -> (...,)."""
    top_left = torch.max(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = torch.min(boxes_a[..., 2:], boxes_b[..., 2:])
    width_height = (bottom_right - top_left).clamp(min=0)
    intersection = width_height[..., 0] * width_height[..., 1]
    union = box_area(boxes_a) + box_area(boxes_b) - intersection
    return intersection / union.clamp(min=torch.finfo(union.dtype).tiny)


def elementwise_generalized_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Generalized IoU of paired xyxy boxes: (..., 4) and (..., 4) -> (...,).

    The paired version is what the box loss needs: O(N) instead of the (N, N) matrix.
    """
    top_left = torch.max(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = torch.min(boxes_a[..., 2:], boxes_b[..., 2:])
    width_height = (bottom_right - top_left).clamp(min=0)
    intersection = width_height[..., 0] * width_height[..., 1]
    union = box_area(boxes_a) + box_area(boxes_b) - intersection
    tiny = torch.finfo(union.dtype).tiny
    iou = intersection / union.clamp(min=tiny)
    enclosing_top_left = torch.min(boxes_a[..., :2], boxes_b[..., :2])
    enclosing_bottom_right = torch.max(boxes_a[..., 2:], boxes_b[..., 2:])
    enclosing_size = (enclosing_bottom_right - enclosing_top_left).clamp(min=0)
    enclosing_area = enclosing_size[..., 0] * enclosing_size[..., 1]
    return iou - (enclosing_area - union) / enclosing_area.clamp(min=tiny)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes around (N, H, W) masks, in pixel units of the mask grid.

    Convention (as torchvision): x2/y2 are the index of the last foreground pixel, so a single
    pixel at (x, y) gives (x, y, x, y). Empty masks give (0, 0, 0, 0).
    """
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), device=masks.device, dtype=torch.float32)
    foreground = masks.bool()
    height, width = foreground.shape[-2:]
    ys = torch.arange(height, device=masks.device, dtype=torch.float32)
    xs = torch.arange(width, device=masks.device, dtype=torch.float32)
    # (N, H, W) -> (N, W) / (N, H): which columns / rows contain any foreground
    column_has_pixels = foreground.any(dim=1)
    row_has_pixels = foreground.any(dim=2)
    # background coordinates become -inf/+inf so they never win the max/min
    x_max = torch.where(column_has_pixels, xs, float("-inf")).amax(dim=1)
    x_min = torch.where(column_has_pixels, xs, float("inf")).amin(dim=1)
    y_max = torch.where(row_has_pixels, ys, float("-inf")).amax(dim=1)
    y_min = torch.where(row_has_pixels, ys, float("inf")).amin(dim=1)
    boxes = torch.stack([x_min, y_min, x_max, y_max], dim=1)
    is_empty = ~column_has_pixels.any(dim=1)
    return torch.where(is_empty[:, None], torch.zeros_like(boxes), boxes)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both terms clamped by eps (Deformable-DETR)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
