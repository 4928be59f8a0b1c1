"""Set-prediction losses for MOBIUS (DETR / Deformable-DETR / MaskDINO family).

``SetCriterion.forward`` returns *unweighted* losses keyed by name; ``weighted_total`` is the
only place where the loss weights of ``LossConfig`` are applied.

Loss names, each also repeated with a suffix for the other prediction sets:
    loss_class              classification (calibration, Eq. 4 of the paper, or focal)
    loss_bbox, loss_giou    L1 and 1 - GIoU of matched boxes
    loss_mask, loss_dice    point-sampled BCE and dice of matched masks
Suffixes: none = last decoder layer, ``_{i}`` = earlier decoder layer i (``aux_outputs[i]``),
``_enc`` = encoder proposals (``enc_outputs``), ``_o2m`` / ``_o2m_{i}`` = one-to-many query
group (``one_to_many``, see ``HybridMatching``). Every prediction set gets its own matching.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from perception_core.model.box_ops import (
    box_cxcywh_to_xyxy,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
)
from perception_core.training.matcher import HungarianMatcher
from perception_core.training.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

LOSS_NAMES = ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
CLASSIFICATION_LOSSES = ("calibration", "focal")


@dataclass(frozen=True)
class HybridMatching:
    """One-to-many matching for an extra group of queries (H-DETR, Jia et al. 2023).

    The model returns a second query group as ``outputs["one_to_many"]`` (same keys as the main
    outputs, ``aux_outputs`` included). Its targets are each image's targets repeated ``repeats``
    times, matched with the same Hungarian matcher, so each object gets up to ``repeats``
    positive queries: more positives speed up training. The group is dropped at inference, so the
    main group stays one-to-one (no NMS). Losses are normalised by ``repeats * num_boxes`` and
    weighted like the main losses.
    """

    repeats: int = 6  # k, copies of every target for the one-to-many group (H-DETR default)

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"HybridMatching.repeats must be >= 1, got {self.repeats}")


@dataclass(frozen=True)
class LossConfig:
    class_weight: float = 4.0  # classification (calibration or focal) loss weight
    bbox_weight: float = 5.0  # L1 on normalised cxcywh boxes
    giou_weight: float = 2.0  # 1 - GIoU
    mask_weight: float = 5.0  # point-sampled sigmoid BCE on masks
    dice_weight: float = 5.0  # point-sampled dice on masks
    focal_alpha: float = 0.25  # weight of positive (matched prompt) entries; 1 - alpha for the rest
    focal_gamma: float = 2.0  # focusing exponent on |target - probability|
    num_points: int = 12544  # mask points per matched query (112 * 112 as Mask2Former)
    oversample_ratio: float = 3.0  # candidate points per kept point for importance sampling
    importance_sample_ratio: float = 0.75  # share of points taken where the mask is most uncertain
    classification: str = "calibration"  # "calibration" (paper, Eq. 4) or "focal" (ablation)
    aux: bool = True  # losses on every earlier decoder layer (aux_outputs), suffix _{i}
    enc: bool = True  # losses on the encoder proposals (enc_outputs), suffix _enc
    hybrid: HybridMatching | None = None  # one-to-many query group, suffix _o2m; None = off

    def __post_init__(self):
        if self.classification not in CLASSIFICATION_LOSSES:
            raise ValueError(
                f"LossConfig.classification must be one of {CLASSIFICATION_LOSSES}, "
                f"got '{self.classification}'"
            )
        if self.num_points <= 0:
            raise ValueError(f"LossConfig.num_points must be positive, got {self.num_points}")

    def weights(self) -> dict[str, float]:
        """Weight of each base loss name."""
        return {
            "loss_class": self.class_weight,
            "loss_bbox": self.bbox_weight,
            "loss_giou": self.giou_weight,
            "loss_mask": self.mask_weight,
            "loss_dice": self.dice_weight,
        }


def calibration_focal_loss(
    logits: Tensor, targets: Tensor, positive: Tensor, alpha: float, gamma: float
) -> Tensor:
    """Element-wise focal loss with soft targets: ``alpha_t * |t - p|^gamma * BCE(p, t)``.

    Args:
        logits: (..., P) raw logits; p = sigmoid(logits).
        targets: same shape, t in [0, 1].
        positive: same shape, bool; alpha_t = alpha where True, 1 - alpha elsewhere.

    With one-hot targets (t = positive) this is exactly the sigmoid focal loss of RetinaNet:
    |t - p| = 1 - p_t. With soft targets the loss and its gradient vanish only at p = t, so the
    probability is pulled *to* t, from above as well as from below.
    """
    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    modulation = (targets - probabilities).abs().pow(gamma)
    alpha_t = torch.where(positive, alpha, 1 - alpha)
    return alpha_t * modulation * cross_entropy


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """(M, K) logits and targets at K points -> (M,) dice loss."""
    probabilities = logits.sigmoid()
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


@dataclass
class PrefixSupervision:
    """Fixed assignments of the model's prefix queries: ``dn_rows`` denoising rows first, then
    ``track_rows`` carried track queries. Indices are per image ``(rows, target indices)`` int64
    CPU tensors; dn rows count from 0, track rows from the first track row. Prefix rows without a
    pair are supervised as "no object"."""

    dn_rows: int = 0
    dn_indices: list = None
    track_rows: int = 0
    track_indices: list = None

    @property
    def num_rows(self) -> int:
        return self.dn_rows + self.track_rows


def slice_queries(outputs: dict, start: int, stop: int | None) -> dict:
    """The prediction sets of query rows [start, stop) of every layer (the encoder and one-to-many
    sets are not per-query rows of the decoder and are left out)."""
    rows = slice(start, stop)
    def take(prediction: dict) -> dict:
        return {key: (value[:, rows] if value is not None else None) for key, value in prediction.items()
                if key in ("pred_logits", "pred_boxes", "pred_masks")}
    sliced = take(outputs)
    if "aux_outputs" in outputs:
        sliced["aux_outputs"] = [take(aux) for aux in outputs["aux_outputs"]]
    return sliced


def repeat_targets(targets: list[dict], repeats: int) -> list[dict]:
    """Every instance of every image repeated ``repeats`` times (for one-to-many matching).

    Only the per-instance keys (labels, boxes, masks) are kept; (n, ...) -> (repeats * n, ...).
    """
    repeated = []
    for target in targets:
        repeated.append(
            {
                key: value.repeat(repeats, *([1] * (value.dim() - 1)))
                for key, value in target.items()
                if key in ("labels", "boxes", "masks")
            }
        )
    return repeated


class SetCriterion(nn.Module):
    """Losses of one training step, from model outputs and per-image targets.

    Args:
        matcher: assigns queries to targets; called once per prediction set.
        config: loss weights and options.

    Output format expected (B images, N queries, P prompts):
        outputs["pred_logits"] (B, N, P) raw logits, probability = sigmoid
        outputs["pred_boxes"]  (B, N, 4) cxcywh normalised to [0, 1] by the padded input size
        outputs["pred_masks"]  (B, N, Hm, Wm) mask logits (optional)
        outputs["aux_outputs"] list of dicts with the same keys, one per earlier decoder layer
        outputs["enc_outputs"] dict with pred_logits (B, K, P), pred_boxes (B, K, 4)[, pred_masks]
        outputs["one_to_many"] dict with the same keys as outputs (used with config.hybrid)
    targets: B dicts with "labels" (n,) int64 in [0, P), "boxes" (n, 4) cxcywh in [0, 1],
        "masks" (n, H, W) bool/float covering the padded input (any resolution).
    """

    def __init__(self, matcher: HungarianMatcher, config: LossConfig | None = None):
        super().__init__()
        self.matcher = matcher
        self.config = config if config is not None else LossConfig()

    # ----------------------------------------------------------------------------- losses

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float):
        """Classification loss over all queries and prompts, summed and divided by num_boxes.

        "calibration" (MOBIUS Eq. 4, language-guided uncertainty calibration). Eq. 4 reads
            L_cal = -alpha_i (sigma_loc_i - phi_t(sigma_cls_ij))^gamma log(phi_t(sigma_cls_ij)),
            phi_t(s) = s if j == t else 1 - s,
        i.e. RetinaNet's focal loss with its one-hot target replaced by the localisation
        confidence sigma_loc_i = IoU(b_i, y_i). We implement it as an IoU-aware focal loss over
        every query i and prompt j:
            p_ij      = sigmoid(logit_ij)                  (the paper's sigma_cls_ij)
            target_ij = IoU(b_i, y_i), detached, if query i is matched and j = t, its GT prompt
                        0 otherwise (other prompts, unmatched queries)
            L_ij      = alpha_ij * |target_ij - p_ij|^gamma * BCE(p_ij, target_ij)
            alpha_ij  = alpha if (i matched and j = t) else 1 - alpha   (the paper's alpha_i)
        For target 0 this is exactly the paper's j != t term, -(1 - alpha) p^gamma log(1 - p)
        (phi_t = 1 - p, sigma_loc -> 0 since unmatched/other-prompt entries localise nothing).
        For j = t we use BCE(p, IoU) = -IoU log p - (1 - IoU) log(1 - p) instead of the literal
        -log p: the literal term has a second minimum (zero) at p = 1 that attracts confident
        probabilities to 1 whatever the IoU, whereas the BCE form has its only minimum at p = IoU, which is what calibration
        (score = expected IoU) needs for pruning by score thresholds (Sec. 3.3, Eq. 5).

        "focal": the standard sigmoid focal loss with one-hot targets (ablation).
        """
        logits = outputs["pred_logits"].float()
        batch_index, query_index = self._matched_query_indices(indices, logits.device)
        matched_labels = torch.cat(
            [target["labels"][target_index] for target, (_, target_index) in zip(targets, indices)]
        ).to(logits.device)
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[batch_index, query_index, matched_labels] = True
        if self.config.classification == "focal":
            soft_targets = positive.to(logits.dtype)
        else:
            pred_boxes = outputs["pred_boxes"][batch_index, query_index].float()
            target_boxes = self._matched_target_boxes(targets, indices, pred_boxes)
            localisation_confidence = elementwise_box_iou(
                box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes)
            ).detach()
            soft_targets = torch.zeros_like(logits)
            soft_targets[batch_index, query_index, matched_labels] = localisation_confidence
        loss = calibration_focal_loss(
            logits, soft_targets, positive, self.config.focal_alpha, self.config.focal_gamma
        )
        return {"loss_class": loss.sum() / num_boxes}

    def loss_boxes(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float):
        """L1 and 1 - GIoU between matched predicted and target boxes (normalised cxcywh)."""
        device = outputs["pred_boxes"].device
        batch_index, query_index = self._matched_query_indices(indices, device)
        pred_boxes = outputs["pred_boxes"][batch_index, query_index].float()
        target_boxes = self._matched_target_boxes(targets, indices, pred_boxes)
        loss_bbox = F.l1_loss(pred_boxes, target_boxes, reduction="none").sum()
        giou = elementwise_generalized_box_iou(
            box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes)
        )
        return {"loss_bbox": loss_bbox / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float):
        """Point-sampled sigmoid BCE and dice between matched predicted and target masks.

        Points are picked where each predicted mask is most uncertain (plus random ones), and the
        targets are sampled at the same normalised points, so they need no resizing.
        """
        pred_masks = outputs["pred_masks"]
        batch_index, query_index = self._matched_query_indices(indices, pred_masks.device)
        if batch_index.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph connected for backward
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        # (M, Hm, Wm) -> (M, 1, Hm, Wm): one single-channel map per matched query
        matched_masks = pred_masks[batch_index, query_index].float().unsqueeze(1)
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                matched_masks,
                calculate_uncertainty,
                self.config.num_points,
                self.config.oversample_ratio,
                self.config.importance_sample_ratio,
            )
            point_labels = self._sample_target_masks(targets, indices, point_coords)
        # (M, 1, K) -> (M, K)
        point_logits = point_sample(matched_masks, point_coords).squeeze(1)
        loss_mask = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
        return {
            "loss_mask": loss_mask.mean(1).sum() / num_boxes,
            "loss_dice": dice_loss(point_logits, point_labels).sum() / num_boxes,
        }

    # ----------------------------------------------------------------------------- forward

    def forward(self, outputs: dict, targets: list[dict],
                prefix: PrefixSupervision | None = None) -> dict[str, Tensor]:
        """Unweighted losses of every prediction set; see the module docstring for the names.

        prefix: how the model's prefix queries (the first ``outputs["num_prefix"]`` rows: denoising
        groups, then carried track queries) are supervised; None = the model had no prefix."""
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        if prefix is None or prefix.num_rows == 0:
            losses = self._decoder_losses(outputs, targets, num_boxes, suffix="")
        else:
            losses = self._prefix_losses(outputs, targets, num_boxes, prefix)
        if self.config.enc and "enc_outputs" in outputs:
            losses.update(self._set_losses(outputs["enc_outputs"], targets, num_boxes, "_enc"))
        if self.config.hybrid is not None and "one_to_many" in outputs:
            repeats = self.config.hybrid.repeats
            losses.update(
                self._decoder_losses(
                    outputs["one_to_many"],
                    repeat_targets(targets, repeats),
                    num_boxes * repeats,
                    suffix="_o2m",
                )
            )
        return losses

    def loss_weight(self, name: str) -> float:
        """Weight of a loss name with any suffix, e.g. loss_giou_3 or loss_class_enc."""
        for base, weight in self.config.weights().items():
            if name == base or name.startswith(base + "_"):
                return weight
        raise KeyError(f"no weight for loss '{name}'; known base names: {LOSS_NAMES}")

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """The scalar to backpropagate: the single place where loss weights are applied."""
        if not losses:
            raise ValueError("weighted_total got no losses")
        return sum(self.loss_weight(name) * value for name, value in losses.items())

    # ----------------------------------------------------------------------------- helpers

    def _prefix_losses(self, outputs: dict, targets: list[dict], num_boxes: float,
                       prefix: PrefixSupervision) -> dict[str, Tensor]:
        """Track queries keep their instance (fixed assignment) and the selected queries are matched
        to the remaining instances (MOTR / MobileInst temporal training); denoising queries
        reconstruct their own noised instance (DN-DETR), losses suffixed ``_dn``."""
        main = slice_queries(outputs, prefix.dn_rows, None)
        losses = self._decoder_losses(main, targets, num_boxes, "",
                                      assign=lambda predictions: self._assign_with_tracks(predictions, targets, prefix))
        if prefix.dn_rows:
            denoising = slice_queries(outputs, 0, prefix.dn_rows)
            positives = sum(len(rows) for rows, _ in prefix.dn_indices)
            losses.update(self._decoder_losses(denoising, targets, max(float(positives), 1.0), "_dn",
                                               assign=lambda predictions: prefix.dn_indices))
        return losses

    @torch.no_grad()
    def _assign_with_tracks(self, outputs: dict, targets: list[dict], prefix: PrefixSupervision) -> list:
        """Fixed pairs of the track rows + Hungarian matching of the other rows to unclaimed targets."""
        rows = prefix.track_rows
        if rows == 0:
            return self.matcher(outputs, targets)
        selected = {key: outputs[key][:, rows:] for key in ("pred_logits", "pred_boxes", "pred_masks")
                    if outputs.get(key) is not None}
        unclaimed = []
        for target, (_, claimed) in zip(targets, prefix.track_indices):
            free = torch.ones(len(target["labels"]), dtype=torch.bool)
            free[claimed] = False
            unclaimed.append(free.nonzero().squeeze(1))
        subsets = [{key: target[key][keep.to(target[key].device)] for key in ("labels", "boxes", "masks")
                    if key in target} for target, keep in zip(targets, unclaimed)]
        matched = self.matcher(selected, subsets)
        return [(torch.cat([track_rows, query + rows]), torch.cat([claimed, keep[target_index]]))
                for (track_rows, claimed), keep, (query, target_index)
                in zip(prefix.track_indices, unclaimed, matched)]

    def _decoder_losses(self, outputs: dict, targets: list[dict], num_boxes: float, suffix: str,
                        assign=None):
        """Losses of the last decoder layer (``suffix``) and of earlier ones (``suffix_{i}``).
        ``assign(predictions) -> indices`` replaces Hungarian matching when given."""
        losses = self._set_losses(outputs, targets, num_boxes, suffix, assign)
        if self.config.aux:
            for layer, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
                layer_suffix = f"{suffix}_{layer}"
                losses.update(self._set_losses(aux_outputs, targets, num_boxes, layer_suffix, assign))
        return losses

    def _set_losses(self, outputs: dict, targets: list[dict], num_boxes: float, suffix: str, assign=None):
        """Match one prediction set and compute all its losses, names suffixed with ``suffix``."""
        indices = self.matcher(outputs, targets) if assign is None else assign(outputs)
        losses = {}
        losses.update(self.loss_labels(outputs, targets, indices, num_boxes))
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        if "pred_masks" in outputs and self._targets_have_masks(targets):
            losses.update(self.loss_masks(outputs, targets, indices, num_boxes))
        return {name + suffix: value for name, value in losses.items()}

    @staticmethod
    def _targets_have_masks(targets: list[dict]) -> bool:
        """True if every target has masks, False if none has (box-only data); else an error."""
        with_masks = sum("masks" in target for target in targets)
        if 0 < with_masks < len(targets):
            raise ValueError(
                f"{with_masks} of {len(targets)} targets have 'masks'; a batch must be all "
                "box-only or all with masks (group batches by data set)"
            )
        return with_masks == len(targets)

    @staticmethod
    def _matched_query_indices(indices: list, device: torch.device) -> tuple[Tensor, Tensor]:
        """(batch index, query index) of every matched query, concatenated over images."""
        batch_index = torch.cat(
            [torch.full_like(query, image) for image, (query, _) in enumerate(indices)]
        )
        query_index = torch.cat([query for query, _ in indices])
        return batch_index.to(device), query_index.to(device)

    @staticmethod
    def _matched_target_boxes(targets: list[dict], indices: list, like: Tensor) -> Tensor:
        """(M, 4) target boxes in the order of ``_matched_query_indices``."""
        boxes = [target["boxes"][target_index.to(target["boxes"].device)]
                 for target, (_, target_index) in zip(targets, indices)]
        return torch.cat(boxes).to(like)

    @staticmethod
    def _sample_target_masks(targets: list[dict], indices: list, point_coords: Tensor) -> Tensor:
        """Matched target masks sampled at ``point_coords`` (M, K, 2) -> (M, K) in [0, 1].

        Sampled image by image so that images may have masks of different resolutions.
        """
        sampled = []
        start = 0
        for target, (_, target_index) in zip(targets, indices):
            count = target_index.numel()
            if count == 0:
                continue
            masks = target["masks"][target_index.to(target["masks"].device)]
            # (n, H, W) -> (n, 1, H, W) float, sampled -> (n, 1, K) -> (n, K)
            masks = masks.to(device=point_coords.device, dtype=point_coords.dtype).unsqueeze(1)
            sampled.append(point_sample(masks, point_coords[start : start + count]).squeeze(1))
            start += count
        return torch.cat(sampled)

    @staticmethod
    def _num_boxes(targets: list[dict], device: torch.device) -> float:
        """Targets per rank, averaged over ranks when distributed, at least 1 (DETR)."""
        num_boxes = torch.as_tensor(
            float(sum(len(target["labels"]) for target in targets)), device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        return max(num_boxes.item(), 1.0)
