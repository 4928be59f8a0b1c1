"""int8 versions of an exported model with onnxruntime.quantization (paper Sec. 4.2 deploys uint8 on
mobile), for boards whose int8 kernels are faster than float ones.

- `prepare`: the float graph as quantization needs it (stored shape annotations dropped, then
  quant_pre_process's shape inference and optimisation when they succeed).
- `quantize_static_model`: QDQ, per-channel int8 weights and uint8 activations of Conv / MatMul /
  Gemm, activation ranges from MinMax calibration over `CalibrationFeeds` (frames of the user's own
  scenes with the prompts they deploy). Kept float (`float_nodes`):
    * the cosine classifiers (decoder and query selection, Sec. 3.4): they scale a cosine in [-1, 1]
      by exp(s) into logits, so int8 steps of the normalised embeddings become logit errors larger
      than the gaps between queries. Calibrated on 32 frames of a generated clip, quantizing them
      took the step-13400 model from 45.9 to 8.8 mask AP on 100 test images, keeping them float gave
      45.0; calibrated on 32 still val images, 47.7 vs 48.2. Whether they break depends on the
      calibration frames; kept float, the result did not (docs/BENCHMARKS.md, int8 section);
    * MatMuls whose weight per-channel QLinearMatMul cannot take: a weight as first operand (W @ X,
      the channels-first value projections) or of rank above 2 (per-head projections).
- `quantize_dynamic_model`: int8 weights of MatMul / Gemm, activations quantized on the fly.
The score calibration stored in the model file travels with it (onnxruntime.quantization keeps
metadata_props). The `mobius quantize` command (quantize_command.py) wraps these.
"""
from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

QUANT_OPS = ("Conv", "MatMul", "Gemm")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"     # the dynamo exporter's module path of each node
CLASSIFIER_SCOPE = "classifier"               # CosineClassifier modules (decoder.classifier, selection.classifier)


