"""int8 quantization of the default model with onnxruntime.quantization (paper Sec. 4.2 deploys
uint8 on mobile): speed-up and mask AP change on the test split. The quantizers are the library's
(perception_core/runtime/quantize.py, `mobius quantize`).

Variants (each written once per source model to .bench_cache/int8/):
  dynamic   int8 weights of MatMul/Gemm, activations quantized on the fly (convolutions stay float:
            onnxruntime's dynamic ConvInteger is slower than float Conv).
  static    QDQ: per-channel int8 weights and uint8 activations of Conv, MatMul and Gemm, ranges
            from a MinMax calibration over generated frames with the default prompts, in three forms:
            `mobius quantize`'s (the cosine classifiers float), everything quantized (classifiers
            too: what that costs), and Conv only (the image encoder and projections). MatMuls whose
            weight QLinearMatMul cannot take per-channel stay float in all of them.
AP: COCO mask/box AP with `mobius eval`'s code path (ModelRunner.from_onnx + predict_coco + score) on
the first images of data/synth/test (generated into the cache when absent), all its categories as
prompts.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perf_common import (BLOCK, Section, Settings, code_hash, fmt_ms, machine_line, onnx_session, relative,
                         time_interleaved)
from perception_core.runtime import quantize

DYNAMIC_FILE = "dynamic.onnx"   # the int8 dynamic variant in a model's variants folder
CLASSIFIERS_FLOAT = "int8 static QDQ (mobius quantize: cosine classifiers float)"
ALL_STATIC = "int8 static QDQ, classifiers int8 too"


def variants_folder(model_path: Path, cache: Path) -> Path:
    """The cache folder of one source model's variants: keyed by its contents and the quantizer code."""
    from perception_core.ablation.data import file_digest

    key = code_hash(file_digest(model_path), ("bench/perf_int8.py", "perception_core/runtime/quantize.py"))
    folder = cache / f"{model_path.stem}_{key}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def dynamic_model(model_path: Path, cache: Path) -> Path:
    """The int8 dynamic variant of `model_path` (also timed beside the float model by perf_latency)."""
    folder = variants_folder(model_path, cache)
    return quantize.quantize_dynamic_model(quantize.prepare(model_path, folder)[0], folder / DYNAMIC_FILE)


def quantized_models(model_path: Path, cache: Path, calibration_frames: list[np.ndarray]) -> dict:
    """{variant name: path} for float32 and the int8 variants, plus 'preprocessed' (bool)."""
    from perception_core import assets
    from perception_core.runtime.onnx_engine import OnnxEngine

    folder = variants_folder(model_path, cache)
    source, ok = quantize.prepare(model_path, folder)
    calibrated = f"{len(calibration_frames)}frames"
    engine = OnnxEngine(model_path, threads=1)
    classifiers = quantize.float_nodes(model_path, source).classifiers

    def feeds() -> quantize.CalibrationFeeds:
        return quantize.CalibrationFeeds.for_model(engine, calibration_frames, list(assets.DEFAULT_PROMPTS),
                                                   assets.PRESET)
    print("[bench] int8: quantizing (dynamic, static QDQ with calibration) ...", flush=True)
    return {"float32": model_path,
            "int8 dynamic": quantize.quantize_dynamic_model(source, folder / DYNAMIC_FILE),
            CLASSIFIERS_FLOAT: quantize.quantize_static_model(
                source, folder / f"static_qdq_cls_float_{calibrated}.onnx", feeds(), keep_float=classifiers),
            ALL_STATIC: quantize.quantize_static_model(
                source, folder / f"static_qdq_{calibrated}.onnx", feeds()),
            "int8 static QDQ, Conv only": quantize.quantize_static_model(
                source, folder / f"static_qdq_conv_{calibrated}.onnx", feeds(), ("Conv",)),
            "preprocessed": ok}


def eval_split(settings: Settings) -> Path:
    """data/synth/test/instances.json, or a generated test split in the cache."""
    from perf_common import ROOT

    shipped = ROOT / "data" / "synth" / "test" / "instances.json"
    if shipped.is_file():
        return shipped
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.writer import write_split

    generated = settings.cache / "synth" / "test" / "instances.json"
    if not generated.is_file():
        write_split(settings.cache / "synth", "test", 200, 0, 3, make_config("normal"), progress=False)
    return generated


