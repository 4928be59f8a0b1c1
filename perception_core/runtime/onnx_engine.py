"""onnxruntime backend: feeds the graph inputs named in io_names and returns outputs by name."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io_names import INPUT_NAMES, OPTIONAL_OUTPUTS, OUTPUT_NAMES
from .score_calibration import calibration_from_metadata


def session_options(threads: int):
    """CPU session options of every onnxruntime session in the runtime: `threads` intra-op threads,
    one inter-op thread, all graph optimizations, and intra-op workers that spin-wait during a run
    (onnxruntime's default: 2 threads 33 ms with spinning vs 40 ms without on an idle machine) but
    stop spinning when the run ends ("session.force_spinning_stop"). Without that, the workers keep
    spinning after a run and the next run of ANOTHER session (kernel reuse alternates the model and
    its mask graph, each with its own pool) competes with them for the cores: alternating the two
    cost 56 / 49 ms per run instead of 34 / 29 ms (bench/perf_profile.py, docs/BENCHMARKS.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def load_error(what: str, path: Path, error: Exception) -> ValueError:
    """A clear error for a file onnxruntime refused; names the fix when the build lacks DeformConv."""
    message = f"{what} '{path}' could not be loaded by onnxruntime: {error}"
    if "DeformConv" in str(error):
        message += ("; this onnxruntime cannot run DeformConv (ONNX opset 19, in onnxruntime since 2026): re-export "
                    "with 'mobius export ... --sampler grid_sample' (and export_kernels --sampler grid_sample for "
                    "the mask graph), which computes the same with GridSample.")
    return ValueError(message)


class OnnxEngine:
    def __init__(self, path: str | Path, threads: int = 2):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file '{path}' not found; run 'mobius export' or pass the right path")
        options = session_options(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise load_error("model file", path, error) from None
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise ValueError(f"model file '{path}' has inputs {names}, expected {INPUT_NAMES}; re-export it")
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        missing = [name for name in OUTPUT_NAMES if name not in self.output_names and name not in OPTIONAL_OUTPUTS]
        if missing:
            raise ValueError(f"model file '{path}' lacks the outputs {missing} (has {list(self.output_names)}); "
                             f"re-export it")
        shape = self.session.get_inputs()[0].shape
        self.size = int(shape[2])
        self.hidden_dim = int(self.session.get_inputs()[4].shape[2])
        self.num_layers = int(self.session.get_inputs()[6].shape[0])
        # the map `mobius calibrate` stored in the file (ValueError if broken), None without one
        self.score_calibration = calibration_from_metadata(self.session.get_modelmeta().custom_metadata_map,
                                                           f"model file '{path}'")

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feed)))
