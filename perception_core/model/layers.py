"""Small building blocks shared by the pixel decoders and the transformer decoder."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

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


_EXPORT_FORM = {"on": False}


@contextlib.contextmanager
def export_form(enabled: bool = True) -> Iterator[None]:
    """Within this context the model builds its exported graph (runtime/export.dynamo_export enters
    it): the same function, written so that work on constants folds into constants of the graph
    (position embeddings through projections, `affine_channels_first`; mask upsampling as matmuls with
    constant matrices, pixel_decoder_common.MaskFeatures.read). Outside it, eagerly (training and
    count_flops), the plain form, which counts no FLOPs on constants."""
    previous = _EXPORT_FORM["on"]
    _EXPORT_FORM["on"] = enabled
    try:
        yield
    finally:
        _EXPORT_FORM["on"] = previous


def in_export_form() -> bool:
    return _EXPORT_FORM["on"]


def affine_channels_first(weight: Tensor, bias: Tensor, x: Tensor, pos: Tensor | None = None) -> Tensor:
    """W (x + pos) + bias over the channel axis of (B, C_in, N) maps: (B, C_out, N); `bias` broadcasts
    against the result ((C_out, 1), or a full (C_out, N) constant). `pos` (C_in, N) is a constant
    position embedding: in the export form W pos + bias is one constant of the graph, so x + pos is
    never formed (one full-size add less per projection)."""
    if pos is None:
        return torch.matmul(weight, x) + bias
    if in_export_form():
        return torch.matmul(weight, x) + (torch.matmul(weight, pos) + bias)
    return torch.matmul(weight, x + pos) + bias


def linear_channels_first(linear: nn.Linear, x: Tensor, pos: Tensor | None = None) -> Tensor:
    """`linear` over the channel axis of (B, C_in, N) maps: W (x + pos) + b, (B, C_out, N). A 1x1
    convolution written as a matmul, so channels-first features need no transpose (a batch-1 Gemm
    with the bias as its C input was slower in onnxruntime: it copies x[0] and broadcasts C first)."""
    return affine_channels_first(linear.weight, linear.bias[:, None], x, pos)


class FFN(nn.Module):
    """Linear -> ReLU -> Linear feed-forward network (residual and norm are the caller's)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, channels_first: bool = False) -> Tensor:
        """(B, N, C) tokens, or (B, C, N) maps with `channels_first`; same layout out.

        Channels first it runs as two 1x1 convolutions over (B, C, N, 1): onnxruntime fuses bias and
        ReLU into its blocked (NCHWc) convolution, 0.59 ms per FFN of the default model's bottleneck
        against 0.69 ms as matmul + add + relu (a micro-benchmark of the FFN with a residual add and a
        non-conv op after it; 0.2 ms on the whole exported model)."""
        if channels_first:
            hidden = F.relu(F.conv2d(x.unsqueeze(-1), self.linear1.weight[:, :, None, None], self.linear1.bias))
            # flatten, not [..., 0]: indexing exports as a Gather, a 0.13 ms copy per FFN in onnxruntime
            return F.conv2d(hidden, self.linear2.weight[:, :, None, None], self.linear2.bias).flatten(2)
        return self.linear2(F.relu(self.linear1(x)))


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over the channel axis of (B, N, C) token sequences (Eq. 1 normalizes each layer), or
    of (B, C, N) maps with `channels_first` (plain GroupNorm, no transposes)."""

    def forward(self, x: Tensor, channels_first: bool = False) -> Tensor:
        if channels_first:
            return super().forward(x)
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


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """F.normalize(x, dim=-1), the same ops without its expand_as (an Expand and its shape arithmetic
    in the export; the division broadcasts)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def box_position_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalized cxcywh boxes (DAB-DETR): (..., 4) -> (..., 2 * dim)."""
    if dim % 4:
        raise ValueError(f"dim={dim} must be divisible by 4")
    per_coord = dim // 2
    freqs = temperature ** (2 * (torch.arange(per_coord // 2, device=boxes.device, dtype=boxes.dtype)) / per_coord)
    if in_export_form():
        # sin(boxes @ F + phase): F (4, 2 dim) holds each coordinate's 2 pi / freq twice (its sin and
        # cos column) in its own block, phase is pi/2 on the cos columns; one matmul, add and sin
        # instead of ~9 nodes per decoder layer (onnxruntime cannot fold the stack / flatten)
        rates = ((2 * math.pi) / freqs).repeat_interleave(2)                                # (per_coord,)
        matrix = torch.block_diag(*[rates[None]] * boxes.shape[-1])                         # (4, 4 per_coord)
        phase = torch.tensor([0.0, math.pi / 2], dtype=boxes.dtype, device=boxes.device).repeat(
            boxes.shape[-1] * per_coord // 2)
        return torch.sin(torch.matmul(boxes, matrix) + phase)
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
                attn_mask: Tensor | None = None, query_channels_first: bool = False,
                kv_channels_first: bool = False, query_pos: Tensor | None = None,
                key_pos: Tensor | None = None) -> Tensor:
        """
        Args:
            query: (B, Nq, C), or (B, C, Nq) with `query_channels_first`; key/value: (B, Nk, C), or
                (B, C, Nk) with `kv_channels_first` (the bottleneck's maps, so it needs no transpose).
            query_pos / key_pos: position embeddings added to query / key before their projections,
                in their layouts ((N, C) or (C, N)); channels first they fold into the projection's
                bias in the export (`affine_channels_first`).
            key_padding_mask: (B or 1, Nk) bool, True = ignore that key.
            attn_mask: (Nq, Nk) bool, True = query may NOT attend to key (denoising groups).
        Returns:
            (B, Nq, C), or (B, C, Nq) with `query_channels_first`.
        """
        batch = query.shape[0]
        dim = query.shape[1] if query_channels_first else query.shape[2]
        head_dim = dim // self.heads
        # channels first: (B, heads, C/heads, N), a free view; tokens first: (B, heads, N, C/heads)
        q = self._heads(self.q_proj, query, query_channels_first, query_pos)
        k = self._heads(self.k_proj, key, kv_channels_first, key_pos)
        v = self._heads(self.v_proj, value, kv_channels_first)
        mask = None
        if key_padding_mask is not None:
            # (B, Nk) -> (B, 1, 1, Nk), additive -inf where ignored
            mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            mask = mask.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
        if attn_mask is not None:
            extra = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(attn_mask, float("-inf"))
            mask = extra if mask is None else mask + extra
        # Written out rather than F.scaled_dot_product_attention: SDPA guards on the query count,
        # which breaks export when pruning leaves zero queries. The transposes below sit on matmul
        # inputs, where onnxruntime folds them into the matmul (FusedMatMul transA / transB).
        q_rows = q.transpose(-2, -1) if query_channels_first else q                   # (B, heads, Nq, C/h)
        k_cols = k if kv_channels_first else k.transpose(-2, -1)                      # (B, heads, C/h, Nk)
        scores = torch.matmul(q_rows, k_cols) * head_dim ** -0.5                     # (B, heads, Nq, Nk)
        if mask is not None:
            scores = scores + mask
        attn = scores.softmax(dim=-1)
        if query_channels_first:
            v_cols = v if kv_channels_first else v.transpose(-2, -1)                  # (B, heads, C/h, Nk)
            out = torch.matmul(v_cols, attn.transpose(-2, -1))                       # (B, heads, C/h, Nq)
            return linear_channels_first(self.out_proj, out.reshape(batch, dim, query.shape[2]))
        v_rows = v.transpose(-2, -1) if kv_channels_first else v                     # (B, heads, Nk, C/h)
        out = torch.matmul(attn, v_rows)                                            # (B, heads, Nq, C/h)
        return self.out_proj(out.transpose(1, 2).reshape(batch, query.shape[1], dim))

    def _heads(self, linear: nn.Linear, x: Tensor, channels_first: bool, pos: Tensor | None = None) -> Tensor:
        # explicit sizes, not -1: pruning can leave zero queries
        batch, head_dim = x.shape[0], linear.out_features // self.heads
        if channels_first:
            return linear_channels_first(linear, x, pos).view(batch, self.heads, head_dim, x.shape[2])
        if pos is not None:
            x = x + pos
        return linear(x).view(batch, x.shape[1], self.heads, head_dim).transpose(1, 2)
