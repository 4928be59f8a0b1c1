"""The per-frame engine shared by every front end (ROS node, GStreamer, bag evaluator, `mobius infer`).

frame (uint8 HxWx3, RGB or BGR, any size) -> letterbox -> model (onnxruntime or torch, in-graph
query pruning, the tracks' queries carried from the previous frame) -> tracker -> per-instance
records at input resolution, an instance-id image and per-stage timings.

Kernel reuse (kernel_reuse = T > 1): every T-th frame is a keyframe that runs the whole model and the
tracker; the T-1 frames in between run only the image encoder and pixel decoder and read masks with
the keyframe's mask kernels (export_kernels.py). They keep the keyframe's ids, labels and scores;
boxes come from the reused masks. A prompt change or a new frame size forces a keyframe. With
reuse_bottleneck the frames in between also reuse the keyframe's coarse mask features (the enhanced
bottleneck) and run only the backbone's first stage and the stride-4 lateral projection, about a
fifteenth of the mask graph (export_kernels.LateralGraph); each object's coarse part is moved after
it by the shift at which it agrees with the fresh stride-4 part (runtime/motion.py).

Scores: a query's confidence in its best prompt, passed through the score calibration stored in the
model file (`mobius calibrate`, score_calibration.py) unless calibrated_scores is False; score_threshold
and the tracker's keep_score apply to that score.

Prompts: `set_prompts` validates and encodes the text once (MiniLM with an LRU cache, or the shipped
embeddings for assets.DEFAULT_PROMPTS); the new prompts take effect on the next `process` call.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..model.prune_schedule import SCHEDULES, thresholds
from .backends import make_backend
from .decoder_cost import DecoderShape, decoder_gflops, mask_flops
from .motion import align, mask_centroids
from .postprocess import box_to_frame, mask_box, mask_to_frame, valid_mask_region
from .preprocess import Letterbox, preprocess
from .prompts import encode_prompts
from .score_calibration import describe_scores
from .tracker import Detection, Tracker, TrackerConfig, TrackOutput


@dataclass(frozen=True)
class ProcessorConfig:
    backend: str = "onnx"            # "onnx" (onnxruntime, default) | "torch"
    model: str | None = None         # .onnx file (onnx) or .safetensors weights (torch); None = shipped default
    preset: str = "mobius_nano"      # model config for the torch backend (and pruning defaults of onnx)
    threads: int = 2                 # inference threads
    score_threshold: float = 0.4     # instances below are dropped (carried tracks use tracker.keep_score)
    calibrated_scores: bool = True   # scores through the model file's fitted map (score_calibration.py), if any
    prune_schedule: str | None = None  # None = the model config's; else "sigmoid"|"exp"|"log"
    prune_bounds: tuple[float, float] | None = None  # (b_low, b_high); None = the model config's
    prune_min_kept: int | None = None  # None = the model config's
    kernel_reuse: int = 1            # T: full decode every T frames, reuse mask kernels in between
    reuse_bottleneck: bool = False   # between keyframes also reuse the keyframe's coarse mask features (T >= 2)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)  # from runtime/tracker.py
    size: int = 384                  # network input side for the torch backend (an ONNX graph fixes its own)
    prompt_embeddings: str | None = None  # prompt embeddings file ('mobius prompts') to take prompts from first

    def __post_init__(self) -> None:
        if self.backend not in ("onnx", "torch"):
            raise ValueError(f"backend={self.backend!r}; choose 'onnx' (onnxruntime) or 'torch'")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads} must be >= 1")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold={self.score_threshold} must be in [0, 1]")
        if self.prune_schedule is not None and self.prune_schedule not in SCHEDULES:
            raise ValueError(f"prune_schedule={self.prune_schedule!r}; choose one of {SCHEDULES} (or None)")
        if self.prune_bounds is not None and (len(self.prune_bounds) != 2
                                              or not 0.0 <= self.prune_bounds[0] <= self.prune_bounds[1] <= 1.0):
            raise ValueError(f"prune_bounds={self.prune_bounds} must be (b_low, b_high) with 0 <= b_low <= b_high <= 1")
        if self.prune_min_kept is not None and self.prune_min_kept < 0:
            raise ValueError(f"prune_min_kept={self.prune_min_kept} must be >= 0")
        if self.kernel_reuse < 1:
            raise ValueError(f"kernel_reuse={self.kernel_reuse} must be >= 1 (1 = decode every frame)")
        if self.reuse_bottleneck and self.kernel_reuse < 2:
            raise ValueError("reuse_bottleneck applies between keyframes: it needs kernel_reuse >= 2 "
                             f"(got {self.kernel_reuse})")
        if not isinstance(self.tracker, TrackerConfig):
            raise ValueError(f"tracker must be a TrackerConfig, got {type(self.tracker).__name__}")


@dataclass
class TrackedInstance:
    track_id: int                    # >= 1, stable across frames, never reused
    label: str                       # the prompt text
    label_index: int                 # index into the current prompt list
    score: float
    box: tuple[float, float, float, float]   # x1, y1, x2, y2 in input-frame pixels
    mask: np.ndarray                 # (H, W) bool at input resolution
    area: int                        # mask pixels
    age: int                         # frames since the track was created


@dataclass
class FrameResult:
    stamp: float
    instances: list[TrackedInstance]  # best score first
    id_image: np.ndarray              # (H, W) uint16, 0 = background, pixel = track_id (overlaps by score)
    timings_ms: dict[str, float]      # "preprocess", "inference", "postprocess", "tracking", "total"
    kept_per_layer: list[int]         # decoder queries kept after each layer
    decoder_gflops: float | None      # estimated decoder cost of this frame (None if unknown)


_FrameOutput = tuple[list[TrackedInstance], list[int], "float | None"]  # instances, kept_per_layer, GFLOPs


@dataclass
class _Keyframe:
    """What frames between keyframes reuse."""
    frame: int
    letterbox: Letterbox
    outputs: list[TrackOutput]       # reported tracks of the keyframe
    query_embed: np.ndarray          # (1, K, C) their refined queries
    mask_coarse: np.ndarray | None = None  # (1, C, h, w) coarse mask features, kept for bottleneck reuse
    centroids: np.ndarray | None = None    # (K, 2) mask centroids of the tracks (bottleneck reuse)
    shifts: np.ndarray | None = None       # (K, 2) their latest motion estimates (bottleneck reuse)


class FrameProcessor:
    def __init__(self, config: ProcessorConfig, prompts: Sequence[str]):
        self.config = config
        self.backend = make_backend(config.backend, config.model, config.threads, config.preset, config.size)
        self._pruning = _prune_inputs(config, self.backend)
        self._calibration = self.backend.score_calibration if config.calibrated_scores else None
        self._lateral = config.reuse_bottleneck            # kernel_reuse >= 2 (ProcessorConfig)
        if self._lateral and not self.backend.has_coarse:
            raise ValueError(f"reuse_bottleneck needs a model graph with the output 'mask_coarse', which "
                             f"'{getattr(self.backend, 'path', config.model)}' lacks (exported before it was "
                             f"added); re-export it with 'mobius export' or set reuse_bottleneck false")
        cfg = self.backend.model_config
        self._shape = DecoderShape.from_config(cfg, self.backend.size) if cfg is not None else None
        self._max_tokens = cfg.text.max_tokens if cfg is not None else 16
        self.tracker = Tracker(config.tracker)
        self._lock = threading.Lock()
        self._pending: tuple[list[str], dict[str, np.ndarray]] | None = None
        self._prompts: list[str] = []
        self._text: dict[str, np.ndarray] = {}
        self._frame_index = -1
        self._keyframe: _Keyframe | None = None
        self.set_prompts(prompts)
        self._apply_pending_prompts()

    @property
    def scores(self) -> str:
        """What the reported scores are: 'raw' or 'calibrated (a=..., b=...)' (score_calibration.py)."""
        return describe_scores(self._calibration)

    @property
    def prompts(self) -> list[str]:
        """The prompts in use (the latest set_prompts, even before the next frame applies them)."""
        with self._lock:
            return list(self._pending[0] if self._pending is not None else self._prompts)

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Validates (ValueError) and encodes the prompts now; they apply from the next process()."""
        names, text = encode_prompts(prompts, self._max_tokens, self.config.prompt_embeddings)
        with self._lock:
            self._pending = (names, text)

    def warm_up(self, runs: int = 2) -> float:
        """Runs the model (and, with kernel reuse, its mask or lateral graph) on a blank frame with the current
        prompts, so that the first camera frame does not pay for the runtime's first-run allocations.
        Tracks, keyframe and frame count are untouched. Returns the last run's ms."""
        size = self.backend.size
        image, _ = preprocess(np.zeros((size, size, 3), np.uint8), size)
        feed = {"images": image, **self._text, **self._pruning}
        hidden = self.backend.hidden_dim
        empty = {"track_queries": np.zeros((1, 0, hidden), np.float32),
                 "track_boxes": np.zeros((1, 0, 4), np.float32)}
        elapsed = 0.0
        for _ in range(max(1, runs)):
            tic = time.perf_counter()
            out = self.backend.decode({**feed, **empty})
            if self.config.kernel_reuse > 1:
                kernels = out["query_embed"][:, :1]
                if kernels.shape[1] == 0:
                    kernels = np.zeros((1, 1, hidden), np.float32)
                if self._lateral:
                    self.backend.lateral_masks(image, out["mask_coarse"], kernels)
                else:
                    self.backend.masks(feed, kernels)
            elapsed = (time.perf_counter() - tic) * 1000
        return elapsed

    def reset(self) -> None:
        """Forget all tracks (a new video). Track ids keep increasing."""
        self.tracker.reset()
        self._keyframe = None
        self._frame_index = -1

    def process(self, frame: np.ndarray, stamp: float = 0.0, color: str = "rgb") -> FrameResult:
        """One frame -> FrameResult. frame: uint8 (H, W, 3) RGB, or BGR with color='bgr'."""
        start = time.perf_counter()
        _check_frame(frame, color)
        prompts_changed = self._apply_pending_prompts()
        image, letterbox = preprocess(frame, self.backend.size, bgr=color == "bgr")
        feed = {"images": image, **self._text, **self._pruning}
        self._frame_index += 1
        timings = {"preprocess": (time.perf_counter() - start) * 1000}
        previous = self._keyframe
        keyframe = (prompts_changed or previous is None or previous.letterbox != letterbox
                    or self._frame_index - previous.frame >= self.config.kernel_reuse)
        if keyframe:
            instances, kept, gflops = self._decode(feed, letterbox, timings)
        else:
            instances, kept, gflops = self._reuse(feed, previous, timings)
        tic = time.perf_counter()
        ids = _id_image(instances, letterbox.height, letterbox.width)
        timings["postprocess"] += (time.perf_counter() - tic) * 1000
        timings["total"] = (time.perf_counter() - start) * 1000
        return FrameResult(float(stamp), instances, ids, timings, kept, gflops)

    # ------------------------------------------------------------------ keyframes

    def _decode(self, feed: dict, letterbox: Letterbox, timings: dict) -> _FrameOutput:
        """Full model + tracker."""
        queries, boxes = self.tracker.track_queries(self.backend.hidden_dim)
        tic = time.perf_counter()
        out = self.backend.decode({**feed, "track_queries": queries, "track_boxes": boxes})
        timings["inference"] = (time.perf_counter() - tic) * 1000
        tic = time.perf_counter()
        detections = self._detections(out, queries.shape[1], letterbox)
        timings["postprocess"] = (time.perf_counter() - tic) * 1000
        tic = time.perf_counter()
        outputs = self.tracker.update(detections, self._frame_index)
        timings["tracking"] = (time.perf_counter() - tic) * 1000
        tic = time.perf_counter()
        instances = []
        for output in outputs:
            row = output.detection.payload
            mask = mask_to_frame(out["pred_masks"][0, row], letterbox)
            instances.append(self._instance(output, box_to_frame(out["pred_boxes"][0, row], letterbox), mask))
        rows = [o.detection.payload for o in outputs]
        self._keyframe = _Keyframe(self._frame_index, letterbox, outputs, out["query_embed"][:, rows])
        if self._lateral:
            self._keyframe.mask_coarse = out["mask_coarse"]
            self._keyframe.centroids = mask_centroids(out["pred_masks"][0, rows])
        timings["postprocess"] += (time.perf_counter() - tic) * 1000
        kept = [int(k) for k in out["kept_per_layer"]]
        gflops = decoder_gflops(self._shape, kept, len(self._prompts)) if self._shape is not None else None
        return instances, kept, gflops

    def _detections(self, out: dict, num_prefix: int, letterbox: Letterbox) -> list[Detection]:
        """Rows that may become instances: carried queries above keep_score, others above score_threshold."""
        logits = out["pred_logits"][0]                                   # (N, P)
        if logits.shape[0] == 0:
            return []
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -50.0, 50.0)))
        labels = probs.argmax(axis=1)
        scores = probs[np.arange(len(probs)), labels]
        if self._calibration is not None:                                # strictly increasing: same labels
            scores = self._calibration(scores)
        origin = out["kept_indices"]
        low = valid_mask_region(out["pred_masks"][0], letterbox) > 0     # (N, h, w) bool
        keep, threshold = self.config.tracker.keep_score, self.config.score_threshold
        detections = []
        for row in range(len(scores)):
            prefix = int(origin[row]) if origin[row] < num_prefix else None
            if scores[row] < (keep if prefix is not None else threshold):
                continue
            detections.append(Detection(float(scores[row]), int(labels[row]), low[row], out["query_embed"][0, row],
                                        out["pred_boxes"][0, row].copy(), prefix, row))
        return detections

    # ------------------------------------------------------------------ frames between keyframes

    def _reuse(self, feed: dict, keyframe: _Keyframe, timings: dict) -> _FrameOutput:
        """Image encoder + pixel decoder only (or, with bottleneck reuse, the stride-4 lateral map
        only); the keyframe's kernels give the masks."""
        tic = time.perf_counter()
        masks = None
        if keyframe.outputs and keyframe.mask_coarse is not None:
            coarse, fine = self.backend.lateral_masks(feed["images"], keyframe.mask_coarse, keyframe.query_embed)
            aligned, keyframe.shifts = align(coarse[0], fine[0], keyframe.centroids, keyframe.shifts)
            masks = aligned[None]
        elif keyframe.outputs:
            masks = self.backend.masks(feed, keyframe.query_embed)
        timings["inference"] = (time.perf_counter() - tic) * 1000
        tic = time.perf_counter()
        instances, box = [], keyframe.letterbox
        for index, output in enumerate(keyframe.outputs):
            mask = mask_to_frame(masks[0, index], box)
            bounds = mask_box(mask)
            if bounds is None:
                continue                                                 # the object vanished: wait for a keyframe
            instances.append(self._instance(output, bounds, mask, self._frame_index - keyframe.frame))
            x1, y1, x2, y2 = (v * box.scale / box.size for v in bounds)
            self.tracker.update_query_box(output.track_id, np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]))
        timings["postprocess"] = (time.perf_counter() - tic) * 1000
        timings["tracking"] = 0.0
        gflops = mask_flops(self._shape, len(keyframe.outputs)) / 1e9 if self._shape is not None else None
        return instances, [], gflops

    # ------------------------------------------------------------------ helpers

    def _instance(self, output: TrackOutput, box, mask: np.ndarray, extra_age: int = 0) -> TrackedInstance:
        detection = output.detection
        return TrackedInstance(output.track_id, self._prompts[detection.label], detection.label, detection.score,
                               tuple(float(v) for v in box), mask, int(mask.sum()), output.age + extra_age)

    def _apply_pending_prompts(self) -> bool:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return False
        changed = pending[0] != self._prompts
        self._prompts, self._text = pending
        return changed