class CalibrationFeeds:
    """onnxruntime CalibrationDataReader: one full graph feed per frame (letterboxed image, the given
    text inputs, no track queries, the given pruning)."""

    def __init__(self, frames: Iterable[np.ndarray], size: int, text: dict[str, np.ndarray], hidden: int,
                 pruning: tuple[np.ndarray, np.ndarray]):
        from .preprocess import preprocess

        feeds = [{"images": preprocess(frame, size)[0], **text,
                  "track_queries": np.zeros((1, 0, hidden), np.float32),
                  "track_boxes": np.zeros((1, 0, 4), np.float32),
                  "prune_thresholds": pruning[0], "prune_min_kept": pruning[1]} for frame in frames]
        if not feeds:
            raise ValueError("no calibration frames: the input holds no readable frame")
        self.count = len(feeds)
        self._feeds = iter(feeds)

    @classmethod
    def for_model(cls, engine, frames: Iterable[np.ndarray], prompts: Sequence[str], preset: str = "mobius_nano",
                  embeddings: str | Path | None = None) -> "CalibrationFeeds":
        """Feeds for an OnnxEngine's graph as the runtime runs it: `preset`'s pruning and text length
        (evaluation.predict.onnx_run_settings), `prompts` encoded (or read from `embeddings`)."""
        from ..evaluation.predict import onnx_run_settings
        from .prompts import encode_prompts

        thresholds, min_kept, max_tokens = onnx_run_settings(engine, preset, True)
        _, text = encode_prompts(prompts, max_tokens, embeddings)
        return cls(frames, engine.size, text, engine.hidden_dim, (thresholds, min_kept))

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def prepare(source: Path, folder: Path) -> tuple[Path, bool]:
    """A copy of `source` in `folder` ready for quantization: its stored value_info dropped (the
    dynamo exporter's shape annotations trip onnxruntime.quantization's strict shape inference:
    "Inferred shape and existing shape differ"), then quant_pre_process (shape inference and
    optimisation) when that succeeds. Returns (path, whether quant_pre_process succeeded)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    target, clean = folder / "preprocessed.onnx", folder / "float_clean.onnx"
    if target.is_file():
        return target, True
    model = onnx.load(str(source))
    del model.graph.value_info[:]
    onnx.save(model, str(clean))
    try:
        quant_pre_process(str(clean), str(target), skip_symbolic_shape=True)
    except Exception as error:  # a graph the pre-processor cannot handle is quantized as exported
        log.warning("quant_pre_process failed (%s); quantizing the graph as exported", error)
        return clean, False
    model = onnx.load(str(target))
    del model.graph.value_info[:]
    onnx.save(model, str(target))
    return target, True


def unquantizable_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes with a weight (initializer) as first operand or of rank above 2:
    per-channel QLinearMatMul supports neither."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ranks = {tensor.name: len(tensor.dims) for tensor in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul"
            and (node.input[0] in ranks or ranks.get(node.input[1], 2) > 2)]


def classifier_nodes(exported: Path) -> list[str]:
    """Names of the Conv / MatMul / Gemm nodes inside a cosine classifier module of a graph written
    by `mobius export` (found by the exporter's name scopes). ValueError when the graph holds no name
    scopes (exported elsewhere, or stripped) or no classifier: without them static quantization
    would quantize the classifiers and lose most of the AP."""
    import onnx

    graph = onnx.load(str(exported), load_external_data=False).graph
    scoped = 0
    names = []
    for node in graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if SCOPES_KEY not in props:
            continue
        scoped += 1
        scopes = ast.literal_eval(props[SCOPES_KEY])
        if node.op_type in QUANT_OPS and any(str(s).rsplit(".", 1)[-1] == CLASSIFIER_SCOPE for s in scopes):
            names.append(node.name)
    if not scoped:
        raise ValueError(f"'{exported}' carries no module name scopes ({SCOPES_KEY}), so its cosine classifiers "
                         f"cannot be kept float; quantize the graph as 'mobius export' writes it")
    if not names:
        raise ValueError(f"'{exported}' has no Conv/MatMul/Gemm node in a '{CLASSIFIER_SCOPE}' module; "
                         f"is it a MOBIUS graph from 'mobius export'?")
    return names


@dataclass(frozen=True)
class FloatNodes:
    """What static quantization keeps float, by reason."""
    classifiers: tuple[str, ...]      # cosine classifiers, present in the prepared graph
    unsupported: tuple[str, ...]      # MatMuls per-channel QLinearMatMul cannot take


def float_nodes(exported: Path, prepared: Path) -> FloatNodes:
    """The nodes of `prepared` (from `prepare(exported)`) that static quantization keeps float.
    quant_pre_process keeps node names, and a node it fuses is named after the first one fused
    ("node_MatMul_7/MatMulAddFusion"); a classifier node found under neither name is an error, since
    quantizing it would cost most of the AP."""
    import onnx

    present = [node.name for node in onnx.load(str(prepared), load_external_data=False).graph.node]
    kept, lost = [], []
    for name in classifier_nodes(exported):
        matches = [p for p in present if p == name or p.startswith(name + "/")]
        if matches:
            kept.extend(matches)
        else:
            lost.append(name)
    if lost:
        raise ValueError(f"classifier node(s) {', '.join(lost)} of '{exported}' cannot be found after "
                         f"quant_pre_process, so they could not be kept float")
    return FloatNodes(tuple(dict.fromkeys(kept)), tuple(unquantizable_matmuls(prepared)))


def quantize_static_model(source: Path, target: Path, feeds, ops: Sequence[str] = QUANT_OPS,
                          keep_float: Sequence[str] = ()) -> Path:
    """QDQ static quantization of `source` (a prepared graph) into `target`, keeping `keep_float`
    float (besides the MatMuls per-channel QLinearMatMul cannot take); `feeds` a CalibrationDataReader.
    Written once: an existing `target` is returned as is."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not target.is_file():
        quantize_static(str(source), str(target), feeds, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(ops), per_channel=True,
                        nodes_to_exclude=sorted(set(unquantizable_matmuls(source)) | set(keep_float)),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        if keep_float:
            read_float_activations(target, keep_float)
    return target


def read_float_activations(path: Path, names: Sequence[str]) -> int:
    """Rewires the nodes `names` of a QDQ graph to read their activations unrounded. The QDQ
    quantizer puts one QuantizeLinear -> DequantizeLinear pair on a tensor and feeds it to every
    consumer, so a node kept float still reads int8-rounded input when a quantized node shares it
    (the last decoder layer's classifier shares its queries with the mask head). Each such input
    goes back to the float tensor before the pair; pairs nothing reads any more are dropped.
    Returns the number of inputs rewired; the file is rewritten in place."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    rewired = 0
    names = set(names)
    for node in graph.node:
        if node.name not in names:
            continue
        for k, name in enumerate(node.input):
            dequantize = producer.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize_node = producer.get(dequantize.input[0])
            if quantize_node is not None and quantize_node.op_type == "QuantizeLinear":
                node.input[k] = quantize_node.input[0]
                rewired += 1
    while True:   # drop Q/DQ nodes left without readers (a DQ first, then its Q)
        read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    onnx.save(model, str(path))
    return rewired


def quantize_dynamic_model(source: Path, target: Path) -> Path:
    """int8 weights of MatMul / Gemm, activations quantized at run time (convolutions stay float:
    onnxruntime's dynamic ConvInteger is slower than float Conv). Written once, like the static one."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not target.is_file():
        quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8)
    return target


def quantized_op_counts(path: Path) -> dict[str, int]:
    """Quantized nodes in a graph: QuantizeLinear / DequantizeLinear pairs (static) or the dynamic
    MatMul forms, by op type."""
    import onnx

    markers = {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul",
               "DynamicQuantizeLinear", "ConvInteger"}
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in markers:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
