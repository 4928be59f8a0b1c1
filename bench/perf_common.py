"""Shared pieces of the performance benchmarks (bench/perf_*.py, run by bench/run_all.py).

- `Settings`: quick (smoke) vs full mode, thread count, repeats; one frozen object passed to every
  section so `--quick` changes sizes and repeats in one place.
- Timing: `time_calls` (one callable) and `time_interleaved` (several callables in round-robin, per
  call or in blocks, so that a load spike from other jobs on this shared machine hits every contender
  alike: ratios taken from one interleaved run are the numbers to trust, absolute milliseconds drift).
- `cached_onnx`: a model preset exported once to `.bench_cache/onnx/` (gitignored), keyed by a hash
  of the code and config that determine the graph, so repeated bench runs skip the 30-90 s export.
- `onnx_session` / `random_feed`: onnxruntime sessions with explicit options and feeds for a graph.
- `Section`: what a benchmark returns; bench/perf_report.py renders it into docs/BENCHMARKS.md.
"""
from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CACHE = ROOT / ".bench_cache"
SPINNING = "session.intra_op.allow_spinning"
FORCE_STOP = "session.force_spinning_stop"    # workers stop spinning when a run ends
BLOCK = 5  # timed calls per round-robin block when onnxruntime sessions are compared (see time_interleaved)
# Files whose content determines an exported graph (besides torch's version and the export args).
EXPORT_SOURCES = ("perception_core/model/*.py", "perception_core/config.py", "config/models/*.yaml",
                  "perception_core/runtime/export.py", "perception_core/runtime/export_kernels.py",
                  "perception_core/runtime/io_names.py")


@dataclass(frozen=True)
class Settings:
    quick: bool = False      # smoke mode: few repeats, small sweeps (numbers are indicative only)
    threads: int = 2         # inference threads (the deployment target: 2 CPU cores)
    repeats: int = 20        # timed runs per measurement (medians are reported)
    warmup: int = 3          # untimed runs before timing
    docs: Path = DOCS        # where BENCHMARKS.md and the PNGs go
    cache: Path = CACHE      # exported graphs, profiles, generated data

    @staticmethod
    def make(quick: bool, threads: int = 2, docs: Path = DOCS, cache: Path = CACHE) -> "Settings":
        return Settings(quick, threads, 3 if quick else 20, 1 if quick else 3, Path(docs), Path(cache))


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one measurement, in milliseconds."""
    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p99(self) -> float:
        return self.percentile(99)


@dataclass
class Section:
    """One block of docs/BENCHMARKS.md: its key (for --only and the file's section markers), a title,
    Markdown body, the PNGs it references (paths under docs/) and the raw numbers (for callers)."""
    key: str
    title: str
    body: str
    images: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median-friendly samples of `fn()`: `warmup` untimed calls, then `repeats` timed ones."""
    return time_interleaved({"fn": fn}, repeats, warmup)["fn"]


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     block: int = 1) -> dict[str, Timing]:
    """`repeats` samples of each callable, taken in round-robin order (A B C A B C ...), or with
    block > 1 in round-robin blocks: one untimed call, then `block` timed calls of A, the same for B,
    ... (onnxruntime's idle workers spin-wait for a while after a run: a session timed right after
    another one competes with those spinning threads, which a per-call round robin would charge to it)."""
    if repeats < 1 or warmup < 0 or block < 1:
        raise ValueError(f"repeats={repeats} and block={block} must be >= 1 and warmup={warmup} >= 0")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    while len(next(iter(samples.values()))) < repeats:
        for name, fn in fns.items():
            if block > 1:
                fn()
            for _ in range(min(block, repeats - len(samples[name]))):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def machine_line(load_before: Sequence[float] | None = None) -> str:
    """Machine and load average, for the 'conditions' line of every section."""
    now = os.getloadavg()
    before = f"{load_before[0]:.2f} before / " if load_before is not None else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; load average "
            f"(1 min) {before}{now[0]:.2f} after")


# ----------------------------------------------------------------------------- exported graphs

def code_hash(extra: str = "", patterns: Sequence[str] = EXPORT_SOURCES) -> str:
    """16 hex digits over torch's version, `extra` and the files matched by `patterns`."""
    import torch

    digest = hashlib.sha256(f"{torch.__version__}|{extra}".encode())
    for pattern in patterns:
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_random(preset: str, overrides: Sequence[str] = (), seed: int = 0):
    """A preset with random weights (seeded), in its deployment graph."""
    import torch

    from perception_core.model.build import build_from_name

    torch.manual_seed(seed)
    return build_from_name(preset, list(overrides)).deploy()


