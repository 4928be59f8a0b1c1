"""onnxruntime backend: feeds the graph inputs named in io_names and returns outputs by name."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io_names import INPUT_NAMES, OUTPUT_NAMES


def session_options(threads: int):
    """CPU session options of every onnxruntime session in the runtime: `threads` intra-op threads,
    one inter-op thread, all graph optimizations. Idle intra-op workers keep onnxruntime's default
    spin-waiting: bench/perf_profile.py measured the default model at 2 threads 33 ms with spinning vs
    42 ms without on an idle machine, and 55 vs 52 ms with one core busy elsewhere, where 1 thread
    (49 ms) beats both: on a loaded machine lower `threads` rather than turning spinning off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


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
            raise ValueError(f"model file '{path}' could not be loaded by onnxruntime: {error}") from None
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise ValueError(f"model file '{path}' has inputs {names}, expected {INPUT_NAMES}; re-export it")
        shape = self.session.get_inputs()[0].shape
        self.size = int(shape[2])
        self.hidden_dim = int(self.session.get_inputs()[4].shape[2])
        self.num_layers = int(self.session.get_inputs()[6].shape[0])

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUT_NAMES, self.session.run(None, feed)))
