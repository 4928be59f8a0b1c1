"""Inference backends behind one interface: onnxruntime (default, no torch needed) and torch.

Both take numpy feeds named as in io_names and return numpy outputs named as in io_names, so the
frame processor never knows which one runs:

    decode(feed)            full model: INPUT_NAMES -> OUTPUT_NAMES (batch 1)
    masks(feed, queries)    kernel reuse: images/text_tokens/text_mask + keyframe query_embed
                            (1, N, C) -> pred_masks (1, N, S/4, S/4) logits (export_kernels.py)
    lateral_masks(images, coarse, queries)
                            bottleneck reuse: images + keyframe mask_coarse and query_embed ->
                            coarse and fine logits (1, N, S/4, S/4) each, summing to the masks
                            (export_kernels.LateralGraph)
    has_coarse              whether decode returns mask_coarse (graphs exported before it lack it)

Attributes: size (square input side), hidden_dim (C), num_layers (L), model_config (ModelConfig of
the loaded model, or None when an ONNX file does not match the preset), score_calibration (the map
`mobius calibrate` stored in the model file, or None; score_calibration.py), name.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from .io_names import (LATERAL_GRAPH, LATERAL_OUTPUT_NAMES, MASK_GRAPH, MASK_INPUT_NAMES, MASK_OUTPUT_NAMES,
                       OUTPUT_NAMES, Companion, mask_graph_path)
from .onnx_engine import OnnxEngine, load_error, session_options
from .score_calibration import read_calibration

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


class Backend:
    """Common interface; see the module docstring."""
    name: str
    size: int
    hidden_dim: int
    num_layers: int
    model_config = None
    has_coarse = True
    score_calibration = None

    def decode(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def masks(self, feed: dict[str, np.ndarray], query_embed: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def lateral_masks(self, images: np.ndarray, mask_coarse: np.ndarray,
                      query_embed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class OnnxBackend(Backend):
    """onnxruntime on the CPU with `threads` intra-op threads."""
    name = "onnx"

    def __init__(self, path: str | Path, threads: int, preset: str = "mobius_nano"):
        self.path = Path(path)
        if self.path.suffix != ".onnx":
            raise ValueError(f"backend 'onnx' needs an .onnx model file, got '{self.path}'; export one with "
                             f"'mobius export' or use backend 'torch' for weights files")
        self.engine = OnnxEngine(self.path, threads=threads)
        self.threads = threads
        self.size, self.hidden_dim, self.num_layers = self.engine.size, self.engine.hidden_dim, self.engine.num_layers
        self.model_config = _matching_config(preset, self.hidden_dim, self.num_layers)
        self.has_coarse = "mask_coarse" in self.engine.output_names
        self.score_calibration = self.engine.score_calibration
        self._sessions: dict[str, object] = {}

    def decode(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine(feed)

    def masks(self, feed: dict[str, np.ndarray], query_embed: np.ndarray) -> np.ndarray:
        inputs = {name: feed[name] for name in MASK_INPUT_NAMES if name != "query_embed"}
        inputs["query_embed"] = np.ascontiguousarray(query_embed, dtype=np.float32)
        return self._session(MASK_GRAPH).run(list(MASK_OUTPUT_NAMES), inputs)[0]

    def lateral_masks(self, images: np.ndarray, mask_coarse: np.ndarray,
                      query_embed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = {"images": images, "mask_coarse": mask_coarse,
                  "query_embed": np.ascontiguousarray(query_embed, dtype=np.float32)}
        coarse, fine = self._session(LATERAL_GRAPH).run(list(LATERAL_OUTPUT_NAMES), inputs)
        return coarse, fine                                       # (1, N, S/4, S/4) each

    def _session(self, companion: Companion):
        """The companion graph's session, loaded on first use."""
        if companion.kind not in self._sessions:
            self._sessions[companion.kind] = self._load_companion(companion)
        return self._sessions[companion.kind]

    def _load_companion(self, companion: Companion):
        import onnxruntime as ort

        path = mask_graph_path(self.path, companion.suffix)
        if not path.is_file():
            path = self._export_shipped_companion(companion, path)
        options = session_options(self.threads)
        what = f"{companion.kind} graph"
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise load_error(what, path, error) from None
        names = (tuple(i.name for i in session.get_inputs()), tuple(o.name for o in session.get_outputs()))
        if names != (companion.inputs, companion.outputs):
            raise ValueError(f"{what} '{path}' has inputs {names[0]} and outputs {names[1]}, expected "
                             f"{companion.inputs} and {companion.outputs}; re-export it")
        return session

    def _export_shipped_companion(self, companion: Companion, wanted: Path) -> Path:
        """The shipped model may lack a companion graph: export it once from the shipped weights."""
        from .. import assets

        if self.path.resolve() != assets.ONNX.resolve() or not assets.WEIGHTS.is_file():
            flag = " --lateral" if companion is LATERAL_GRAPH else ""
            command = f"python -m perception_core.runtime.export_kernels --weights W --size {self.size}{flag}"
            raise FileNotFoundError(
                f"{companion.purpose} with backend 'onnx' needs the {companion.kind} graph '{wanted}'; create it "
                f"with '{command} --out {wanted}' or use backend 'torch' (or kernel_reuse 1)")
        from ..model.build import build_from_name, load_weights
        from .export_kernels import export_lateral_graph, export_mask_graph

        model = load_weights(build_from_name(assets.PRESET), assets.WEIGHTS)
        target = Path(tempfile.mkdtemp(prefix="mobius_masks_")) / wanted.name
        log.info("exporting the shipped model's %s graph to %s", companion.kind, target)
        export = export_lateral_graph if companion is LATERAL_GRAPH else export_mask_graph
        return export(model, target, self.size)


