"""`mobius_segmenter`: the MOBIUS instance-segmentation lifecycle node.

    mobius-segment --ros-args --params-file config/segment.yaml [-p prompts:="['red star']"]
    ros2 launch mobius_ros segment.launch.py

Lifecycle: parameters are declared in __init__ (defaults from config/segment.yaml, see
parameters.py); on_configure loads the model (a FrameProcessor) and creates the publishers, failing
the transition with one clear log line when the model file is missing or broken; on_activate
subscribes and starts the inference worker; on_deactivate / on_cleanup release them again.
With `autostart` the node walks itself to active (main()).

Threading: the subscription callback only drops the message into a one-slot mailbox (frame_slot.py)
and returns; one worker thread takes the newest message, converts it (images.py), runs the frame
processor and publishes. A frame replaced before the worker got to it is dropped and counted: the
node never queues stale frames. Image QoS: keep-last 1, reliability from `qos_reliability`.

Outputs (all with the input header): ~/instances (mono16 ids), ~/instances_info (records),
~/detections (vision_msgs, when installed), ~/overlay (only while subscribed), and /diagnostics.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image

from . import outputs, parameters
from .frame_slot import LatestFrameSlot
from .images import ImageDecodeError, to_rgb
from .node_stats import NodeStats

_TYPES = {"string": ParameterType.PARAMETER_STRING, "string_array": ParameterType.PARAMETER_STRING_ARRAY,
          "double": ParameterType.PARAMETER_DOUBLE, "integer": ParameterType.PARAMETER_INTEGER,
          "bool": ParameterType.PARAMETER_BOOL}
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
WORKER_JOIN_TIMEOUT_S = 10.0
LOG_REPEAT_S = 5.0  # the same kind of input problem is logged at most this often


def descriptor(name: str, spec: parameters.ParamSpec) -> ParameterDescriptor:
    """A ParameterDescriptor with description, type and range (ros2 param describe shows them)."""
    text = spec.description + ("" if spec.dynamic else " (applied on configure)")
    desc = ParameterDescriptor(name=name, type=_TYPES[spec.kind], description=text)
    if spec.choices is not None:
        desc.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    if spec.low is not None and spec.kind == "double":
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))]
    if spec.low is not None and spec.kind == "integer":
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return desc


class SegmentNode(LifecycleNode):
    """See the module docstring. `defaults_file` replaces config/segment.yaml (tests, tools)."""

    def __init__(self, node_name: str = parameters.NODE_NAME, defaults_file: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        defaults = parameters.load_defaults(defaults_file)
        for name, spec in parameters.SPECS.items():
            value = float(defaults[name]) if spec.kind == "double" else defaults[name]
            self.declare_parameter(name, value, descriptor(name, spec))
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._types = outputs.OptionalTypes.discover()
        self._lock = threading.Lock()
        self._pending_prompts: list[str] | None = None
        self._max_rate = float(self.get_parameter("max_rate").value)
        self._publish_overlay = bool(self.get_parameter("publish_overlay").value)
        self._processor: Any = None
        self._out_pubs: dict[str, Any] = {}
        self._subscription: Any = None
        self._input_topic = ""
        self._slot = LatestFrameSlot()
        self._stats = NodeStats()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._state = "unconfigured"
        self._last_log: tuple[str, float] = ("", 0.0)
        self._diagnostics_pub = None
        if self._types.diagnostics is not None:
            self._diagnostics_pub = self.create_publisher(self._types.diagnostics[0], "/diagnostics", 10)
            self.create_timer(float(self.get_parameter("diagnostics_period").value), self._publish_diagnostics)

    # ------------------------------------------------------------------ parameters

    def values(self) -> dict[str, Any]:
        """Current parameter values by name."""
        return {name: self.get_parameter(name).value for name in parameters.SPECS}

    def _validate_parameters(self, changed: list[rclpy.Parameter]) -> SetParametersResult:
        for param in changed:
            if param.name not in parameters.SPECS:
                continue
            reason = parameters.check(param.name, param.value)
            if param.name == "prompts" and isinstance(param.value, (list, tuple)):  # [] too: say it is empty
                from perception_core.model.prompt_io import validate_prompts

                try:
                    validate_prompts(list(param.value))
                except ValueError as error:
                    reason = f"prompts rejected: {error}"
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changed: list[rclpy.Parameter]) -> None:
        static = []
        for param in changed:
            if param.name == "prompts":
                with self._lock:
                    self._pending_prompts = list(param.value)
            elif param.name == "max_rate":
                self._max_rate = float(param.value)
            elif param.name == "publish_overlay":
                self._publish_overlay = bool(param.value)
            elif param.name in parameters.SPECS:
                static.append(param.name)
        if static and self._processor is not None:
            self.get_logger().info(f"{', '.join(static)} changed: applied at the next configure "
                                   f"(deactivate, cleanup, configure, activate)")

    # ------------------------------------------------------------------ lifecycle

    def start_if_autostart(self) -> bool:
        """configure + activate when the `autostart` parameter is true; True if now active."""
        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart is false: waiting for configure/activate transitions")
            return False
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from perception_core.runtime.processor import FrameProcessor

        values = self.values()
        try:
            config = parameters.processor_config(values)
            processor = FrameProcessor(config, values["prompts"])
            warm_ms = processor.warm_up()       # the first camera frame then costs what every frame costs
        except (FileNotFoundError, ValueError, OSError) as error:
            hint = "" if "model_path" in str(error) else " (node parameters: model_path, backend, prompts)"
            self.get_logger().error(f"configure failed: {error}{hint}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # onnxruntime/torch internals: still one line, never a traceback
            self.get_logger().error(f"configure failed: could not load the model ({type(error).__name__}: "
                                    f"{error}); check parameters model_path and backend")
            return TransitionCallbackReturn.FAILURE
        self._processor = processor
        with self._lock:
            self._pending_prompts = None
        self._out_pubs = {
            "instances": self.create_lifecycle_publisher(Image, "~/instances", OUTPUT_QOS),
            "info": self.create_lifecycle_publisher(self._types.info_type(), "~/instances_info", OUTPUT_QOS),
            "overlay": self.create_lifecycle_publisher(Image, "~/overlay", OUTPUT_QOS),
        }
        if self._types.detections is not None:
            self._out_pubs["detections"] = self.create_lifecycle_publisher(
                self._types.detections[0], "~/detections", OUTPUT_QOS)
        model = config.model or f"the shipped default ({config.backend})"
        self.get_logger().info(f"configured: model {model}, prompts {processor.prompts}, scores {processor.scores}, "
                               f"records as {self._types.info_type().__name__}, warm-up run {warm_ms:.0f} ms")
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        compressed = bool(self.get_parameter("input_compressed").value)
        topic = str(self.get_parameter("input_topic").value)
        self._input_topic = topic.rstrip("/") + "/compressed" if compressed else topic
        reliability = (ReliabilityPolicy.RELIABLE if self.get_parameter("qos_reliability").value == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        self._stats = NodeStats()
        self._slot = LatestFrameSlot()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="mobius_inference", daemon=True)
        self._worker.start()
        # with message info (rclpy >= Iron) the publishers' sequence numbers reveal frames the
        # keep-last-1 queue overwrote before the node saw them
        callback = self._on_image_with_info if hasattr(Subscription, "CallbackType") else self._on_image
        try:
            self._subscription = self.create_subscription(CompressedImage if compressed else Image,
                                                          self._input_topic, callback, qos)
        except Exception as error:  # rclpy swallows exceptions of transition callbacks without a word
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]
            self.get_logger().error(f"activate failed: cannot subscribe to input_topic {self._input_topic!r} "
                                    f"({reason}); set parameter input_topic to a valid ROS topic name")
            self._stop_input()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"active: segmenting {self._input_topic} "
                               f"({'CompressedImage' if compressed else 'Image'}, {reliability.name.lower()})")
        self._state = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured: can be configured again

    def destroy_node(self) -> None:
        self._stop_input()
        super().destroy_node()

    def _stop_input(self) -> None:
        """Unsubscribes and stops the worker (after the frame it is on)."""
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(WORKER_JOIN_TIMEOUT_S)
            if self._worker.is_alive():
                self.get_logger().warning("inference worker still busy after "
                                          f"{WORKER_JOIN_TIMEOUT_S:.0f} s; it stops after its frame")
            self._worker = None

    def _release(self) -> None:
        for publisher in self._out_pubs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._out_pubs = {}
        self._processor = None
        self._state = "unconfigured"

    # ------------------------------------------------------------------ data path

    def _on_image(self, msg: Any) -> None:
        """Executor thread: never blocks, only hands the message to the worker."""
        self._stats.record_received()
        self._slot.put(msg)

    def _on_image_with_info(self, msg: Any, info: dict) -> None:
        gid = info.get("publisher_gid")
        self._stats.record_received(bytes(gid["data"]) if gid else None, info.get("publication_sequence_number"))
        self._slot.put(msg)

    def _work(self) -> None:
        """Worker thread: newest frame -> processor -> outputs, until stopped."""
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.2)
            if item is None:
                continue
            started = time.monotonic()
            self._apply_pending_prompts()
            self._process(*item)
            rate = self._max_rate
            if rate > 0:  # newer frames replace each other (dropped) while we wait
                self._stop.wait(max(0.0, started + 1.0 / rate - time.monotonic()))

    def _apply_pending_prompts(self) -> None:
        with self._lock:
            prompts, self._pending_prompts = self._pending_prompts, None
        if prompts is None or self._processor is None:
            return
        try:
            self._processor.set_prompts(prompts)
            self.get_logger().info(f"prompts now {prompts}")
        except Exception as error:  # validated already; the text encoder may still refuse
            self.get_logger().error(f"prompts {prompts} not applied: {error}; keeping {self._processor.prompts}")

    def _log_problem(self, kind: str, text: str) -> None:
        """Each new kind of input problem is logged at once; repeats at most every LOG_REPEAT_S."""
        now = time.monotonic()
        if kind != self._last_log[0] or now - self._last_log[1] >= LOG_REPEAT_S:
            self._last_log = (kind, now)
            self.get_logger().warning(text)

    def _process(self, msg: Any, arrival: float) -> None:
        header, processor = msg.header, self._processor
        where = f"frame {header.stamp.sec}.{header.stamp.nanosec:09d} ({header.frame_id or 'no frame_id'}) " \
                f"on {self._input_topic}"
        try:
            rgb = to_rgb(msg)
        except ImageDecodeError as error:
            self._stats.record_bad(str(error))
            self._log_problem(f"bad:{error}", f"skipped {where}: {error}")  # only exact repeats are throttled
            return
        try:
            result = processor.process(rgb, header.stamp.sec + header.stamp.nanosec * 1e-9)
            self._publish(result, header, rgb, processor.prompts)
        except Exception as error:  # the node keeps serving; the reason is logged and counted
            self._stats.record_failed(f"{type(error).__name__}: {error}")
            self._log_problem(f"fail:{type(error).__name__}", f"skipped {where}: {type(error).__name__}: {error}")
            return
        self._stats.record_frame((time.monotonic() - arrival) * 1000.0, len(result.instances),
                                 result.kept_per_layer, result.decoder_gflops)

    def _publish(self, result: Any, header: Any, rgb: Any, prompts: list[str]) -> None:
        pubs = self._out_pubs
        pubs["instances"].publish(outputs.id_image_msg(result, header))
        pubs["info"].publish(outputs.info_msg(result, header, prompts, self._types))
        if "detections" in pubs:
            pubs["detections"].publish(outputs.detections_msg(result, header, self._types))
        if self._publish_overlay and pubs["overlay"].get_subscription_count() > 0:
            pubs["overlay"].publish(outputs.overlay_msg(rgb, result, header))

    def _publish_diagnostics(self) -> None:
        snapshot = self._stats.snapshot(self._slot.dropped)
        processor = self._processor  # cleanup may clear the attribute meanwhile
        hardware = processor.config.backend if processor is not None else "none"
        msg = outputs.diagnostics_msg(snapshot, self.get_fully_qualified_name(), self._state, self.get_clock().now().to_msg(),
                                      self._types, hardware)
        if msg is not None:
            self._diagnostics_pub.publish(msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mobius-segment`: standard rclpy argument handling (--ros-args ...)."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = SegmentNode()
        node.start_if_autostart()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (FileNotFoundError, ValueError) as error:  # the parameter file itself is unusable
        print(f"mobius-segment: {error}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
