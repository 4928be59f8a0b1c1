"""Small building blocks shared by the pixel decoders and the transformer decoder."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (DETR's box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FFN(nn.Module):
    """Linear -> ReLU -> Linear feed-forward network (residual and norm are the caller's)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.relu(self.linear1(x)))


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over the channel axis of (B, N, C) token sequences (Eq. 1 normalizes each layer)."""

    def forward(self, x: Tensor) -> Tensor:
        # (B, N, C) -> (B, C, N) -> GroupNorm -> (B, N, C)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def sine_position_embedding(height: int, width: int, dim: int, device=None, dtype=torch.float32,
                            temperature: float = 10000.0) -> Tensor:
    """DETR's 2-D sine embedding for a full (unpadded) map: (H*W, dim), first half y, second half x."""
    if dim % 4:
        raise ValueError(f"position embedding dim={dim} must be divisible by 4")
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 * math.pi
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.cat([_sine(grid_y.flatten(), dim // 2, temperature),
                      _sine(grid_x.flatten(), dim // 2, temperature)], dim=-1)


def _sine(positions: Tensor, dim: int, temperature: float) -> Tensor:
    freqs = temperature ** (2 * (torch.arange(dim // 2, device=positions.device, dtype=positions.dtype)) / dim)
    angles = positions[:, None] / freqs
    # interleave sin/cos: (N, dim/2, 2) -> (N, dim)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def box_position_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalized cxcywh boxes (DAB-DETR): (..., 4) -> (..., 2 * dim)."""
    if dim % 4:
        raise ValueError(f"dim={dim} must be divisible by 4")
    per_coord = dim // 2
    freqs = temperature ** (2 * (torch.arange(per_coord // 2, device=boxes.device, dtype=boxes.dtype)) / per_coord)
    angles = boxes[..., None] * (2 * math.pi) / freqs  # (..., 4, per_coord/2)
    embedding = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 4, per_coord)
    return embedding.flatten(-2)  # (..., 4 * per_coord) = (..., 2 * dim)


def flatten_levels(features: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
    """[(B, C, H_l, W_l)] -> (B, sum H_l*W_l, C) and the python list of (H_l, W_l)."""
    shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
    return torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1), shapes


def level_position_embeddings(shapes: list[tuple[int, int]], dim: int, level_embed: Tensor,
                              device=None, dtype=torch.float32) -> Tensor:
    """Sine position embedding of each level plus its learned level embedding: (S, dim)."""
    parts = [sine_position_embedding(h, w, dim, device, dtype) + level_embed[i]
             for i, (h, w) in enumerate(shapes)]
    return torch.cat(parts, dim=0)


def reference_grid(shapes: list[tuple[int, int]], device=None, dtype=torch.float32) -> Tensor:
    """Pixel-centre reference points of every level, normalized to [0, 1]: (S, 2) xy."""
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))
    return torch.cat(points, dim=0)


def conv_norm(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
              groups: int = 32) -> nn.Sequential:
    """Conv + GroupNorm, the input projection used by DINO-family pixel decoders."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.GroupNorm(math.gcd(groups, out_channels), out_channels))


class MultiHeadAttention(nn.Module):
    """Softmax attention with separate query/key/value inputs (used for the image-text fusion of
    Eq. 1a-1b and decoder self-attention)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            query: (B, Nq, C); key/value: (B, Nk, C).
            key_padding_mask: (B or 1, Nk) bool, True = ignore that key.
            attn_mask: (Nq, Nk) bool, True = query may NOT attend to key (denoising groups).
        Returns:
            (B, Nq, C)
        """
        batch, n_query, dim = query.shape
        head_dim = dim // self.heads
        # (B, N, C) -> (B, heads, N, C/heads)
        q = self.q_proj(query).view(batch, n_query, self.heads, head_dim).transpose(1, 2)
        k = self.k_proj(key).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        v = self.v_proj(value).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        mask = None
        if key_padding_mask is not None:
            # (B, Nk) -> (B, 1, 1, Nk), additive -inf where ignored
            mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            mask = mask.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
        if attn_mask is not None:
            extra = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(attn_mask, float("-inf"))
            mask = extra if mask is None else mask + extra
        # Written out rather than F.scaled_dot_product_attention: SDPA guards on the query count,
        # which breaks export when pruning leaves zero queries.
        scores = torch.matmul(q, k.transpose(-2, -1)) * head_dim ** -0.5     # (B, heads, Nq, Nk)
        if mask is not None:
            scores = scores + mask
        out = torch.matmul(scores.softmax(dim=-1), v)                       # (B, heads, Nq, C/heads)
        return self.out_proj(out.transpose(1, 2).reshape(batch, n_query, dim))