class TorchBackend(Backend):
    """The torch model (deployment graph) on the CPU; `threads` sets torch's intra-op threads
    (a process-wide setting in torch)."""
    name = "torch"

    def __init__(self, weights: str | Path, threads: int, preset: str = "mobius_nano", size: int = 384):
        import torch

        from ..model.build import build_from_name, load_weights
        from .export_kernels import LateralGraph, MaskGraph

        weights = Path(weights)
        if weights.suffix not in WEIGHT_SUFFIXES:
            raise ValueError(f"backend 'torch' needs a weights file ({', '.join(WEIGHT_SUFFIXES)}), got "
                             f"'{weights}'; use backend 'onnx' for .onnx files")
        if size <= 0 or size % 32:
            raise ValueError(f"input size {size} must be a positive multiple of 32")
        model = load_weights(build_from_name(preset), weights)  # FileNotFoundError / ValueError
        self.score_calibration = read_calibration(weights)
        self.model = model.deploy()
        self.mask_graph = MaskGraph(self.model)
        self.lateral_graph = LateralGraph(self.model)
        self.model_config = model.config
        self.size, self.hidden_dim = size, model.config.hidden_dim
        self.num_layers = model.config.decoder.num_layers
        self.threads = threads
        torch.set_num_threads(threads)

    def decode(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from ..model.decoder import PruneSettings

        t = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feed.items()}
        prune = PruneSettings(t["prune_thresholds"], t["prune_min_kept"])
        with torch.inference_mode():
            out = self.model(t["images"], t["text_tokens"], t["text_mask"], t["text_pooled"],
                             t["track_queries"], t["track_boxes"], prune=prune)
        return {name: out[name].numpy() for name in OUTPUT_NAMES}

    def masks(self, feed: dict[str, np.ndarray], query_embed: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.mask_graph(torch.from_numpy(feed["images"]), torch.from_numpy(feed["text_tokens"]),
                                  torch.from_numpy(feed["text_mask"]),
                                  torch.from_numpy(np.ascontiguousarray(query_embed, dtype=np.float32)))
        return out.numpy()

    def lateral_masks(self, images: np.ndarray, mask_coarse: np.ndarray,
                      query_embed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            coarse, fine = self.lateral_graph(torch.from_numpy(images), torch.from_numpy(mask_coarse),
                                              torch.from_numpy(np.ascontiguousarray(query_embed, dtype=np.float32)))
        return coarse.numpy(), fine.numpy()


def _matching_config(preset: str, hidden_dim: int, num_layers: int):
    """The preset's ModelConfig if it describes this ONNX graph (width and depth agree), else None."""
    from ..config import ConfigError, load_model_config

    try:
        cfg = load_model_config(preset)
    except ConfigError as error:
        log.warning("model preset %r unavailable (%s): pruning defaults unknown", preset, error)
        return None
    if cfg.hidden_dim != hidden_dim or cfg.decoder.num_layers != num_layers:
        log.warning("ONNX graph (width %d, %d layers) does not match preset %r: pruning defaults unknown",
                    hidden_dim, num_layers, preset)
        return None
    return cfg


def make_backend(backend: str, model: str | Path | None, threads: int, preset: str = "mobius_nano",
                 size: int = 384) -> Backend:
    """Backend by name; model None = the shipped default model (assets)."""
    from .. import assets

    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    if backend == "onnx":
        return OnnxBackend(model if model is not None else assets.require(assets.ONNX), threads, preset)
    if backend == "torch":
        return TorchBackend(model if model is not None else assets.require(assets.WEIGHTS), threads, preset, size)
    raise ValueError(f"unknown backend {backend!r}; choose 'onnx' (onnxruntime) or 'torch'")
