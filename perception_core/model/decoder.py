"""Deformable transformer decoder with iterative box refinement and query pruning (Sec. 3.3).

Each layer: self-attention among queries, deformable cross-attention to the memory (the single
enhanced bottleneck B^ by default, all scales for the multi-scale baseline), FFN; post-norm as in
DINO/MaskDINO. After every layer the box is refined, and predictions (class logits by scaled cosine,
boxes, masks q^ . M) are made for the deep supervision. At inference, queries whose calibrated
confidence is below tau(l) are dropped before the next layer (see pruning.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .deform_attn import MSDeformAttn, ProjectedValues, SampledMemory, memory_for_sampling, project_many
from .layers import FFN, MLP, MultiHeadAttention, box_position_embedding
from .pixel_decoder_common import MaskFeatures
from .prune_schedule import thresholds
from .pruning import query_confidence, select_kept
from .query_selection import ScaledCosineClassifier


@dataclass(frozen=True)
class PruneSettings:
    """Thresholds after each layer and the minimum kept count: python numbers, or tensors ((L,) and
    ()) when they are inputs of an exported graph so they can be tuned without re-export."""
    taus: tuple[float, ...] | Tensor
    min_kept: int | Tensor

    @staticmethod
    def from_config(cfg, num_layers: int) -> "PruneSettings":
        return PruneSettings(tuple(thresholds(num_layers, cfg.schedule, cfg.b_low, cfg.b_high, cfg.beta, cfg.alpha)),
                             cfg.min_kept)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, points: int, ffn_dim: int, levels: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, levels=levels, heads=heads, points=points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor, ref_boxes: Tensor,
                memory: Tensor | ProjectedValues | SampledMemory, shapes: list[tuple[int, int]],
                attn_mask: Tensor | None) -> Tensor:
        """tgt, query_pos: (B, N, C); ref_boxes: (B, N, 4) cxcywh; memory: (B, C, S) channels first,
        already through cross_attn.value_proj (deform_attn.project_many), or one level to sample before
        the projection (deform_attn.memory_for_sampling)."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, attn_mask=attn_mask))
        if isinstance(memory, SampledMemory):
            cross = self.cross_attn.sample_first(tgt + query_pos, ref_boxes, memory)
        else:
            ref = ref_boxes[:, :, None, :].expand(-1, -1, len(shapes), -1)        # (B, N, L, 4)
            cross = self.cross_attn(tgt + query_pos, ref, memory, shapes, channels_first=True)
        tgt = self.norm2(tgt + cross)
        return self.norm3(tgt + self.ffn(tgt))


class TransformerDecoder(nn.Module):
    def __init__(self, dim: int, num_layers: int, heads: int, points: int, ffn_dim: int, levels: int,
                 classifier: ScaledCosineClassifier):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, points, ffn_dim, levels) for _ in range(num_layers))
        self.level_embed = nn.Parameter(torch.randn(levels, dim) * 0.02)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.norm = nn.LayerNorm(dim)
        self.box_heads = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(num_layers))
        for head in self.box_heads:  # start as the identity refinement
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        self.mask_embed = MLP(dim, dim, dim, 3)
        self.classifier = classifier

    def predict(self, tgt: Tensor, prompts: Tensor, mask_features: Tensor | MaskFeatures | None
                ) -> tuple[Tensor, Tensor | None]:
        """Class logits (B, N, P) and, if mask_features M is given (dense (B, C, H, W), or factored),
        mask logits (B, N, H, W)."""
        normed = self.norm(tgt)
        logits = self.classifier(normed, prompts)
        if mask_features is None:
            return logits, None
        kernels = self.mask_embed(normed)
        if isinstance(mask_features, MaskFeatures):
            return logits, mask_features.read(kernels)
        batch, dim, height, width = mask_features.shape
        # (B, N, C) @ (B, C, H*W) -> (B, N, H*W) -> (B, N, H, W)
        masks = torch.matmul(kernels, mask_features.flatten(2))
        return logits, masks.view(batch, -1, height, width)

    def forward(self, queries: Tensor, boxes: Tensor, memory: list[Tensor], mask_features: Tensor | MaskFeatures,
                prompts: Tensor, attn_mask: Tensor | None = None, prune: PruneSettings | None = None,
                all_layer_masks: bool = True, sample_first: bool = False) -> dict:
        """
        queries: (B, N, C) initial content; boxes: (B, N, 4) initial reference boxes cxcywh in [0, 1];
        memory: [(B, C, h, w)] maps to attend to; prompts: (P, C) z_text; attn_mask: (N, N) bool.
        sample_first: with a single memory map, the layers after the first (those pruning thins out)
        sample the memory and then project the samples (MSDeformAttn.sample_first: the same result,
        and the value projection's cost follows the kept queries instead of the memory size); the
        first layer, which all K queries enter, and every layer otherwise project the whole memory
        first, as in Deformable-DETR / MaskDINO (docs/MODEL.md has the costs).
        Returns a dict with per-layer lists `logits`, `boxes`, `masks` (None where not computed),
        the final `hidden` (B, N', C), `kept_indices` (N',) into the initial queries and
        `kept_per_layer` (L,) int64 (queries entering each layer).
        """
        if all_layer_masks and isinstance(mask_features, MaskFeatures):
            mask_features = mask_features.dense()   # read by every layer: form M once
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in memory]
        attentions = [layer.cross_attn for layer in self.layers]
        embedding = self._level_embedding(shapes).transpose(0, 1)                 # (C, S), or (C, 1)
        projected = 1 if sample_first and len(memory) == 1 else len(attentions)
        # flat + level embedding (the embedding folded into each projection's bias in the export)
        values = project_many(attentions[:projected], torch.cat([m.flatten(2) for m in memory], dim=2), embedding)
        if projected < len(attentions):
            values += memory_for_sampling(attentions[projected:], memory[0], embedding)
        tgt, ref = queries, boxes
        kept = torch.arange(queries.shape[1], device=queries.device)
        out = {"logits": [], "boxes": [], "masks": [], "kept_per_layer": []}
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            out["kept_per_layer"].append(torch.tensor(tgt.shape[1], dtype=torch.int64))
            query_pos = self.ref_point_head(box_position_embedding(ref, tgt.shape[-1]))
            tgt = layer(tgt, query_pos, ref, values[index], shapes, attn_mask)
            new_ref = (self.box_heads[index](tgt) + inverse_sigmoid(ref)).sigmoid()
            want_masks = all_layer_masks or index == last
            logits, masks = self.predict(tgt, prompts, mask_features if want_masks else None)
            out["logits"].append(logits)
            out["boxes"].append(new_ref)
            out["masks"].append(masks)
            ref = new_ref.detach()
            if prune is not None and index < last:
                keep = select_kept(query_confidence(logits), prune.taus[index], prune.min_kept)
                # index_select exports as one Gather each (tgt[:, keep] as GatherND between transposes)
                tgt, ref, kept = tgt.index_select(1, keep), ref.index_select(1, keep), kept.index_select(0, keep)
        out["hidden"] = tgt
        out["kept_indices"] = kept
        out["kept_per_layer"] = torch.stack(out["kept_per_layer"])
        return out

    def _level_embedding(self, shapes: list[tuple[int, int]]) -> Tensor:
        """(S, C): each memory token gets the learned embedding of its level; (1, C) for one level (it
        broadcasts, and the export folds it with the bias into a column of each value projection)."""
        if len(shapes) == 1:
            return self.level_embed[:1]
        return torch.cat([self.level_embed[i].expand(h * w, -1) for i, (h, w) in enumerate(shapes)], dim=0)
