"""A tiny MOBIUS model with decisive random weights shared by the runtime tests: weights and preset
YAML (tiny_weights, for the torch backend), plus the exported ONNX, kernel-reuse mask graph and
bottleneck-reuse lateral graph (tiny_model, for onnxruntime). The same seed gives the same weights in both.

Exporting costs ~40 s on a busy 2-core machine, so the files are cached in .pytest_cache/ under a
hash of everything that determines them (model, config and export code, torch version, TINY, SIZE);
any change to that code re-exports.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128
TINY = ["hidden_dim=64", "decoder.num_queries=30", "decoder.num_layers=3", "pruning.min_kept=5",
        "decoder.ffn_dim=128", "pixel_decoder.ffn_dim=128", "pixel_decoder.num_blocks=1"]
_SOURCES = ("perception_core/model/*.py", "perception_core/config.py", "config/models/mobius_nano.yaml",
            "perception_core/runtime/export.py", "perception_core/runtime/export_kernels.py",
            "perception_core/runtime/io_names.py", "tests/runtime_models.py")


@dataclass(frozen=True)
class TinyModel:
    weights: Path
    preset: Path
    onnx: Path | None
    size: int = SIZE


def _fingerprint() -> str:
    import torch

    digest = hashlib.sha256(f"{torch.__version__} {TINY} {SIZE}".encode())
    for pattern in _SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _model():
    import torch

    from perception_core.model.build import build_from_name

    torch.manual_seed(0)
    model = build_from_name("mobius_nano", TINY)
    with torch.no_grad():  # spread the random confidences over (0, 1) instead of all near the 0.01 prior
        model.decoder.classifier.bias.fill_(0.0)
        model.decoder.classifier.logit_scale.fill_(3.0)
    return model


def _write(folder: Path, onnx: bool) -> None:
    import yaml

    from perception_core.config import load_model_config, to_dict
    from perception_core.model.build import save_weights
    from perception_core.runtime.export import export_onnx
    from perception_core.runtime.export_kernels import export_reuse_graphs

    model = _model()
    save_weights(model, folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(to_dict(load_model_config("mobius_nano", TINY))))
    if onnx:
        export_reuse_graphs(model, export_onnx(model, folder / "tiny.onnx", SIZE), SIZE)


def _cached(kind: str, onnx: bool) -> Path:
    folder = ROOT / ".pytest_cache" / "mobius_tiny_model" / f"{kind}-{_fingerprint()}"
    if not (folder / "tiny.yaml").is_file():
        partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _write(partial, onnx)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)       # concurrent test runs never see half-written files
    return folder


@functools.lru_cache(maxsize=1)
def tiny_model() -> TinyModel:
    """Weights, preset and the exported ONNX + mask graph (the export takes ~40 s once)."""
    folder = _cached("onnx", onnx=True)
    return TinyModel(folder / "tiny.safetensors", folder / "tiny.yaml", folder / "tiny.onnx")


@functools.lru_cache(maxsize=1)
def tiny_weights() -> TinyModel:
    """Weights and preset only (torch backend; seconds). `onnx` is None."""
    folder = _cached("torch", onnx=False)
    return TinyModel(folder / "tiny.safetensors", folder / "tiny.yaml", None)
