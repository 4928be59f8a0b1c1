"""All model construction lives here: ModelConfig -> Mobius."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..config import ModelConfig, load_model_config
from .backbone import build_backbone
from .decoder import PruneSettings, TransformerDecoder
from .mobius import Mobius
from .neck import InputProjection
from .pixel_decoder_bottleneck import BottleneckPixelDecoder
from .pixel_decoder_maskdino import MaskDinoPixelDecoder
from .pixel_decoder_rtdetr import RtDetrPixelDecoder
from .query_selection import LanguageGuidedQuerySelection, ScaledCosineClassifier


def build_pixel_decoder(cfg: ModelConfig):
    pd, dim = cfg.pixel_decoder, cfg.hidden_dim
    multi = cfg.decoder.multi_scale
    if pd.type == "bottleneck":
        return BottleneckPixelDecoder(dim, pd.num_blocks, pd.heads, pd.points, pd.ffn_dim, pd.bottleneck_stride,
                                      pd.text_fusion, multi_scale_memory=multi)
    if pd.type == "maskdino":
        return MaskDinoPixelDecoder(dim, pd.num_blocks, pd.heads, pd.points, pd.ffn_dim, pd.text_fusion,
                                    multi_scale_memory=multi)
    return RtDetrPixelDecoder(dim, pd.num_blocks, pd.heads, pd.ffn_dim, pd.text_fusion, multi_scale_memory=multi)


def build_model(cfg: ModelConfig) -> Mobius:
    dim = cfg.hidden_dim
    backbone = build_backbone(cfg.backbone.variant, cfg.backbone.width_multiplier, cfg.backbone.weights)
    classifier = ScaledCosineClassifier(dim, cfg.logit_scale_init, cfg.prior_prob)
    dec = cfg.decoder
    decoder = TransformerDecoder(dim, dec.num_layers, dec.heads, dec.points, dec.ffn_dim, cfg.memory_levels,
                                 classifier)
    prune = PruneSettings.from_config(cfg.pruning, dec.num_layers) if cfg.pruning.enabled else None
    model = Mobius(
        backbone=backbone,
        projection=InputProjection(backbone.out_channels, dim),
        pixel_decoder=build_pixel_decoder(cfg),
        selection=LanguageGuidedQuerySelection(dim, dec.num_queries, classifier),
        decoder=decoder,
        text_dim=cfg.text.dim,
        dim=dim,
        prune=prune,
    )
    model.config = cfg
    return model


def build_from_name(name_or_path: str = "mobius_nano", overrides=()) -> Mobius:
    return build_model(load_model_config(name_or_path, overrides))


def save_weights(model: Mobius, path: str | Path) -> None:
    """Weights as safetensors; the classifier shared by query selection and decoder is stored once."""
    save_model(model, str(path))


def load_weights(model: Mobius, path: str | Path, strict: bool = True) -> Mobius:
    """Loads safetensors or a weights-only torch checkpoint ({'model': state_dict} or a state dict).
    Never unpickles arbitrary objects: a malicious checkpoint raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' not found; train one with 'mobius train' or pass --weights")
    try:
        if path.suffix == ".safetensors":
            missing, unexpected = load_model(model, str(path), strict=False)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else state
            missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as error:  # corrupt, truncated, wrong shapes, or a refused pickle
        raise ValueError(f"could not load weights from '{path}': {_load_error_summary(error)}") from None
    shared = _shared_aliases(model)
    missing = [k for k in missing if not (shared.get(k, set()) - set(missing))]
    if strict and (missing or unexpected):
        raise ValueError(f"weights '{path}' do not match the model config: missing {missing[:8]}, "
                         f"unexpected {list(unexpected)[:8]}")
    return model


def _load_error_summary(error: Exception) -> str:
    """One line instead of torch's many: a shape mismatch per tensor, or the advice to set
    weights_only=False (never taken for files we cannot trust)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    mismatches = [line for line in lines if line.startswith("size mismatch")]
    if mismatches:
        return (f"they do not match the model config ({len(mismatches)} tensors have another shape, e.g. "
                f"{mismatches[0]}); check the preset / model config")
    if isinstance(error, pickle.UnpicklingError):
        found = next((line for line in lines if "Unsupported global: GLOBAL " in line), "")
        what = found.split("Unsupported global: GLOBAL ")[-1].split(" ")[0] if found else "an object"
        return (f"refused: it holds Python objects ({what}), not only tensors, and is read with "
                f"weights_only=True; re-save it as a state dict or .safetensors")
    return lines[0][:300] if lines else type(error).__name__


def _shared_aliases(model: Mobius) -> dict[str, set[str]]:
    """state-dict key -> other keys naming the same tensor (a shared module registered twice)."""
    by_tensor: dict[int, set[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(value), set()).add(key)
    return {key: keys - {key} for keys in by_tensor.values() for key in keys}
