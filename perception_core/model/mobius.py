"""MOBIUS: image encoder -> pixel decoder (with text fusion) -> language-guided query selection ->
transformer decoder (with pruning) -> classes, boxes and masks. Assembled by `build.build_model`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .decoder import PruneSettings, TransformerDecoder
from .pixel_decoder_common import TextContext
from .query_selection import LanguageGuidedQuerySelection


class Mobius(nn.Module):
    def __init__(self, backbone: nn.Module, projection: nn.Module, pixel_decoder: nn.Module,
                 selection: LanguageGuidedQuerySelection, decoder: TransformerDecoder, text_dim: int,
                 dim: int, prune: PruneSettings | None):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.pixel_decoder = pixel_decoder
        self.selection = selection
        self.decoder = decoder
        self.text_token_proj = nn.Linear(text_dim, dim)    # E_text at model width
        self.text_pooled_proj = nn.Linear(text_dim, dim)   # z_text at model width
        self.prune = prune                                 # used only in eval mode
        self.deployed = False

    def deploy(self) -> "Mobius":
        """Switch to the deployment graph: eval mode, no auxiliary outputs, masks only from the last
        layer, pruning as configured. Used by export and the runtime."""
        self.eval()
        self.deployed = True
        return self

    def image_features(self, images: Tensor) -> tuple:
        """Backbone and input projection: (S2 factored, [S3, S4, S5, S6]); S3 factored too where the
        pixel decoder reads it so (it forms the dense map itself outside the export's lowered path)."""
        factored = getattr(self.pixel_decoder, "reads_factored_first_level", False)
        return self.projection(self.backbone(images), factored_first=factored)

    def lateral_features(self, images: Tensor):
        """The projected S2 alone (factored): the backbone's first stage and the lateral projection,
        all that bottleneck reuse recomputes between keyframes (runtime/export_kernels.py)."""
        return self.projection.lateral(self.backbone(images, num_stages=1)[0])

    def encode_prompts(self, text_tokens: Tensor, text_mask: Tensor, text_pooled: Tensor,
                       batch: int) -> tuple[TextContext, Tensor]:
        """(P, T, Dt), (P, T) bool valid, (P, Dt) -> text context (B, P*T, C) and z_text (P, C)."""
        tokens = self.text_token_proj(text_tokens).flatten(0, 1)                  # (P*T, C)
        padding = ~text_mask.flatten()[None, :]                                   # (1, P*T)
        context = TextContext(tokens[None].expand(batch, -1, -1), padding)
        return context, self.text_pooled_proj(text_pooled)

    def forward(self, images: Tensor, text_tokens: Tensor, text_mask: Tensor, text_pooled: Tensor,
                prefix_queries: Tensor | None = None, prefix_boxes: Tensor | None = None,
                attn_mask: Tensor | None = None, prune: PruneSettings | None = None,
                one_to_many: int = 0) -> dict:
        """
        Args:
            images: (B, 3, H, W) float, normalized; H and W multiples of 32 work best.
            text_tokens: (P, T, Dt) token embeddings of P prompts; text_mask: (P, T) bool, True = real
                token; text_pooled: (P, Dt). One prompt set for the whole batch.
            prefix_queries / prefix_boxes: (B, Np, C) / (B, Np, 4) extra queries placed before the
                selected ones: refined queries of tracks from the previous frame, or denoising queries.
            attn_mask: (D, D) bool self-attention mask of the first D <= Np prefix queries, True =
                blocked (denoising groups); the other queries never see those D.
            prune: overrides the configured pruning (eval mode only).
            one_to_many: training only: size of an extra query group (the selection's next-best
                tokens) decoded beside the main one but blind to it, for hybrid one-to-many
                matching (H-DETR); returned as out["one_to_many"], never used at inference.
        Returns dict:
            pred_logits (B, N, P) raw logits (confidence = sigmoid), pred_boxes (B, N, 4) cxcywh in
            [0, 1] of the padded input, pred_masks (B, N, H/4, W/4) logits, query_embed (B, N, C)
            refined queries, kept_indices (N,) int64 into [prefix, selected], kept_per_layer (L,),
            num_prefix (int). Deployed only: mask_coarse (B, C, h, w), the coarse part of the mask
            features (the enhanced bottleneck), which bottleneck reuse carries to later frames.
            Training only: aux_outputs (list of L-1 dicts), enc_outputs.
            N = Np + K without pruning; fewer with pruning (eval mode).
        """
        batch = images.shape[0]
        text, prompts = self.encode_prompts(text_tokens, text_mask, text_pooled, batch)
        s2, pyramid = self.image_features(images)
        pixels = self.pixel_decoder(s2, pyramid, text)
        extra = one_to_many if self.training else 0
        selected = self.selection(pixels.selection_tokens, pixels.selection_anchors, prompts, extra)
        queries, boxes = selected["queries"], selected["boxes"]
        extra = max(0, queries.shape[1] - self.selection.num_queries)  # fewer tokens than K + extra
        num_prefix = 0
        if prefix_queries is not None:
            num_prefix = prefix_queries.shape[1]
            queries = torch.cat([prefix_queries, queries], dim=1)
            boxes = torch.cat([prefix_boxes, boxes], dim=1)
        if extra or (attn_mask is not None and attn_mask.shape[0] < queries.shape[1]):
            attn_mask = query_attention_mask(attn_mask, queries.shape[1], extra, queries.device)
        if self.training or attn_mask is not None:
            prune = None
        elif prune is None:
            prune = self.prune
        decoded = self.decoder(queries, boxes, pixels.memory, pixels.mask_features, prompts, attn_mask,
                               prune=prune, all_layer_masks=not self.deployed,
                               sample_first=self.deployed)
        main = queries.shape[1] - extra
        # without an extra group every row is a main row: no slicing (onnxruntime copies a full Slice,
        # 0.13 ms for the deployed graph's outputs)
        rows = slice(0, main) if extra else slice(None)
        out = _prediction_sets(decoded, rows, not self.deployed)
        kept_indices = decoded["kept_indices"][rows] if extra else decoded["kept_indices"]
        out.update(query_embed=_take(decoded["hidden"], rows), kept_indices=kept_indices,
                   kept_per_layer=decoded["kept_per_layer"], num_prefix=num_prefix)
        if self.deployed:
            out["mask_coarse"] = pixels.mask_features.coarse
        else:
            k = self.selection.num_queries
            out["enc_outputs"] = {"pred_logits": selected["enc_logits"][:, :k], "pred_boxes": selected["enc_boxes"][:, :k]}
        if extra:
            out["one_to_many"] = _prediction_sets(decoded, slice(main, None), True)
        return out


def _prediction_sets(decoded: dict, rows: slice, aux: bool) -> dict:
    """Last-layer predictions of the query rows `rows` (and, if aux, those of earlier layers)."""
    def pick(layer: int) -> dict:
        masks = decoded["masks"][layer]
        return {"pred_logits": _take(decoded["logits"][layer], rows),
                "pred_boxes": _take(decoded["boxes"][layer], rows),
                "pred_masks": None if masks is None else _take(masks, rows)}
    out = pick(-1)
    if aux:
        out["aux_outputs"] = [pick(layer) for layer in range(len(decoded["logits"]) - 1)]
    return out


def _take(tensor: Tensor, rows: slice) -> Tensor:
    """tensor[:, rows]; the tensor itself for slice(None)."""
    return tensor if rows == slice(None) else tensor[:, rows]


def query_attention_mask(prefix_mask: Tensor | None, total: int, group: int, device: torch.device) -> Tensor:
    """(total, total) bool self-attention mask, True = blocked.

    prefix_mask (D, D) covers the first D queries (denoising groups): it is kept, and no later query
    may see those D (they carry ground truth). The last `group` queries (one-to-many group) and all
    others cannot see each other."""
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    if prefix_mask is not None:
        size = prefix_mask.shape[0]
        mask[:size, :size] = prefix_mask
        mask[size:, :size] = True
    if group:
        first = total - group
        mask[:first, first:] = True
        mask[first:, :first] = True
    return mask
