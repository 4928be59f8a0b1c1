"""Point sampling for mask losses and mask matching costs (PointRend / Mask2Former).

Computing mask losses on a few thousand sampled points instead of full-resolution masks cuts
training memory by an order of magnitude (Mask2Former, Sec. 3.2) and lets targets stay at any
resolution: predictions and targets are sampled at the same normalised coordinates.
"""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(input: Tensor, point_coords: Tensor, **grid_sample_kwargs) -> Tensor:
    """Bilinearly sample ``input`` at normalised points.

    Args:
        input: (N, C, H, W) feature/mask map.
        point_coords: (N, P, 2) points as (x, y) in [0, 1] over the whole map
            (0 = left/top edge, 1 = right/bottom edge, align_corners=False convention).
        grid_sample_kwargs: forwarded to ``F.grid_sample`` (e.g. ``mode="nearest"``). Defaults
            differ from Mask2Former in one way: ``padding_mode="border"``, so points in the outer
            half pixel repeat the edge value instead of blending with zeros (zero padding would
            pull border mask logits toward p = 0.5 and border target masks toward 0).

    Returns:
        (N, C, P) sampled values.
    """
    grid_sample_kwargs.setdefault("align_corners", False)
    grid_sample_kwargs.setdefault("padding_mode", "border")
    # grid_sample wants a (N, H_out, W_out, 2) grid in [-1, 1]: (N, P, 2) -> (N, P, 1, 2)
    grid = (2.0 * point_coords - 1.0).unsqueeze(2)
    output = F.grid_sample(input, grid.to(input.dtype), **grid_sample_kwargs)
    # (N, C, P, 1) -> (N, C, P)
    return output.squeeze(3)


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of class-agnostic mask logits (N, 1, ...): -|logit|, highest at the boundary."""
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    uncertainty_fn: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> Tensor:
    """Pick points where the prediction is most uncertain, plus some uniform random points.

    Oversample ``num_points * oversample_ratio`` uniform points, keep the
    ``importance_sample_ratio * num_points`` most uncertain of them and fill the rest with fresh
    uniform points (PointRend, Kirillov et al. 2020).

    Args:
        coarse_logits: (N, 1, H, W) mask logits.
        uncertainty_fn: (N, 1, P) logits -> (N, 1, P) uncertainty (higher = more uncertain).
        num_points: P, points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].

    Returns:
        (N, P, 2) point coordinates (x, y) in [0, 1].
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    num_masks = coarse_logits.shape[0]
    device = coarse_logits.device
    num_sampled = int(num_points * oversample_ratio)
    point_coords = torch.rand(num_masks, num_sampled, 2, device=device)
    point_logits = point_sample(coarse_logits, point_coords)
    # Computing uncertainty on the sampled logits (not interpolating uncertainty) matters for
    # -|logit|: the interpolated map would miss zero crossings between grid cells.
    point_uncertainties = uncertainty_fn(point_logits)
    num_uncertain_points = int(importance_sample_ratio * num_points)
    num_random_points = num_points - num_uncertain_points
    top_indices = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain_points, dim=1).indices
    # (N, k) indices -> (N, k, 2) so gather picks both coordinates of each chosen point
    point_coords = torch.gather(point_coords, 1, top_indices.unsqueeze(-1).expand(-1, -1, 2))
    if num_random_points > 0:
        random_coords = torch.rand(num_masks, num_random_points, 2, device=device)
        point_coords = torch.cat([point_coords, random_coords], dim=1)
    return point_coords
