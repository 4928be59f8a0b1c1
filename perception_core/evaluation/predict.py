"""Run a MOBIUS model (torch or ONNX) over the images of a COCO json and collect detections.

    runner = ModelRunner.from_torch(load_torch_model("w.safetensors", "mobius_nano"), size=384)
    # or  ModelRunner.from_onnx("model.onnx", preset="mobius_nano")
    detections = predict_coco(runner, data, image_root, prompts, category_ids)

Every image goes through the deployment path: letterbox to size x size (runtime.preprocess), one
forward pass with all prompts at once (text encoded once by MiniLM), the model's configured query
pruning, then runtime.postprocess.to_instances (one label per query: its most confident prompt;
boxes and masks mapped back to image pixels). The `top_k` most confident queries of each image are
kept, with no score threshold, as COCO AP expects. Scores go through the runner's score calibration
(the map stored in the model file, runtime/score_calibration.py) when it has one, as in the runtime.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .detections import ImageDetections, to_rles

if TYPE_CHECKING:
    from ..runtime.score_calibration import ScoreCalibration

log = logging.getLogger(__name__)
CHECKPOINT_SUFFIXES = (".pt", ".pth")


def load_torch_model(weights: str | os.PathLike, preset: str | None = None, overrides: Sequence[str] = ()):
    """Mobius with `weights` loaded (safetensors or a weights-only torch checkpoint).

    The architecture is `preset` (+ key=value `overrides`); when preset is None, a training
    checkpoint's own model section (preset + overrides) is used, else "mobius_nano"."""
    from ..model.build import build_model, load_weights
    from ..config import load_model_config

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file '{weights}' not found; train one with 'mobius train' or pass "
                                f"--weights (or --onnx for an exported model)")
    if preset is None and weights.suffix in CHECKPOINT_SUFFIXES:
        config = _checkpoint_model_config(weights, overrides)
    else:
        config = load_model_config(preset or "mobius_nano", overrides)
    return load_weights(build_model(config), weights).deploy()


def _checkpoint_model_config(path: Path, overrides: Sequence[str]):
    import torch

    from ..config import deep_merge, parse_overrides
    from ..training.recipe import ModelSection

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file or a refused pickle
        raise ValueError(f"could not read checkpoint '{path}': {error}") from None
    section = checkpoint.get("config", {}).get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(section, dict):
        from ..config import load_model_config

        return load_model_config("mobius_nano", overrides)
    merged = deep_merge(dict(section.get("overrides") or {}), parse_overrides(overrides))
    return ModelSection(section.get("preset", "mobius_nano"), merged).build_config()


@dataclass
class ModelRunner:
    """One forward pass per image: decode(images (1, 3, S, S) float32, text) -> outputs without the
    batch dimension: pred_logits (N, P), pred_boxes (N, 4) cxcywh in [0, 1], pred_masks
    (N, S/4, S/4) logits, kept_per_layer (L,). `calibration` maps the scores (None: raw confidence)."""
    decode: Callable[[np.ndarray, object], dict[str, np.ndarray]]
    size: int
    max_tokens: int
    description: str
    calibration: "ScoreCalibration | None" = None

    @property
    def scores(self) -> str:
        """What the detection scores are, for reports: 'raw' or 'calibrated (a=..., b=...)'."""
        from ..runtime.score_calibration import describe_scores

        return describe_scores(self.calibration)

    @staticmethod
    def from_torch(model, size: int = 384, prune: bool = True, calibration: "ScoreCalibration | None" = None
                   ) -> "ModelRunner":
        """A Mobius model (torch); prune=False disables its query pruning. The model is switched to
        its deployment graph (model.deploy(): eval mode, last-layer outputs only); a training loop
        evaluating mid-run should pass a copy. `calibration`: read_calibration(weights file) or None."""
        import torch

        from ..model.decoder import PruneSettings

        _check_size(size)
        model = model.deploy()
        settings = model.prune if prune else None
        no_pruning = PruneSettings((0.0,) * model.config.decoder.num_layers, 0)

        def decode(images: np.ndarray, text) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                out = model(torch.from_numpy(images), text.tokens, text.mask, text.pooled,
                            prune=settings if settings is not None else no_pruning)
            return {name: out[name][0].numpy() if name != "kept_per_layer" else out[name].numpy()
                    for name in ("pred_logits", "pred_boxes", "pred_masks", "kept_per_layer")}

        return ModelRunner(decode, size, model.config.text.max_tokens, f"torch {model.config.name}", calibration)

    @staticmethod
    def from_onnx(path: str | os.PathLike, preset: str = "mobius_nano", threads: int = 2,
                  prune: bool = True, calibrated: bool = True) -> "ModelRunner":
        """An exported model (onnxruntime). Its pruning thresholds come from `preset`'s config when
        the graph matches it (width and depth), else pruning is off (with a warning). calibrated:
        apply the score calibration stored in the file, if any."""
        from ..runtime.onnx_engine import OnnxEngine

        engine = OnnxEngine(path, threads=threads)  # FileNotFoundError / ValueError with the fix
        calibration = engine.score_calibration if calibrated else None
        thresholds, min_kept, max_tokens = onnx_run_settings(engine, preset, prune)
        hidden = engine.hidden_dim

        def decode(images: np.ndarray, text) -> dict[str, np.ndarray]:
            out = engine({"images": images, "text_tokens": text.tokens.numpy(), "text_mask": text.mask.numpy(),
                          "text_pooled": text.pooled.numpy(),
                          "track_queries": np.zeros((1, 0, hidden), np.float32),
                          "track_boxes": np.zeros((1, 0, 4), np.float32),
                          "prune_thresholds": thresholds, "prune_min_kept": min_kept})
            return {name: out[name][0] if name != "kept_per_layer" else out[name]
                    for name in ("pred_logits", "pred_boxes", "pred_masks", "kept_per_layer")}

        return ModelRunner(decode, engine.size, max_tokens, f"onnx {Path(path).name}", calibration)