def _check_frame(frame, color: str) -> None:
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color={color!r}; pass 'rgb' or 'bgr'")
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"frame must be uint8 (H, W, 3) with H, W > 0, got {frame.dtype} {frame.shape}; "
                         f"convert grey or RGBA images to 3 channels first")


def _id_image(instances: list[TrackedInstance], height: int, width: int) -> np.ndarray:
    """uint16 (H, W): 0 background, else the track id of the best-scoring instance on the pixel."""
    image = np.zeros((height, width), dtype=np.uint16)
    for instance in sorted(instances, key=lambda i: i.score):            # best painted last
        image[instance.mask] = instance.track_id
    return image


def _prune_inputs(config: ProcessorConfig, backend) -> dict[str, np.ndarray]:
    """prune_thresholds (L,) and prune_min_kept () from the model config and the overrides."""
    from ..config import PruningConfig

    cfg = backend.model_config
    pruning = cfg.pruning if cfg is not None else PruningConfig(enabled=False)
    overridden = (config.prune_schedule, config.prune_bounds, config.prune_min_kept) != (None, None, None)
    layers = backend.num_layers
    if not (pruning.enabled or overridden):
        return {"prune_thresholds": np.zeros(layers, np.float32), "prune_min_kept": np.array(0, np.int64)}
    low, high = config.prune_bounds if config.prune_bounds is not None else (pruning.b_low, pruning.b_high)
    taus = thresholds(layers, config.prune_schedule or pruning.schedule, low, high, pruning.beta, pruning.alpha)
    min_kept = pruning.min_kept if config.prune_min_kept is None else config.prune_min_kept
    return {"prune_thresholds": np.asarray(taus, np.float32), "prune_min_kept": np.array(min_kept, np.int64)}
