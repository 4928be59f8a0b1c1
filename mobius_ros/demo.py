"""`make demo` / `python -m mobius_ros.demo`: the ROS main job on a generated clip, in one process.

    camera (sensor_msgs/Image rgb8 at --fps)  ->  mobius_segmenter (the lifecycle node, default
    parameters from config/segment.yaml: shipped model and prompts)  ->  recorder (~/overlay ->
    overlay.mp4, ~/instances_info, /diagnostics)

Three nodes on one multi-threaded executor, over real DDS topics. The camera streams a procedural
clip (perception_core.training.synth) like a driver would, stamping each frame with the current
time; frames the model cannot keep up with are dropped by the node, as on a robot. At the end it
prints rate, latency and instance counts, writes summary.json and says where the video is. It ends
by itself: after the clip, or after --timeout seconds.

Model: --model if given, else the shipped default (perception_core/assets); while no trained model
ships, random mobius_nano weights (torch backend, score threshold 0) show the pipeline, not masks,
and the demo says so.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from perception_core.runtime.stream_options import add_reuse_arguments, reuse_settings

NODE_NAMESPACE = "demo"
CAMERA_TOPIC = "/demo/camera/image_raw"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output folder (overlay.mp4, summary.json)")
    parser.add_argument("--frames", type=int, default=90, help="clip length in frames")
    parser.add_argument("--fps", type=float, default=15.0, help="camera frame rate")
    parser.add_argument("--seed", type=int, default=7, help="clip seed")
    parser.add_argument("--model", help=".onnx or .safetensors model; default: the shipped model")
    parser.add_argument("--prompts", help="comma-separated prompts; default: the compositions in the generated clip")
    parser.add_argument("--timeout", type=float, default=55.0, help="stop after this many seconds in any case")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="score threshold (default: the node's, score_threshold in config/segment.yaml)")
    add_reuse_arguments(parser)         # the node parameters kernel_reuse and reuse_bottleneck


def _model_overrides(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    """Node parameter overrides choosing the model, and a note for the user ('' if none)."""
    from perception_core import assets

    if args.model:
        return {"backend": "onnx" if args.model.endswith(".onnx") else "torch", "model_path": args.model}, ""
    if assets.ONNX.is_file():
        return {}, ""                                   # config/segment.yaml as shipped
    if assets.WEIGHTS.is_file():
        return {"backend": "torch"}, ""                 # model_path "" = the shipped weights
    import torch

    from perception_core.model.build import build_from_name, save_weights

    torch.manual_seed(0)
    path = out / "random_mobius_nano.safetensors"
    save_weights(build_from_name(assets.PRESET), path)
    return ({"backend": "torch", "model_path": str(path), "score_threshold": 0.0},
            "no trained default model is shipped yet: random weights, so masks are not meaningful")


class Camera:
    """Publishes the clip as sensor_msgs/Image rgb8 at `fps`, stamped with the current time."""

    def __init__(self, node: Any, frames: list[np.ndarray], fps: float) -> None:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.node, self.frames, self.index = node, frames, 0
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = node.create_publisher(Image, CAMERA_TOPIC, qos)
        self.stamps: list[tuple[int, int]] = []
        self.done = threading.Event()
        self.period = 1.0 / fps
        self.timer = None

    def start(self, progress: Any) -> None:
        self.progress = progress
        self.timer = self.node.create_timer(self.period, self._tick)

    def _tick(self) -> None:
        from mobius_ros.images import array_to_image

        if self.index >= len(self.frames):
            self.timer.cancel()
            self.done.set()
            return
        msg = array_to_image(self.frames[self.index], "rgb8")
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "demo_camera"
        self.publisher.publish(msg)
        self.stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        self.index += 1
        self.progress.update(1)


class Recorder:
    """Writes ~/overlay to a video and keeps records, end-to-end latencies and diagnostics."""

    def __init__(self, node: Any, video: Path, fps: float, info_type: type) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        base = f"/{NODE_NAMESPACE}/mobius_segmenter"
        self.node, self.video, self.fps = node, video, fps
        self.writer = None
        self.lock = threading.Lock()
        self.overlay_stamps: set[tuple[int, int]] = set()
        self.latencies_ms: list[float] = []
        self.instances: list[int] = []
        self.labels: dict[str, int] = {}
        self.diagnostics: dict[str, str] = {}
        self.subscriptions = [
            node.create_subscription(Image, f"{base}/overlay", self._on_overlay, qos),
            node.create_subscription(info_type, f"{base}/instances_info", self._on_info, qos),
            node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos),
        ]

    def _on_overlay(self, msg: Any) -> None:
        import cv2

        from mobius_ros.images import image_to_array

        now = self.node.get_clock().now().nanoseconds
        frame = image_to_array(msg)
        with self.lock:
            if self.writer is None:
                self.writer = cv2.VideoWriter(str(self.video), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                              (msg.width, msg.height))
            self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            self.overlay_stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            self.latencies_ms.append((now - stamp_ns) / 1e6)

    def _on_info(self, msg: Any) -> None:
        from mobius_ros import messages

        if hasattr(msg, "data"):  # std_msgs/String JSON fallback
            records = messages.parse_records_json(msg.data)["instances"]
            labels = [r["label"] for r in records]
        else:
            labels = [i.label for i in msg.instances]
        with self.lock:
            self.instances.append(len(labels))
            for label in labels:
                self.labels[label] = self.labels.get(label, 0) + 1

    def _on_diagnostics(self, msg: Any) -> None:
        from mobius_ros.outputs import diagnostics_values

        if msg.status and msg.status[0].name.startswith(f"/{NODE_NAMESPACE}/mobius_segmenter"):
            self.diagnostics = diagnostics_values(msg)

    def close(self) -> int:
        with self.lock:
            if self.writer is not None:
                self.writer.release()
            return len(self.overlay_stamps)


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _summary(camera: Camera, recorder: Recorder, written: int, seconds: float, note: str, out: Path) -> dict:
    d = recorder.diagnostics
    latency = np.array(recorder.latencies_ms) if recorder.latencies_ms else np.zeros(1)
    return {
        "frames_published": camera.index, "overlay_frames_written": written,
        "frames_processed": int(d.get("frames_processed", 0)), "frames_dropped": int(d.get("frames_dropped", 0)),
        "node_rate_hz": float(d.get("rate_hz", 0.0)),
        "node_latency_ms": {k[len("latency_ms_"):]: float(v) for k, v in d.items() if k.startswith("latency_ms_")},
        "end_to_end_latency_ms": {"p50": float(np.percentile(latency, 50)), "p90": float(np.percentile(latency, 90)),
                                  "max": float(latency.max())},
        "instances_per_frame_mean": float(np.mean(recorder.instances)) if recorder.instances else 0.0,
        "instances_per_label": dict(sorted(recorder.labels.items())),
        "kept_queries_per_layer": d.get("kept_queries_per_layer", ""), "decoder_gflops": d.get("decoder_gflops", ""),
        "stream_seconds": seconds, "note": note, "video": str(out / "overlay.mp4"),
    }


def _print(summary: dict) -> None:
    lat = summary["node_latency_ms"]
    print(f"[ros-demo] camera published {summary['frames_published']} frames; node processed "
          f"{summary['frames_processed']} at {summary['node_rate_hz']:.1f} Hz, dropped {summary['frames_dropped']} "
          f"(newest frame only)")
    print(f"[ros-demo] node latency (arrival -> published) p50 {lat.get('p50', 0):.1f} ms, p90 {lat.get('p90', 0):.1f} ms, "
          f"p99 {lat.get('p99', 0):.1f} ms; camera stamp -> overlay received p50 "
          f"{summary['end_to_end_latency_ms']['p50']:.1f} ms")
    print(f"[ros-demo] instances per frame {summary['instances_per_frame_mean']:.1f}, by label "
          f"{summary['instances_per_label']}; kept queries per layer [{summary['kept_queries_per_layer']}], "
          f"decoder GFLOPs/frame {summary['decoder_gflops'] or 'unknown (no model config for this graph)'}")
    if summary["note"]:
        print(f"[ros-demo] NOTE: {summary['note']}")
    print(f"[ros-demo] overlay video ({summary['overlay_frames_written']} frames): {summary['video']}")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from tqdm import tqdm

    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.video import generate_video
    from perception_core.training.synth.vocabulary import composition_name

    from .outputs import OptionalTypes
    from .segment_node import SegmentNode

    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides, note = _model_overrides(args, out)
    print(f"[ros-demo] generating a {args.frames}-frame clip (seed {args.seed}) ...", flush=True)
    frames, tracks = generate_video(args.seed, make_config("normal", frames=(args.frames, args.frames)))
    if args.prompts:
        overrides["prompts"] = [p.strip() for p in args.prompts.split(",") if p.strip()]
    else:  # ask for what is in the clip (a robot team would name the objects it cares about)
        overrides["prompts"] = sorted({composition_name(t["attributes"]["shape"], t["attributes"]["color"])
                                       for t in tracks})
        print(f"[ros-demo] prompts: the clip's objects {overrides['prompts']}", flush=True)
    if args.score_threshold is not None:
        overrides.setdefault("score_threshold", args.score_threshold)
    if args.kernel_reuse != 1 or args.reuse_bottleneck:
        overrides.update(reuse_settings(args))
    overrides.update(input_topic=CAMERA_TOPIC, autostart=False)
    context = rclpy.Context()
    rclpy.init(context=context)
    # One executor thread. Every callback here only hands data over (inference runs on the node's own
    # worker thread), and rclpy's MultiThreadedExecutor re-polls its wait set in Python while a
    # callback is out, holding the GIL: the worker then waits for the GIL at each numpy call, and on
    # 2 cores the node fell to 1.2 Hz with p99 2.4 s (15.2 Hz, p99 89 ms with this executor).
    executor = SingleThreadedExecutor(context=context)
    nodes: list[Any] = []
    recorder = None
    try:
        segmenter = SegmentNode(context=context, namespace=NODE_NAMESPACE,
                                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        nodes.append(segmenter)
        client = rclpy.create_node("mobius_demo_camera_and_recorder", context=context)
        nodes.append(client)
        camera = Camera(client, frames, args.fps)
        recorder = Recorder(client, out / "overlay.mp4", args.fps, OptionalTypes.discover().info_type())
        for node in nodes:
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        print("[ros-demo] configuring the node (loading the model) ...", flush=True)
        if segmenter.trigger_configure() != TransitionCallbackReturn.SUCCESS \
                or segmenter.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            print("[ros-demo] the node did not start; see the error above", file=sys.stderr)
            return 1
        if not _wait(lambda: camera.publisher.get_subscription_count() > 0
                     and all(s.get_publisher_count() > 0 for s in recorder.subscriptions[:2]), 10):
            print("[ros-demo] the camera, node and recorder did not discover each other within 10 s "
                  "(check ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE)", file=sys.stderr)
            return 1
        stream_start = time.monotonic()
        budget = args.timeout - (stream_start - started)
        with tqdm(total=len(frames), desc="camera", unit="frame", mininterval=1.0) as progress:
            camera.start(progress)
            finished = camera.done.wait(max(1.0, budget))
        last = camera.stamps[-1] if camera.stamps else None
        _wait(lambda: last in recorder.overlay_stamps, max(0.5, min(5.0, args.timeout - (time.monotonic() - started))))
        seconds = time.monotonic() - stream_start
        time.sleep(1.2 * float(segmenter.get_parameter("diagnostics_period").value))  # a final diagnostics message
        if not finished:
            note = (note + "; " if note else "") + f"stopped after --timeout {args.timeout:.0f} s"
    finally:
        written = recorder.close() if recorder is not None else 0
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()
    summary = _summary(camera, recorder, written, seconds, note, out)
    summary["prompts"] = list(overrides["prompts"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print(summary)
    return 0 if written > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mobius-ros-demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from perception_core.runtime.processor import ProcessorConfig

    try:  # the processor's own rule, before the node is built
        ProcessorConfig(**reuse_settings(args))
    except ValueError as error:
        parser.error(f"--kernel-reuse / --reuse-bottleneck: {error}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
