"""Runtime benchmark (same as `mobius bench`): FrameProcessor latency per stage and FPS at 384 px,
onnxruntime vs torch, 1 vs 2 threads, every-frame decoding vs kernel reuse T=3. `make bench` writes
the same table into docs/BENCHMARKS.md (section `runtime`).

    python bench/runtime_bench.py [--frames 24 --repeats 3 --out runtime.md]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception_core.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
