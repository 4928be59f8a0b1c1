"""Shared parts of the reliability benches (bench/reliability_overload.py, bench/reliability_soak.py).

The node under test runs as its own process (`python -m mobius_ros.segment_node`, the same entry
point as `mobius-segment`), so that its RSS, threads and open file descriptors are its own
(/proc/<pid>/status and /proc/<pid>/fd). This process is the camera and the consumer: it publishes
frames, receives ~/instances (latency = receive time - publish time of the same stamp, one clock)
and reads the node's /diagnostics counters.

Also here: the model choice (`--model tiny|shipped|PATH`), a procedural clip, the markdown section
writer for docs/RELIABILITY.md and the time-series plot.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"
NAMESPACE = "/reliability_bench"
INPUT_TOPIC = f"{NAMESPACE}/camera/image"


def ros_environment() -> None:
    """What `make test` sets: Fast DDS, discovery on this host only, a domain of our own."""
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(101, 200)))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (random-weights 64-wide model, torch backend), 'shipped' (the default "
                             "ONNX model in perception_core/assets) or a .onnx / .safetensors path")
    parser.add_argument("--preset", default=None, help="model config for a .safetensors --model")
    parser.add_argument("--input-size", type=int, default=128, help="network input side (torch backend)")
    parser.add_argument("--width", type=int, default=320, help="frame width in pixels")
    parser.add_argument("--height", type=int, default=240, help="frame height in pixels")
    parser.add_argument("--threads", type=int, default=1, help="inference threads of the node")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not update docs/RELIABILITY.md")


def node_parameters(args: argparse.Namespace, reliable: bool) -> dict[str, str]:
    """-p overrides of the node (on top of config/segment.yaml) for the chosen model."""
    values = {"input_topic": INPUT_TOPIC, "threads": str(args.threads), "autostart": "true",
              "qos_reliability": "reliable" if reliable else "best_effort", "publish_overlay": "false",
              "diagnostics_period": "0.5", "input_size": str(args.input_size)}
    if args.model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from runtime_models import tiny_weights  # the cached tiny model of the test suite

        model = tiny_weights()
        values.update(backend="torch", model_path=str(model.weights), preset=str(model.preset),
                      score_threshold="0.3", prompts="['red star', 'blue circle']")
    elif args.model != "shipped":
        path = Path(args.model).resolve()
        values.update(backend="onnx" if path.suffix == ".onnx" else "torch", model_path=str(path))
        if args.preset:
            values["preset"] = args.preset
    return values


def describe(args: argparse.Namespace, parameters: dict[str, str]) -> str:
    model = {"tiny": "tiny random-weights MOBIUS (hidden 64, 30 queries, 3 decoder layers; tests/runtime_models.py)",
             "shipped": "the shipped default model (perception_core/assets)"}.get(args.model, args.model)
    load = os.getloadavg()[0]
    return (f"model {model}, backend {parameters.get('backend', 'onnx')}, input {args.input_size} px "
            f"(ONNX: its own), frames {args.width}x{args.height} rgb8, {args.threads} inference thread(s); "
            f"{platform.machine()}, {os.cpu_count()} logical CPUs, load average {load:.1f} at the start "
            f"(the machine is shared with other jobs)")


def clip(width: int, height: int, frames: int = 30, seed: int = 8) -> list[np.ndarray]:
    """A procedural video (moving coloured shapes) at width x height."""
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.video import generate_video

    video, _ = generate_video(seed, make_config("easy", frames=(frames, frames), video_size=(height, width)))
    return video


# ----------------------------------------------------------------------------- the node process

@dataclass
class ProcessSample:
    seconds: float       # since the rig started
    rss_mb: float
    threads: int
    fds: int


def sample_process(pid: int, start: float) -> ProcessSample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    return ProcessSample(time.monotonic() - start, rss, threads, len(os.listdir(f"/proc/{pid}/fd")))


class NodeProcess:
    """`python -m mobius_ros.segment_node` with config/segment.yaml and -p overrides."""

    def __init__(self, parameters: dict[str, str]) -> None:
        args = [sys.executable, "-m", "mobius_ros.segment_node", "--ros-args", "--params-file",
                str(ROOT / "config" / "segment.yaml"), "-r", f"__ns:={NAMESPACE}"]
        for name, value in parameters.items():
            args += ["-p", f"{name}:={value}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line.rstrip())

    def wait_active(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not any("active: segmenting" in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the node did not become active:\n" + "\n".join(self.output[-30:]))
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        """SIGINT (a clean shutdown), then SIGKILL after 20 s; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


# ----------------------------------------------------------------------------- camera + consumer