def _check_size(size: int) -> None:
    if size <= 0 or size % 32:
        raise ValueError(f"input size {size} must be a positive multiple of 32")


def onnx_run_settings(engine, preset: str, prune: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(prune_thresholds (L,), prune_min_kept (), text max_tokens) for an ONNX graph."""
    from ..config import ConfigError, load_model_config
    from ..model.decoder import PruneSettings

    layers = engine.num_layers
    off = (np.zeros(layers, np.float32), np.array(0, np.int64))
    try:
        cfg = load_model_config(preset)
    except ConfigError as error:
        log.warning("model preset %r unusable (%s): ONNX evaluation runs without query pruning", preset, error)
        return (*off, 16)
    matches = cfg.hidden_dim == engine.hidden_dim and cfg.decoder.num_layers == layers
    if not matches:
        log.warning("ONNX graph (width %d, %d decoder layers) does not match preset %r: no query pruning",
                    engine.hidden_dim, layers, preset)
    if not (prune and matches and cfg.pruning.enabled):
        return (*off, cfg.text.max_tokens)
    settings = PruneSettings.from_config(cfg.pruning, layers)
    return (np.asarray(settings.taus, np.float32), np.array(settings.min_kept, np.int64), cfg.text.max_tokens)


def encode_prompts(prompts: Sequence[str], max_tokens: int):
    """MiniLM TextEmbeddings of the prompt list (validated; ValueError names the bad prompt)."""
    from ..model.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder(max_tokens=max_tokens, cache_size=0).encode(list(prompts))


def detect_image(runner: ModelRunner, image: np.ndarray, text, category_ids: np.ndarray, image_id: int,
                 top_k: int = 100) -> tuple[ImageDetections, np.ndarray]:
    """Detections of one uint8 (H, W, 3) RGB image (top_k most confident queries, masks at image
    resolution as RLE) and the decoder's kept_per_layer (L,)."""
    from ..runtime.postprocess import to_instances
    from ..runtime.preprocess import preprocess

    tensor, letterbox = preprocess(image, runner.size)
    out = runner.decode(tensor, text)
    instances = to_instances(out["pred_logits"], out["pred_boxes"], out["pred_masks"], letterbox, 0.0, top_k)
    height, width = image.shape[:2]
    masks = np.stack([inst.mask for inst in instances]) if instances else np.zeros((0, height, width), bool)
    scores = np.asarray([inst.score for inst in instances], np.float64)
    if runner.calibration is not None:   # strictly increasing: the top-k and the labels stay the same
        scores = runner.calibration(scores)
    detections = ImageDetections(image_id, scores.tolist(),
                                 category_ids[[inst.label for inst in instances]].reshape(-1),
                                 np.asarray([inst.box for inst in instances], np.float64).reshape(-1, 4),
                                 to_rles(masks, image_id))
    return detections, out["kept_per_layer"]


def predict_coco(runner: ModelRunner, data: dict, image_root: str | os.PathLike, prompts: Sequence[str],
                 category_ids: Sequence[int], top_k: int = 100, limit: int | None = None,
                 progress: bool = True) -> tuple[list[ImageDetections], dict]:
    """Detections for the images of a COCO json `data` read from `image_root`.

    prompts[i] is the text of category category_ids[i]. Returns the detections and run statistics
    (images, mean kept queries per decoder layer)."""
    from tqdm import tqdm

    from ..training.annotations import check_image_files, read_image

    if len(prompts) != len(category_ids) or not prompts:
        raise ValueError(f"{len(prompts)} prompts for {len(category_ids)} category ids; give one prompt per category")
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    records = data["images"][:limit] if limit else data["images"]
    root = Path(image_root)
    check_image_files(root, [record["file_name"] for record in records], "the annotation file")
    text = encode_prompts(prompts, runner.max_tokens)
    ids = np.asarray(category_ids, dtype=np.int64)
    detections, kept = [], []
    for record in tqdm(records, desc="eval images", unit="image", disable=not progress):
        image = read_image(root / record["file_name"])
        found, kept_per_layer = detect_image(runner, image, text, ids, int(record["id"]), top_k)
        detections.append(found)
        kept.append(np.asarray(kept_per_layer, dtype=np.float64))
    stats = {"images": len(records), "model": runner.description, "size": runner.size, "scores": runner.scores,
             "kept_per_layer_mean": np.mean(kept, axis=0).tolist() if kept else []}
    return detections, stats
