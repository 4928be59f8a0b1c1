"""Temporal query passing for training on video (MobileInst Sec. 3.5; MOTR-style track queries).

Frame t is decoded as usual. The refined queries (and boxes) of the queries matched to ground-truth
instances at t become prefix queries when decoding frame t + delta, each supervised with the
*same instance* there (fixed assignment through the instance/track id), or with "no object" when
that instance is gone. The selected queries of t + delta are matched to the instances no carried
query claims. This is exactly what the runtime does with confirmed tracks, so a model trained this
way keeps following its objects with the same queries.

The carried queries are detached: frame t already gets its own losses, and cutting the graph keeps
memory at that of two independent frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .criterion import slice_queries


@dataclass
class CarriedQueries:
    queries: Tensor            # (B, M, C) refined queries of frame t, detached
    boxes: Tensor              # (B, M, 4) their boxes, cxcywh in [0, 1]
    instance_ids: list         # per image (m_b,) instance ids of the carried rows; rows >= m_b are padding


@torch.no_grad()
def carry_matched_queries(outputs: dict, targets: list[dict], matcher, num_dn_rows: int = 0) -> CarriedQueries:
    """The last-layer queries of frame t matched to its instances (after the denoising rows)."""
    main = slice_queries(outputs, num_dn_rows, None)
    indices = matcher(main, targets)
    hidden = outputs["query_embed"][:, num_dn_rows:]
    boxes = main["pred_boxes"]
    count = max((len(rows) for rows, _ in indices), default=0)
    batch, dim = hidden.shape[0], hidden.shape[2]
    carried = hidden.new_zeros(batch, count, dim)
    carried_boxes = boxes.new_full((batch, count, 4), 0.5)
    carried_boxes[..., 2:] = 0.1  # padding rows: a small box in the middle, supervised as no object
    instance_ids = []
    for image, (rows, target_index) in enumerate(indices):
        rows = rows.to(hidden.device)
        carried[image, :len(rows)] = hidden[image, rows]
        carried_boxes[image, :len(rows)] = boxes[image, rows]
        instance_ids.append(targets[image]["instance_ids"][target_index.to(targets[image]["instance_ids"].device)].cpu())
    return CarriedQueries(carried.detach(), carried_boxes.detach(), instance_ids)


def track_assignment(carried: CarriedQueries, targets: list[dict]) -> list:
    """Per image (track rows, target indices) at t + delta: a carried row keeps its instance if the
    instance is still annotated there."""
    pairs = []
    for ids, target in zip(carried.instance_ids, targets):
        later = target["instance_ids"].cpu().tolist()
        position = {instance: index for index, instance in enumerate(later)}
        rows = [row for row, instance in enumerate(ids.tolist()) if instance in position]
        pairs.append((torch.tensor(rows, dtype=torch.int64),
                      torch.tensor([position[ids[row].item()] for row in rows], dtype=torch.int64)))
    return pairs
