"""Language-guided classification and top-K query selection (MOBIUS Sec. 3.3, Eq. 2-3).

Classification everywhere is a scaled cosine similarity to the pooled prompt embeddings z_text:
    cos_s(q, z) = exp(s) * <q, z> / (|q| |z|)            (Eq. 3, s learnable)
Bounded logits are what keeps training stable (Sec. 3.4). We add one learnable bias initialised
to the focal-loss prior (confidence 0.01 at start), as DETR-family detectors do; with it the
calibrated confidence is sigmoid(cos_s + b).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .layers import MLP, l2_normalize

_MAX_LOGIT_SCALE = math.log(100.0)  # clamp exp(s) <= 100 as CLIP does


class ScaledCosineClassifier(nn.Module):
    def __init__(self, dim: int, logit_scale_init: float = 2.3, prior_prob: float = 0.01):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    def forward(self, queries: Tensor, prompts: Tensor) -> Tensor:
        """queries (B, N, C), prompts z_text (P, C) -> logits (B, N, P)."""
        q = l2_normalize(self.proj(queries))
        z = l2_normalize(prompts)
        scale = self.logit_scale.clamp(max=_MAX_LOGIT_SCALE).exp()
        return scale * torch.matmul(q, z.t()) + self.bias


class LanguageGuidedQuerySelection(nn.Module):
    """Scores every candidate token against the prompts and keeps the top K as decoder queries."""

    def __init__(self, dim: int, num_queries: int, classifier: ScaledCosineClassifier):
        super().__init__()
        self.num_queries = num_queries
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.classifier = classifier
        self.box_head = MLP(dim, dim, 4, 3)  # Eq. 2b: b_i = MLP(q_i), a delta on the token's anchor

    def forward(self, tokens: Tensor, anchors: Tensor, prompts: Tensor, extra: int = 0) -> dict[str, Tensor]:
        """
        tokens: (B, S, C) candidate tokens (B^ for MOBIUS); anchors: (S, 4) cxcywh in [0, 1];
        prompts: (P, C); extra: further queries selected after the top K (the one-to-many group
        of hybrid matching, training only). Returns queries (B, K', C) detached content, boxes
        (B, K', 4) cxcywh, logits (B, K', P) and boxes of the selected tokens for the encoder loss,
        and indices (B, K'), K' = min(K + extra, S), best first.
        """
        memory = self.norm(self.proj(tokens))
        logits = self.classifier(memory, prompts)                                    # (B, S, P)
        boxes = (self.box_head(memory) + inverse_sigmoid(anchors)).sigmoid()          # (B, S, 4)
        k = min(self.num_queries + extra, int(tokens.shape[1]))
        scores = logits.max(dim=-1).values                                           # Eq. 2a
        indices = scores.topk(k, dim=1).indices                                      # Eq. 2c
        return {
            "queries": _gather(memory, indices).detach(),
            "boxes": _gather(boxes, indices).detach(),
            "enc_logits": _gather(logits, indices),
            "enc_boxes": _gather(boxes, indices),
            "indices": indices,
        }


def _gather(values: Tensor, indices: Tensor) -> Tensor:
    """values (B, S, D), indices (B, K) -> (B, K, D)."""
    return values.gather(1, indices[..., None].expand(-1, -1, values.shape[-1]))
