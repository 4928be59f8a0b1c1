"""Post-hoc score calibration: the output score as an estimate of the mask IoU.

The calibration loss (MOBIUS Eq. 4) trains a query's confidence towards the IoU of its prediction,
so a threshold on the score should mean "masks at least this good". A model trained briefly is not
there yet (the shipped one's confidence is 0.15 below the IoU it reaches, docs/MODEL_CARD.md), and
then a threshold keeps almost nothing. `fit` finds the map

    s' = sigmoid(a * logit(s) + b),   a > 0      (Platt scaling, regressed onto the IoU)

from a held-out split's (confidence, IoU with the matched ground truth) pairs
(evaluation.calibration.match_ious). Being strictly increasing it keeps every ranking, so COCO AP and
the choice of each query's best prompt are unchanged; only what a threshold keeps changes.

`mobius calibrate` stores the map in the model file itself, under METADATA_KEY as JSON: ONNX
metadata_props or safetensors __metadata__, so it travels with the weights and both backends read it
(`read_calibration`). Query pruning inside the graph keeps using the model's own confidence.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METADATA_KEY = "mobius.score_calibration"
CALIBRATED_SUFFIXES = (".onnx", ".safetensors")   # files that can hold the map
_EPS = 1e-6                                       # scores are clipped to [EPS, 1 - EPS] before the logit


@dataclass(frozen=True)
class ScoreCalibration:
    """s' = sigmoid(a * logit(s) + b); `fit_info` says where it was fitted (split, n, ECE before/after)."""
    a: float = 1.0
    b: float = 0.0
    fit_info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b) and self.a > 0):
            raise ValueError(f"score calibration needs finite a > 0 and finite b, got a={self.a}, b={self.b}")

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * _logit(scores) + self.b)))

    def to_json(self) -> str:
        return json.dumps({"kind": "platt", "a": self.a, "b": self.b, **self.fit_info})

    @staticmethod
    def from_json(text: str, source: str = "model file") -> "ScoreCalibration":
        try:
            record = json.loads(text)
            if record.get("kind") != "platt":
                raise ValueError(f"unknown kind {record.get('kind')!r}")
            info = {k: v for k, v in record.items() if k not in ("kind", "a", "b")}
            return ScoreCalibration(float(record["a"]), float(record["b"]), info)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"{source}: unreadable {METADATA_KEY} ({error}); re-run 'mobius calibrate' on it") from None


def describe_scores(calibration: ScoreCalibration | None) -> str:
    """What reported scores are, for logs and reports: 'raw' or 'calibrated (a=..., b=...)'."""
    if calibration is None:
        return "raw"
    return f"calibrated (a={calibration.a:.3f}, b={calibration.b:.3f})"


def fit(confidences: np.ndarray, ious: np.ndarray, fit_info: dict | None = None) -> ScoreCalibration:
    """Least-squares fit of (a, b) so that s' predicts the IoU (unmatched detections have IoU 0)."""
    from scipy.optimize import least_squares

    confidences, ious = np.asarray(confidences, np.float64), np.asarray(ious, np.float64)
    if len(confidences) != len(ious) or len(confidences) < 2:
        raise ValueError(f"fitting needs at least 2 (confidence, IoU) pairs of equal length, got "
                         f"{len(confidences)} and {len(ious)}")
    logits = _logit(confidences)

    def residuals(params: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(params[0] * logits + params[1]))) - ious

    result = least_squares(residuals, x0=[1.0, 0.0], bounds=([1e-3, -20.0], [100.0, 20.0]))
    return ScoreCalibration(float(result.x[0]), float(result.x[1]), dict(fit_info or {}))


def _logit(scores) -> np.ndarray:
    """logit of float64 scores clipped to [EPS, 1 - EPS]."""
    clipped = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(clipped / (1.0 - clipped))


def check_target(path: str | os.PathLike) -> Path:
    """`path` as a model file that can hold the map: ValueError for another kind of file,
    FileNotFoundError when it is missing."""
    path = Path(path)
    if path.suffix not in CALIBRATED_SUFFIXES:
        raise ValueError(f"'{path}' cannot hold a score calibration: use an .onnx or .safetensors model file "
                         f"(suffixes {', '.join(CALIBRATED_SUFFIXES)}); 'mobius export' writes ONNX, training "
                         "checkpoints convert with the ship script")
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' not found")
    return path


def read_calibration(path: str | os.PathLike) -> ScoreCalibration | None:
    """The map stored in an .onnx or .safetensors model file; None when it has none (or is another
    kind of file). ValueError when the stored record is broken."""
    path = Path(path)
    if path.suffix not in CALIBRATED_SUFFIXES:
        return None
    return calibration_from_metadata(_read_metadata(path), f"'{path}'")


def calibration_from_metadata(metadata: dict[str, str], source: str) -> ScoreCalibration | None:
    """The map in a model file's string metadata (an onnxruntime session's custom_metadata_map)."""
    text = metadata.get(METADATA_KEY)
    return None if text is None else ScoreCalibration.from_json(text, source)


def write_calibration(path: str | os.PathLike, calibration: ScoreCalibration | None) -> Path:
    """Stores (or, with None, removes) the map in the model file; the file is replaced atomically and
    everything else in it is kept."""
    path = check_target(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        (_write_onnx if path.suffix == ".onnx" else _write_safetensors)(path, Path(temporary), calibration)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' not found")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as file:
        return dict(file.metadata() or {})


def _write_onnx(path: Path, target: Path, calibration: ScoreCalibration | None) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in kept + ([(METADATA_KEY, calibration.to_json())] if calibration is not None else []):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(target))


def _write_safetensors(path: Path, target: Path, calibration: ScoreCalibration | None) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as file:
        metadata = {k: v for k, v in (file.metadata() or {}).items() if k != METADATA_KEY}
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    if calibration is not None:
        metadata[METADATA_KEY] = calibration.to_json()
    save_file(tensors, str(target), metadata=metadata)
