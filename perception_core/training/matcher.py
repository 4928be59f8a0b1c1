"""Hungarian matching between decoder queries and ground-truth instances (DETR / MaskDINO).

For each image, a cost matrix (queries x targets) is built from
- a focal-style classification cost on the sigmoid probability of the target's prompt,
- the L1 distance and the negative generalized IoU of the normalised cxcywh boxes,
- the sigmoid cross-entropy and the dice loss of the masks, evaluated on random points
  (only when the outputs contain ``pred_masks`` and the targets ``masks``),
and solved with scipy's ``linear_sum_assignment`` on the CPU.
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from perception_core.model.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from perception_core.training.point_sampling import point_sample


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Deformable-DETR's classification cost.

    Args:
        logits: (N, P) raw prompt logits of N queries, or (B, N, P).
        labels: (M,) prompt index of each target, in [0, P), or (B, M).

    Returns:
        (N, M) or (B, N, M): focal loss of calling the query positive minus that of calling it
        negative.
    """
    probabilities = logits.sigmoid()
    negative_cost = (1 - alpha) * probabilities.pow(gamma) * -(1 - probabilities + 1e-8).log()
    positive_cost = alpha * (1 - probabilities).pow(gamma) * -(probabilities + 1e-8).log()
    difference = positive_cost - negative_cost
    if labels.dim() == 1:
        return difference[:, labels]
    return torch.gather(difference, 2, labels[:, None, :].expand(-1, difference.shape[1], -1))


def pairwise_sigmoid_ce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of every (prediction, target) pair.

    Args:
        logits: (..., N, K) mask logits at K points.
        targets: (..., M, K) mask values in [0, 1] at the same points.

    Returns:
        (..., N, M) cost.
    """
    num_points = logits.shape[-1]
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): both terms are matmuls over points
    positive = nn.functional.softplus(-logits)
    negative = nn.functional.softplus(logits)
    cost = positive @ targets.transpose(-1, -2) + negative @ (1 - targets).transpose(-1, -2)
    return cost / num_points


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of every (prediction, target) pair: (..., N, K), (..., M, K) -> (..., N, M)."""
    probabilities = logits.sigmoid()
    numerator = 2 * probabilities @ targets.transpose(-1, -2)
    denominator = probabilities.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets, per image.

    Args:
        cost_class: weight of the focal classification cost.
        cost_bbox: weight of the L1 cost on normalised cxcywh boxes.
        cost_giou: weight of the negative generalized-IoU cost.
        cost_mask: weight of the point-sampled sigmoid cross-entropy mask cost.
        cost_dice: weight of the point-sampled dice mask cost.
        num_points: points sampled uniformly at random per image for the mask costs.
        focal_alpha, focal_gamma: parameters of the classification cost.
    """

    def __init__(
        self,
        cost_class: float = 4.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Match the queries of each image to its targets.

        Args:
            outputs: ``pred_logits`` (B, N, P) raw logits, ``pred_boxes`` (B, N, 4) cxcywh in
                [0, 1], optionally ``pred_masks`` (B, N, Hm, Wm) mask logits.
            targets: B dicts with ``labels`` (n,) int64 prompt indices, ``boxes`` (n, 4) cxcywh in
                [0, 1] and optionally ``masks`` (n, H, W) at any resolution covering the same
                (padded) image extent as ``pred_masks``.

        Returns:
            B pairs ``(query_indices, target_indices)`` of int64 CPU tensors of equal length
            min(N, n); empty when the image has no targets or no queries.

        The costs of the whole batch are one (B, N, max n) tensor built by batched operations
        (targets padded), copied to the CPU once: a per-image loop would launch its few hundred
        small kernels, and wait for the device, once per image and prediction set.
        """
        batch_size, num_queries = outputs["pred_logits"].shape[:2]
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
        sizes = [int(target["labels"].numel()) for target in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if num_queries == 0 or max(sizes, default=0) == 0:
            return [(empty, empty.clone()) for _ in targets]
        costs = self._cost_matrices(outputs, targets, sizes).cpu().numpy()
        indices = []
        for image_index, (cost, size) in enumerate(zip(costs, sizes)):
            if size == 0:
                indices.append((empty, empty.clone()))
                continue
            cost = cost[:, :size]
            if not np.isfinite(cost).all():
                raise ValueError(
                    f"matching cost of image {image_index} has nan/inf entries; check the model "
                    "outputs for non-finite values and the target boxes for degenerate sizes"
                )
            query_indices, target_indices = linear_sum_assignment(cost)
            indices.append(
                (
                    torch.as_tensor(query_indices, dtype=torch.int64),
                    torch.as_tensor(target_indices, dtype=torch.int64),
                )
            )
        return indices

    def _cost_matrices(self, outputs: dict, targets: list[dict], sizes: list[int]) -> Tensor:
        """(B, N, max n) weighted matching costs in float32; columns past an image's n are padding."""
        logits = outputs["pred_logits"].float()
        boxes = outputs["pred_boxes"].float()
        device, width = logits.device, max(sizes)
        # padding targets: label 0 and the whole image as box, finite costs that are sliced off
        labels = torch.zeros(len(targets), width, dtype=torch.int64, device=device)
        target_boxes = boxes.new_tensor([0.5, 0.5, 1.0, 1.0]).repeat(len(targets), width, 1)
        for image_index, (target, size) in enumerate(zip(targets, sizes)):
            if size:
                labels[image_index, :size] = target["labels"].to(device)
                target_boxes[image_index, :size] = target["boxes"].to(boxes)
        cost = self.cost_class * focal_class_cost(logits, labels, self.focal_alpha, self.focal_gamma)
        cost = cost + self.cost_bbox * torch.cdist(boxes, target_boxes, p=1)
        cost = cost - self.cost_giou * elementwise_generalized_box_iou(
            box_cxcywh_to_xyxy(boxes)[:, :, None], box_cxcywh_to_xyxy(target_boxes)[:, None]
        )
        if "pred_masks" in outputs and all("masks" in target for target in targets):
            cost = cost + self._mask_costs(outputs["pred_masks"], targets, sizes)
        return cost

    def _mask_costs(self, pred_masks: Tensor, targets: list[dict], sizes: list[int]) -> Tensor:
        """(B, N, Hm, Wm) logits and B (n, H, W) masks -> (B, N, max n) weighted mask costs.

        Predictions and targets are sampled at the same normalised points (one random set per
        image, shared by its queries and targets), so their resolutions may differ.
        """
        batch_size = pred_masks.shape[0]
        point_coords = torch.rand(batch_size, self.num_points, 2, device=pred_masks.device)
        pred_points = point_sample(pred_masks.float(), point_coords)  # (B, N, K)
        target_points = pred_points.new_zeros(batch_size, max(sizes), self.num_points)
        for image_index, (target, size) in enumerate(zip(targets, sizes)):
            if size:
                masks = target["masks"][None].to(device=pred_masks.device, dtype=torch.float32)
                target_points[image_index, :size] = point_sample(masks, point_coords[image_index : image_index + 1])[0]
        return self.cost_mask * pairwise_sigmoid_ce_cost(
            pred_points, target_points
        ) + self.cost_dice * pairwise_dice_cost(pred_points, target_points)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, "
            f"cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