def mask_ap(path: Path, annotations: Path, limit: int, threads: int) -> dict:
    """COCO mask and box AP of an ONNX model on the first `limit` images (mobius eval's path)."""
    from perception_core import assets
    from perception_core.evaluation.eval_command import default_image_root, score
    from perception_core.evaluation.predict import ModelRunner, predict_coco
    from perception_core.training.annotations import read_annotation_file

    data = read_annotation_file(annotations)
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    runner = ModelRunner.from_onnx(path, assets.PRESET, threads)
    detections, _ = predict_coco(runner, data, default_image_root(annotations), [c["name"] for c in categories],
                                 [int(c["id"]) for c in categories], limit=limit, progress=True)
    metrics = score(data, detections, categories, image_ids=[d.image_id for d in detections])
    return {"mask_AP": metrics["mask"]["AP"], "box_AP": metrics["box"]["AP"], "images": metrics["images"]}


def run(settings: Settings) -> Section:
    from perf_common import clip_frames
    from perf_efficiency import model_feed
    from perf_latency import default_model

    load = os.getloadavg()
    frames, _ = clip_frames(8 if settings.quick else 32, seed=5)
    model = default_model(settings, frames[0])
    paths = quantized_models(Path(model.onnx), settings.cache / "int8", frames)
    preprocessed_ok = paths.pop("preprocessed")
    feed = model_feed(model.onnx, frames[len(frames) // 2])
    sessions = {name: onnx_session(path, settings.threads) for name, path in paths.items()}
    timings = time_interleaved({n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()},
                               settings.repeats, settings.warmup, BLOCK)
    annotations = eval_split(settings)
    limit = 50 if settings.quick else 200
    accuracy = {name: mask_ap(path, annotations, limit, settings.threads) for name, path in paths.items()}
    sizes = {name: Path(path).stat().st_size / 1e6 for name, path in paths.items()}
    data = {"ms": {n: t.median for n, t in timings.items()}, "accuracy": accuracy, "sizes": sizes,
            "annotations": str(annotations), "limit": limit, "preprocessed": preprocessed_ok,
            "trained": model.trained}
    return Section("int8", "int8 quantization (onnxruntime)", render(data, settings, load), data=data)


def render(data: dict, settings: Settings, load) -> str:
    base_ms = data["ms"]["float32"]
    base_ap = data["accuracy"]["float32"]
    model = "the shipped mobius_nano" if data["trained"] else "mobius_nano with RANDOM weights (AP meaningless)"
    images = data["accuracy"]["float32"]["images"]
    lines = [f"Conditions: {model}; latency: one letterboxed clip frame, 4 default prompts, configured pruning, "
             f"onnxruntime {settings.threads} threads, {settings.repeats} round-robin runs, median; AP: first "
             f"{images} images of `{relative(data['annotations'])}`, "
             f"all categories as prompts, `mobius eval`'s code path. quant_pre_process "
             f"{'applied' if data['preprocessed'] else 'FAILED (graph quantized as exported)'}. "
             f"{machine_line(load)}.", "",
             "| variant | file MB | median ms | speed-up | mask AP | box AP | mask AP change |",
             "|---|---|---|---|---|---|---|"]
    for name, ms in data["ms"].items():
        acc = data["accuracy"][name]
        lines.append(f"| {name} | {data['sizes'][name]:.1f} | {fmt_ms(ms)} | {base_ms / ms:.2f}x "
                     f"| {100 * acc['mask_AP']:.2f} | {100 * acc['box_AP']:.2f} "
                     f"| {100 * (acc['mask_AP'] - base_ap['mask_AP']):+.2f} |")
    paying = [name for name, ms in data["ms"].items() if name != "float32" and base_ms / ms >= 1.05
              and data["accuracy"][name]["mask_AP"] - base_ap["mask_AP"] >= -0.005]
    lines += ["", "AP in percent (COCO 0.5:0.95). Speed-up = float32 median / variant median. "
                  + (f"Pays (>= 5% faster, mask AP within 0.5 points): {', '.join(paying)}." if paying else
                     "No variant is both >= 5% faster and within 0.5 mask AP points of float32: int8 does not pay "
                     "for this model on this CPU with onnxruntime."), ""]
    ours, everything = data["accuracy"].get(CLASSIFIERS_FLOAT), data["accuracy"].get(ALL_STATIC)
    if ours and everything:
        lines += [f"The cosine classifiers decide static int8's AP: quantized too, mask AP "
                  f"{100 * everything['mask_AP']:.2f}; kept float (`mobius quantize`), {100 * ours['mask_AP']:.2f} "
                  f"(float32 {100 * base_ap['mask_AP']:.2f}). They scale a cosine in [-1, 1] by exp(s) into logits, so "
                  f"int8 steps of the normalised embeddings become logit errors larger than the gaps between "
                  f"queries. Whether int8 is faster depends on the board's int8 kernels: measure there.", ""]
    return "\n".join(lines)