def cached_onnx(preset: str, size: int, cache: Path = CACHE, overrides: Sequence[str] = ()) -> Path:
    """`preset` with random weights (seed 0) exported at size x size, reused while the code is unchanged."""
    from perception_core.runtime.export import export_onnx

    key = code_hash(f"{preset}|{size}|{','.join(overrides)}")
    path = Path(cache) / "onnx" / f"{preset}_{size}_{key}.onnx"
    if not path.is_file():
        print(f"[bench] exporting {preset} at {size}px (random weights) to {path} ...", flush=True)
        tmp = path.with_suffix(".partial.onnx")
        export_onnx(build_random(preset, overrides), tmp, size)
        tmp.replace(path)
    return path


def onnx_session(path: str | Path, threads: int = 2, level: str | None = None, inter_threads: int | None = None,
                 parallel: bool = False, spinning: bool | None = None, stop_spinning: bool | None = None,
                 profile_prefix: str | None = None):
    """An onnxruntime CPU session with the runtime's options (runtime/onnx_engine.session_options),
    optionally changed: the knobs perf_profile.py sweeps."""
    import onnxruntime as ort

    from perception_core.runtime.onnx_engine import session_options

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if level is not None and level not in levels:
        raise ValueError(f"graph optimization level {level!r}; choose one of {sorted(levels)}")
    options = session_options(threads)
    if level is not None:
        options.graph_optimization_level = levels[level]
    if inter_threads is not None:
        options.inter_op_num_threads = inter_threads
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if spinning is not None:
        options.add_session_config_entry(SPINNING, "1" if spinning else "0")
    if stop_spinning is not None:
        options.add_session_config_entry(FORCE_STOP, "1" if stop_spinning else "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_feed(session, prompts: int = 4, tokens: int = 8, seed: int = 0,
                prune: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Inputs for a MOBIUS graph (io_names): a random image, `prompts` x `tokens` random text
    embeddings, no track queries; pruning `prune` = (thresholds (L,), min_kept ()) or off."""
    rng = np.random.default_rng(seed)
    shapes = {i.name: i.shape for i in session.get_inputs()}
    _, _, height, width = shapes["images"]
    hidden, layers, text_dim = shapes["track_queries"][2], shapes["prune_thresholds"][0], shapes["text_tokens"][2]
    mask = np.ones((prompts, tokens), bool)
    mask[:, tokens // 2 + 1:] = False                    # prompts shorter than the padded length
    thresholds, min_kept = prune if prune is not None else (np.zeros(layers, np.float32), np.array(0, np.int64))
    return {"images": rng.standard_normal((1, 3, height, width), dtype=np.float32),
            "text_tokens": rng.standard_normal((prompts, tokens, text_dim), dtype=np.float32),
            "text_mask": mask, "text_pooled": rng.standard_normal((prompts, text_dim), dtype=np.float32),
            "track_queries": np.zeros((1, 0, hidden), np.float32), "track_boxes": np.zeros((1, 0, 4), np.float32),
            "prune_thresholds": np.asarray(thresholds, np.float32), "prune_min_kept": np.asarray(min_kept, np.int64)}


def model_pruning(preset: str, layers: int) -> tuple[np.ndarray, np.ndarray]:
    """The preset's configured pruning as graph inputs (zeros = off when pruning is disabled)."""
    from perception_core.config import load_model_config
    from perception_core.model.decoder import PruneSettings

    cfg = load_model_config(preset)
    if not cfg.pruning.enabled:
        return np.zeros(layers, np.float32), np.array(0, np.int64)
    settings = PruneSettings.from_config(cfg.pruning, layers)
    return np.asarray(settings.taus, np.float32), np.array(settings.min_kept, np.int64)


def clip_frames(frames: int, seed: int = 7) -> tuple[list[np.ndarray], list[dict]]:
    """A generated clip ('normal' difficulty, 288x384 frames) and its tracks."""
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.video import generate_video

    return generate_video(seed, make_config("normal", frames=(frames, frames)), split="test")


def clip_prompts(tracks: list[dict]) -> list[str]:
    """Composition names of a generated clip's objects ("red star", ...), in category-id order."""
    from perception_core.training.synth.vocabulary import present_names

    return present_names(tracks)


def relative(path: str | Path) -> str:
    """`path` relative to the repository when inside it (for reports), else as given."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def fmt_ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def goal(met: bool) -> str:
    return "**met**" if met else "**not met**"
