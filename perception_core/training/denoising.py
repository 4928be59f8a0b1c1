"""Contrastive denoising queries (DN-DETR, Li et al. 2022; DINO, Zhang et al. 2023), open-vocabulary.

Every ground-truth instance is copied into ``groups`` pairs of extra decoder queries: a *positive*
whose box is jittered a little (each edge moved by less than ``box_noise`` of half the box size),
and a *negative* jittered more (between 1x and 2x that). The decoder must pull positives back to
their instance and call negatives "no object". Assignments are fixed, so these queries give a
clean, matching-free training signal that speeds up convergence; they exist only in training.

Content: a closed-vocabulary detector embeds the class label; here the label is a prompt, so the
query content is the prompt's projected pooled text embedding z_text (the same vector the
classifier compares against), with ``label_noise`` of them swapped for a random prompt.

Layout of the D = groups * 2 * n_max rows (n_max = most instances of an image in the batch):
group g, positives at g*2*n_max + i, negatives at g*2*n_max + n_max + i; rows i >= n_b of image b
are padding (no object). Attention: groups cannot see each other, and the other queries cannot see
any denoising row (see ``Mobius.forward``: the mask covers the first D prefix rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh


@dataclass
class DenoisingQueries:
    queries: Tensor      # (B, D, C) content
    boxes: Tensor        # (B, D, 4) noised boxes, cxcywh in [0, 1]
    attn_mask: Tensor    # (D, D) bool, True = blocked
    indices: list        # per image (rows (n_b * groups,), target indices) int64 CPU: the positives


def make_denoising_queries(targets: list[dict], prompt_embeddings: Tensor, groups: int, box_noise: float,
                           label_noise: float, generator: torch.Generator | None = None) -> DenoisingQueries | None:
    """targets as for SetCriterion (labels (n,), boxes (n, 4) cxcywh); prompt_embeddings (P, C)
    projected z_text. None when the batch has no instance (nothing to denoise)."""
    counts = [len(target["labels"]) for target in targets]
    n_max = max(counts, default=0)
    if n_max == 0 or groups < 1:
        return None
    device, dim = prompt_embeddings.device, prompt_embeddings.shape[1]
    batch, rows = len(targets), groups * 2 * n_max
    labels = torch.zeros(batch, n_max, dtype=torch.int64, device=device)
    boxes = torch.full((batch, n_max, 4), 0.5, device=device)
    for image, target in enumerate(targets):
        labels[image, :counts[image]] = target["labels"].to(device)
        boxes[image, :counts[image]] = target["boxes"].to(device)
    # (B, n_max) -> (B, groups, 2, n_max): one positive and one negative copy per group
    labels = labels[:, None, None].expand(-1, groups, 2, -1).clone()
    boxes = boxes[:, None, None].expand(-1, groups, 2, -1, -1).clone()
    flip = torch.rand(labels.shape, generator=generator).to(device) < label_noise * 0.5
    random_labels = torch.randint(prompt_embeddings.shape[0], labels.shape, generator=generator).to(device)
    labels = torch.where(flip, random_labels, labels)
    boxes = _jitter(boxes, box_noise, generator)
    content = prompt_embeddings[labels.flatten()].view(batch, rows, dim)
    indices = []
    for image, count in enumerate(counts):
        # positive rows of every group: g * 2 * n_max + i for i < count
        starts = torch.arange(groups) * 2 * n_max
        positive_rows = (starts[:, None] + torch.arange(count)[None]).flatten()
        indices.append((positive_rows, torch.arange(count).repeat(groups)))
    return DenoisingQueries(content, boxes.view(batch, rows, 4), group_mask(groups, 2 * n_max, device), indices)


def _jitter(boxes: Tensor, box_noise: float, generator: torch.Generator | None) -> Tensor:
    """boxes (B, G, 2, n, 4) cxcywh: positives [:, :, 0] move each edge by < box_noise of half
    their size, negatives [:, :, 1] by box_noise..2*box_noise (DINO's contrastive noise)."""
    corners = box_cxcywh_to_xyxy(boxes)
    half = torch.cat([boxes[..., 2:] / 2, boxes[..., 2:] / 2], dim=-1)  # (w/2, h/2, w/2, h/2)
    sign = torch.randint(0, 2, boxes.shape, generator=generator).to(boxes) * 2 - 1
    magnitude = torch.rand(boxes.shape, generator=generator).to(boxes)
    magnitude[:, :, 1] += 1.0  # negatives: [1, 2)
    corners = (corners + sign * magnitude * half * box_noise).clamp(0.0, 1.0)
    x1, y1, x2, y2 = corners.unbind(-1)
    # keep every box at least a pixel-ish wide after clamping
    corners = torch.stack([torch.minimum(x1, x2 - 1e-3), torch.minimum(y1, y2 - 1e-3), x2, y2], dim=-1)
    return box_xyxy_to_cxcywh(corners).clamp(1e-4, 1.0)


def group_mask(groups: int, group_size: int, device: torch.device | str = "cpu") -> Tensor:
    """(G*S, G*S) bool: True (blocked) between rows of different groups."""
    group_of = torch.arange(groups * group_size, device=device) // group_size
    return group_of[:, None] != group_of[None, :]
