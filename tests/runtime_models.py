"""A tiny MOBIUS model with decisive random weights, exported once per test session and shared by
the runtime tests (test_processor.py, test_infer.py): weights, preset YAML, ONNX and mask graph."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SIZE = 128
TINY = ["hidden_dim=64", "decoder.num_queries=30", "decoder.num_layers=3", "pruning.min_kept=5",
        "decoder.ffn_dim=128", "pixel_decoder.ffn_dim=128", "pixel_decoder.num_blocks=1"]


@dataclass(frozen=True)
class TinyModel:
    weights: Path
    preset: Path
    onnx: Path
    size: int = SIZE


@functools.lru_cache(maxsize=1)
def tiny_model() -> TinyModel:
    import torch
    import yaml

    from perception_core.config import load_model_config, to_dict
    from perception_core.model.build import build_from_name, save_weights
    from perception_core.runtime.export import export_onnx
    from perception_core.runtime.export_kernels import export_mask_graph, mask_graph_path

    folder = Path(tempfile.mkdtemp(prefix="mobius_tiny_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    torch.manual_seed(0)
    model = build_from_name("mobius_nano", TINY)
    with torch.no_grad():  # spread the random confidences over (0, 1) instead of all near the 0.01 prior
        model.decoder.classifier.bias.fill_(0.0)
        model.decoder.classifier.logit_scale.fill_(3.0)
    save_weights(model, folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(to_dict(load_model_config("mobius_nano", TINY))))
    onnx = export_onnx(model, folder / "tiny.onnx", SIZE)
    export_mask_graph(model, mask_graph_path(onnx), SIZE)
    return TinyModel(folder / "tiny.safetensors", folder / "tiny.yaml", onnx)
