"""One training forward pass and its losses: a batch of images, or a batch of frame pairs.

Per frame: optional denoising queries (DINO) and carried track queries become the model's prefix,
the one-to-many group is requested when hybrid matching is on, and the criterion is told how the
prefix rows are supervised. Frame pairs (temporal query passing): frame t, then frame t + delta
with the queries matched at t carried over; the two frames' losses are averaged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .collate import Batch, PairBatch
from .criterion import PrefixSupervision
from .denoising import make_denoising_queries
from .distributed import all_true, unwrap
from .temporal import CarriedQueries, carry_matched_queries, track_assignment

PREDICTION_KEYS = ("pred_logits", "pred_boxes", "pred_masks")


def outputs_are_finite(outputs: dict) -> bool:
    """All logits, boxes and masks of every prediction set are finite (the matcher refuses NaNs)."""
    sets = [outputs, *outputs.get("aux_outputs", []), outputs.get("enc_outputs", {})]
    if "one_to_many" in outputs:
        sets += [outputs["one_to_many"], *outputs["one_to_many"].get("aux_outputs", [])]
    return all(bool(torch.isfinite(value).all()) for prediction in sets
               for key, value in prediction.items() if key in PREDICTION_KEYS and value is not None)


def forward_losses(run, batch: Batch | PairBatch) -> tuple[dict[str, Tensor] | None, Tensor | None]:
    """(unweighted losses, weighted total), or (None, None) when any rank saw a non-finite value.
    All ranks take the same branch, so collectives inside the criterion never deadlock."""
    if isinstance(batch, PairBatch):
        return _pair_losses(run, batch)
    result = _frame(run, batch, carried=None)
    return (None, None) if result is None else result[:2]


def _pair_losses(run, batch: PairBatch):
    first = _frame(run, batch.first, carried=None)
    if first is None:
        return None, None
    losses_t, total_t, outputs_t, dn_rows = first
    carried = carry_matched_queries(outputs_t, batch.first.targets, run.criterion.matcher, dn_rows)
    second = _frame(run, batch.second, carried)
    if second is None:
        return None, None
    losses_later, total_later = second[:2]
    losses = {name: (losses_t.get(name, 0.0) + losses_later.get(name, 0.0)) / 2
              for name in losses_t.keys() | losses_later.keys()}
    return losses, (total_t + total_later) / 2


def _frame(run, batch: Batch, carried: CarriedQueries | None):
    """(losses, total, outputs, denoising rows) of one frame batch, or None if non-finite."""
    queries = run.config.queries
    prompts = run.prompts
    prefix_queries, prefix_boxes, attn_mask = [], [], None
    denoising = None
    if queries.denoising_groups:
        # the same z_text the classifier compares against: open-vocabulary label embeddings
        embeddings = unwrap(run.model).text_pooled_proj(prompts.pooled)
        denoising = make_denoising_queries(batch.targets, embeddings, queries.denoising_groups,
                                           queries.box_noise, queries.label_noise)
    if denoising is not None:
        prefix_queries.append(denoising.queries)
        prefix_boxes.append(denoising.boxes)
        attn_mask = denoising.attn_mask
    if carried is not None and carried.queries.shape[1]:
        prefix_queries.append(carried.queries)
        prefix_boxes.append(carried.boxes)
    autocast = torch.autocast(run.info.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None)
    with autocast:
        outputs = run.model(batch.images, prompts.tokens, prompts.mask, prompts.pooled,
                            torch.cat(prefix_queries, 1) if prefix_queries else None,
                            torch.cat(prefix_boxes, 1) if prefix_boxes else None,
                            attn_mask=attn_mask, one_to_many=queries.one_to_many)
    if not all_true(outputs_are_finite(outputs), run.info):
        return None
    dn_rows = denoising.queries.shape[1] if denoising is not None else 0
    prefix = None
    if prefix_queries:
        track_rows = carried.queries.shape[1] if carried is not None else 0
        prefix = PrefixSupervision(dn_rows, denoising.indices if denoising is not None else [],
                                   track_rows, track_assignment(carried, batch.targets) if track_rows else [])
    losses = run.criterion(outputs, batch.targets, prefix)  # the criterion computes in float32
    total = run.criterion.weighted_total(losses)
    if not all_true(bool(torch.isfinite(total)), run.info):
        return None
    return losses, total, outputs, dn_rows
