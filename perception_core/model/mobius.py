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

    def encode_prompts(self, text_tokens: Tensor, text_mask: Tensor, text_pooled: Tensor,
                       batch: int) -> tuple[TextContext, Tensor]:
        """(P, T, Dt), (P, T) bool valid, (P, Dt) -> text context (B, P*T, C) and z_text (P, C)."""
        tokens = self.text_token_proj(text_tokens).flatten(0, 1)                  # (P*T, C)
        padding = ~text_mask.flatten()[None, :]                                   # (1, P*T)
        context = TextContext(tokens[None].expand(batch, -1, -1), padding)
        return context, self.text_pooled_proj(text_pooled)

    def forward(self, images: Tensor, text_tokens: Tensor, text_mask: Tensor, text_pooled: Tensor,
                prefix_queries: Tensor | None = None, prefix_boxes: Tensor | None = None,
                attn_mask: Tensor | None = None, prune: PruneSettings | None = None) -> dict:
        """
        Args:
            images: (B, 3, H, W) float, normalized; H and W multiples of 32 work best.
            text_tokens: (P, T, Dt) token embeddings of P prompts; text_mask: (P, T) bool, True = real
                token; text_pooled: (P, Dt). One prompt set for the whole batch.
            prefix_queries / prefix_boxes: (B, Np, C) / (B, Np, 4) extra queries placed before the
                selected ones: refined queries of tracks from the previous frame, or denoising queries.
            attn_mask: (Np+K, Np+K) bool self-attention mask, True = blocked (denoising groups).
            prune: overrides the configured pruning (eval mode only).
        Returns dict:
            pred_logits (B, N, P) raw logits (confidence = sigmoid), pred_boxes (B, N, 4) cxcywh in
            [0, 1] of the padded input, pred_masks (B, N, H/4, W/4) logits, query_embed (B, N, C)
            refined queries, kept_indices (N,) int64 into [prefix, selected], kept_per_layer (L,),
            num_prefix (int). Training only: aux_outputs (list of L-1 dicts), enc_outputs.
            N = Np + K without pruning; fewer with pruning (eval mode).
        """
        batch = images.shape[0]
        text, prompts = self.encode_prompts(text_tokens, text_mask, text_pooled, batch)
        s2, pyramid = self.projection(self.backbone(images))
        pixels = self.pixel_decoder(s2, pyramid, text)
        selected = self.selection(pixels.selection_tokens, pixels.selection_anchors, prompts)
        queries, boxes = selected["queries"], selected["boxes"]
        num_prefix = 0
        if prefix_queries is not None:
            num_prefix = prefix_queries.shape[1]
            queries = torch.cat([prefix_queries, queries], dim=1)
            boxes = torch.cat([prefix_boxes, boxes], dim=1)
        if self.training or attn_mask is not None:
            prune = None
        elif prune is None:
            prune = self.prune
        decoded = self.decoder(queries, boxes, pixels.memory, pixels.mask_features, prompts, attn_mask,
                               prune=prune, all_layer_masks=not self.deployed)
        out = {
            "pred_logits": decoded["logits"][-1],
            "pred_boxes": decoded["boxes"][-1],
            "pred_masks": decoded["masks"][-1],
            "query_embed": decoded["hidden"],
            "kept_indices": decoded["kept_indices"],
            "kept_per_layer": decoded["kept_per_layer"],
            "num_prefix": num_prefix,
        }
        if not self.deployed:
            out["aux_outputs"] = [{"pred_logits": l, "pred_boxes": b, "pred_masks": m} for l, b, m in
                                  zip(decoded["logits"][:-1], decoded["boxes"][:-1], decoded["masks"][:-1])]
            out["enc_outputs"] = {"pred_logits": selected["enc_logits"], "pred_boxes": selected["enc_boxes"]}
        return out