@dataclass
class Client:
    """Publisher of frames, subscriber of ~/instances and /diagnostics, in this process."""
    reliable: bool
    published: dict[tuple[int, int], float] = field(default_factory=dict)   # stamp -> publish time
    received: dict[tuple[int, int], float] = field(default_factory=dict)    # stamp -> receive time
    diagnostics: dict[str, str] = field(default_factory=dict)
    diagnostics_time: float = 0.0

    def __post_init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("reliability_bench_client", context=self.context)
        camera = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
                            if self.reliable else ReliabilityPolicy.BEST_EFFORT)
        outputs = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, INPUT_TOPIC, camera)
        self.subscriptions = [
            self.node.create_subscription(Image, f"{NAMESPACE}/mobius_segmenter/instances", self._on_output, outputs),
            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, outputs)]
        # One executor thread: rclpy's MultiThreadedExecutor re-polls in Python and takes CPU from the
        # node under test on a 2-core machine (docs/ROS.md, "Executors: one thread is the fast choice").
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self._index = 0

    def _on_output(self, msg) -> None:
        self.received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.monotonic()

    def _on_diagnostics(self, msg) -> None:
        if msg.status and msg.status[0].name.startswith(f"{NAMESPACE}/mobius_segmenter"):
            self.diagnostics = {kv.key: kv.value for kv in msg.status[0].values}
            self.diagnostics_time = time.monotonic()

    def wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.publisher.get_subscription_count() and self.subscriptions[0].get_publisher_count()):
            if time.monotonic() > deadline:
                raise RuntimeError("no DDS match with the node within the timeout")
            time.sleep(0.05)

    def message(self, rgb: np.ndarray):
        """An rgb8 Image with the next stamp (stamps identify frames)."""
        from builtin_interfaces.msg import Time

        from mobius_ros.images import array_to_image

        self._index += 1
        msg = array_to_image(rgb, "rgb8")
        msg.header.stamp = Time(sec=self._index // 1000, nanosec=(self._index % 1000) * 1_000_000)
        msg.header.frame_id = "bench_camera"
        return msg

    def publish(self, msg) -> tuple[int, int]:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.published[key] = time.monotonic()
        self.publisher.publish(msg)
        return key

    def wait_for(self, key: tuple[int, int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while key not in self.received:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        return True

    def fresh_diagnostics(self, timeout: float = 5.0) -> dict[str, str]:
        """The first /diagnostics values published after now."""
        asked = time.monotonic()
        while self.diagnostics_time <= asked and time.monotonic() < asked + timeout:
            time.sleep(0.02)
        return dict(self.diagnostics)

    def latencies_ms(self) -> dict[tuple[int, int], float]:
        return {key: (self.received[key] - sent) * 1000 for key, sent in self.published.items() if key in self.received}

    def close(self) -> None:
        self.executor.shutdown()
        self.spinner.join(5)
        self.node.destroy_node()
        self.context.try_shutdown()


def samples_now(pid: int, start: float, count: int = 5, gap: float = 0.1) -> list[ProcessSample]:
    """`count` samples `gap` s apart (the median of their RSS is robust to a single allocation spike)."""
    samples = []
    for _ in range(count):
        samples.append(sample_process(pid, start))
        time.sleep(gap)
    return samples


class Sampler:
    """Samples the node process every `period` s in a thread until stopped."""

    def __init__(self, pid: int, start: float, period: float = 0.5) -> None:
        self.pid, self.start, self.period = pid, start, period
        self.samples: list[ProcessSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(sample_process(self.pid, self.start))
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop.wait(self.period)

    def stop(self) -> list[ProcessSample]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


# ----------------------------------------------------------------------------- reporting

def percentiles(values, qs=(50, 90, 99)) -> dict[str, float]:
    values = np.asarray(list(values), dtype=float)
    if values.size == 0:
        return {f"p{q}": float("nan") for q in qs} | {"max": float("nan")}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs} | {"max": float(values.max())}


def rss_slope_mb_per_min(samples: list[ProcessSample]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 3:
        return float("nan")
    t = np.array([s.seconds for s in samples])
    return float(np.polyfit(t - t[0], [s.rss_mb for s in samples], 1)[0] * 60)


def table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| quantity | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]])


def write_section(name: str, text: str, path: Path = DOC) -> None:
    """Replaces the text between <!-- BEGIN name --> and <!-- END name --> (appends when absent)."""
    begin, end = f"<!-- BEGIN {name} (written by bench/{name}.py) -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.is_file() else "# Reliability\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block + "\n"
    path.write_text(updated)


def plot(path: Path, title: str, panels: list[tuple[str, str, np.ndarray, dict[str, np.ndarray]]]) -> None:
    """One panel per (ylabel, xlabel, x, {line label: y}), stacked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), squeeze=False)
    for axis, (ylabel, xlabel, x, lines) in zip(axes[:, 0], panels):
        for label, y in lines.items():
            style = dict(marker=".", markersize=2, linestyle="none") if len(x) > 200 else dict(marker="o", markersize=3)
            axis.plot(x, y, label=label, **style)
        if len(lines) > 1:
            axis.legend()
        axis.set_ylabel(ylabel)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
