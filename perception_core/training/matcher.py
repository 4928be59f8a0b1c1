"""Hungarian matching between decoder queries and ground-truth instances (DETR / MaskDINO).

For each image, a cost matrix (queries x targets) is built from
- a focal-style classification cost on the sigmoid probability of the target's prompt,
- the L1 distance and the negative generalized IoU of the normalised cxcywh boxes,
- the sigmoid cross-entropy and the dice loss of the masks, evaluated on random points
  (only when the outputs contain ``pred_masks`` and the targets ``masks``),
and solved with scipy's ``linear_sum_assignment`` on the CPU.
"""

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from perception_core.model.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from perception_core.training.point_sampling import point_sample


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Deformable-DETR's classification cost.

    Args:
        logits: (N, P) raw prompt logits of N queries.
        labels: (M,) prompt index of each target, in [0, P).

    Returns:
        (N, M): focal loss of calling the query positive minus that of calling it negative.
    """
    probabilities = logits.sigmoid()
    negative_cost = (1 - alpha) * probabilities.pow(gamma) * -(1 - probabilities + 1e-8).log()
    positive_cost = alpha * (1 - probabilities).pow(gamma) * -(probabilities + 1e-8).log()
    return positive_cost[:, labels] - negative_cost[:, labels]


def pairwise_sigmoid_ce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of every (prediction, target) pair.

    Args:
        logits: (N, K) mask logits at K points.
        targets: (M, K) mask values in [0, 1] at the same points.

    Returns:
        (N, M) cost.
    """
    num_points = logits.shape[1]
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): both terms are matmuls over points
    positive = nn.functional.softplus(-logits)
    negative = nn.functional.softplus(logits)
    cost = positive @ targets.T + negative @ (1 - targets).T
    return cost / num_points


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of every (prediction, target) pair: (N, K), (M, K) -> (N, M)."""
    probabilities = logits.sigmoid()
    numerator = 2 * probabilities @ targets.T
    denominator = probabilities.sum(-1)[:, None] + targets.sum(-1)[None, :]
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
        """
        batch_size = outputs["pred_logits"].shape[0]
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
        indices = []
        for image_index, target in enumerate(targets):
            cost = self._cost_matrix(outputs, image_index, target)
            if cost.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            if not torch.isfinite(cost).all():
                raise ValueError(
                    f"matching cost of image {image_index} has nan/inf entries; check the model "
                    "outputs for non-finite values and the target boxes for degenerate sizes"
                )
            query_indices, target_indices = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (
                    torch.as_tensor(query_indices, dtype=torch.int64),
                    torch.as_tensor(target_indices, dtype=torch.int64),
                )
            )
        return indices

    def _cost_matrix(self, outputs: dict, image_index: int, target: dict) -> Tensor:
        """(N, n) weighted matching cost of one image, computed in float32."""
        logits = outputs["pred_logits"][image_index].float()
        boxes = outputs["pred_boxes"][image_index].float()
        target_labels = target["labels"]
        target_boxes = target["boxes"].to(boxes)
        if logits.shape[0] == 0 or target_labels.numel() == 0:
            return logits.new_zeros((logits.shape[0], target_labels.numel()))

        cost = self.cost_class * focal_class_cost(
            logits, target_labels, self.focal_alpha, self.focal_gamma
        )
        cost = cost + self.cost_bbox * torch.cdist(boxes, target_boxes, p=1)
        cost = cost - self.cost_giou * generalized_box_iou(
            box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes)
        )
        if "pred_masks" in outputs and "masks" in target:
            cost = cost + self._mask_cost(outputs["pred_masks"][image_index], target["masks"])
        return cost

    def _mask_cost(self, pred_masks: Tensor, target_masks: Tensor) -> Tensor:
        """(N, Hm, Wm) logits and (n, H, W) masks -> (N, n) weighted mask cost.

        Predictions and targets are sampled at the same normalised points, so their
        resolutions may differ.
        """
        # One set of points per image, shared by all queries and targets: (1, K, 2)
        point_coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
        # (N, Hm, Wm) -> (1, N, Hm, Wm): sample all queries as channels of one map -> (N, K)
        pred_points = point_sample(pred_masks[None].float(), point_coords)[0]
        target_points = point_sample(
            target_masks[None].to(device=pred_masks.device, dtype=torch.float32), point_coords
        )[0]
        return self.cost_mask * pairwise_sigmoid_ce_cost(
            pred_points, target_points
        ) + self.cost_dice * pairwise_dice_cost(pred_points, target_points)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, "
            f"cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
