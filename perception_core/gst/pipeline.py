"""GStreamer plumbing: any source -> RGB frames -> a Python callback -> any sink.

Two pipelines joined by Python:

    input:   SOURCE ! queue ! videoconvert ! video/x-raw,format=RGB ! appsink
    output:  appsrc (RGB, the source's size and frame rate) ! videoconvert ! SINK

The output pipeline starts when the first frame has arrived, so its caps are the negotiated
input caps (any source format: videoconvert does the colour conversion). A live source (its
pipeline answers NO_PREROLL on PAUSED) gets a leaky queue and an appsink that keeps only the
newest frame, so latency stays bounded when the callback is slower than the camera; a file
source is read without dropping anything. Buffer timestamps and durations travel from input to
output (shifted so that the first frame is at 0, which keeps file muxers and live sinks happy).

The bus is polled with `timed_pop_filtered` (no GLib main loop, no threads of our own). End of
stream, `max_frames` and Ctrl-C all end the output with EOS so files are complete; errors name
the element that failed.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

APPSINK, APPSRC, QUEUE = "mobius_appsink", "mobius_appsrc", "mobius_queue"

# (H, W, 3) uint8 RGB frame, stamp in seconds (the source's timestamp) -> (H, W, 3) uint8 RGB frame
FrameCallback = Callable[[np.ndarray, float], np.ndarray]


class PipelineError(RuntimeError):
    """A GStreamer description that does not parse, or a pipeline that failed while running."""


@dataclass(frozen=True)
class PipelineConfig:
    source: str                      # gst-launch description of the source part (no trailing '!')
    sink: str = "fakesink"           # gst-launch description of the sink part
    max_frames: int | None = None    # stop after this many frames (None: until end of stream)
    live: bool | None = None         # None: ask the pipeline; True/False: force leaky/lossless reading
    pull_timeout_s: float = 0.1      # how long one appsink pull waits before the bus is checked
    finish_timeout_s: float = 30.0   # how long the sink may take to finish (write) after EOS


@dataclass
class PipelineStats:
    frames: int = 0                  # frames given to the callback and pushed to the sink
    width: int = 0
    height: int = 0
    framerate: tuple[int, int] = (0, 1)  # numerator, denominator of the source caps (0/1 variable)
    live: bool = False
    ended_by: str = ""               # "eos" | "max_frames" | "interrupted"


@functools.lru_cache(maxsize=1)
def gst():
    """(Gst, GstApp, GstVideo) after Gst.init; initialised once per process."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        gi.require_version("GstVideo", "1.0")
        from gi.repository import Gst, GstApp, GstVideo
    except (ImportError, ValueError) as error:
        raise PipelineError(
            f"GStreamer with Python bindings is not available ({error}); install pygobject and "
            f"gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 ('make setup' does)") from error
    Gst.init(None)
    return Gst, GstApp, GstVideo


def element_exists(name: str) -> bool:
    """Whether an installed plugin provides the element factory `name`."""
    return gst()[0].ElementFactory.find(name) is not None


def parse(description: str, part: str, user_text: str | None = None):
    """Gst.parse_launch with an error that names the failing element and the part it is in.

    description: the full pipeline; user_text: the user's own part of it (quoted in errors).
    """
    Gst = gst()[0]
    from gi.repository import GLib

    user_text = description if user_text is None else user_text
    if not user_text.strip():
        raise PipelineError(f"the {part} description is empty; give a gst-launch description such as "
                            f"'videotestsrc' or 'filesrc location=clip.mp4 ! decodebin'")
    try:
        return Gst.parse_launch(description)
    except GLib.Error as error:
        hint = ""
        if "no element" in error.message:
            name = error.message.split('"')[1] if '"' in error.message else "?"
            hint = (f"; no installed plugin provides element '{name}' (check the spelling; "
                    f"'gst-inspect-1.0 {name}' says whether it exists)")
        elif "could not link" in error.message and QUEUE in error.message:
            hint = "; the source does not output video (end it with a video element, e.g. '! decodebin')"
        elif "could not link" in error.message:
            hint = "; the elements do not accept each other's formats (add a converter or caps filter)"
        raise PipelineError(f"bad {part} description '{user_text}': {error.message}{hint}") from error


def _bus_error(message) -> str:
    error, debug = message.parse_error()
    name = message.src.get_name() if message.src is not None else "pipeline"
    detail = f" ({debug.splitlines()[-1]})" if debug else ""
    if "missing a plug-in" in error.message:
        detail += "; install the plugin that decodes this format (H.264 needs gstreamer1.0-libav) or convert the file"
    return f"element '{name}' failed: {error.message}{detail}"


def _check_bus(pipeline, part: str, wait_s: float = 0.0) -> bool:
    """Raises PipelineError on an ERROR message; True on EOS; prints warnings."""
    Gst = gst()[0]
    bus = pipeline.get_bus()
    kinds = Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.WARNING
    timeout = int(wait_s * Gst.SECOND)
    while True:
        message = bus.timed_pop_filtered(timeout, kinds)
        if message is None:
            return False
        if message.type == Gst.MessageType.ERROR:
            raise PipelineError(f"{part} pipeline: {_bus_error(message)}")
        if message.type == Gst.MessageType.EOS:
            return True
        warning, _ = message.parse_warning()
        print(f"[gst] warning from '{message.src.get_name()}': {warning.message}", file=sys.stderr)
        timeout = 0


def _set_state(pipeline, state, part: str):
    Gst = gst()[0]
    result = pipeline.set_state(state)
    if result == Gst.StateChangeReturn.FAILURE:
        _check_bus(pipeline, part, wait_s=1.0)  # raises with the element's own message if it posted one
        raise PipelineError(f"{part} pipeline could not start (state {state.value_nick}); "
                            f"run with GST_DEBUG=3 for details")
    return result


def _frame_from_sample(sample) -> tuple[np.ndarray, int, int]:
    """Sample -> ((H, W, 3) uint8 RGB copy, pts ns or -1, duration ns or -1); rows may be padded."""
    Gst, _, GstVideo = gst()
    info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    buffer = sample.get_buffer()
    ok, mapped = buffer.map(Gst.MapFlags.READ)
    if not ok:
        raise PipelineError("could not read a frame buffer from the appsink")
    try:
        rows = np.frombuffer(mapped.data, np.uint8, count=info.stride[0] * info.height)
        frame = rows.reshape(info.height, info.stride[0])[:, :info.width * 3]
        frame = frame.reshape(info.height, info.width, 3).copy()
    finally:
        buffer.unmap(mapped)
    pts = buffer.pts if buffer.pts != Gst.CLOCK_TIME_NONE else -1
    duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else -1
    return frame, pts, duration


def _make_buffer(frame: np.ndarray, stride: int, pts: int, duration: int):
    """(H, W, 3) uint8 -> a Gst.Buffer with rows padded to `stride` bytes (GStreamer's layout)."""
    Gst = gst()[0]
    height, width = frame.shape[:2]
    if stride != width * 3:
        padded = np.zeros((height, stride), np.uint8)
        padded[:, :width * 3] = frame.reshape(height, width * 3)
        frame = padded
    buffer = Gst.Buffer.new_wrapped(np.ascontiguousarray(frame).tobytes())
    if pts >= 0:
        buffer.pts = pts
    if duration >= 0:
        buffer.duration = duration
    return buffer


class _Output:
    """appsrc ! videoconvert ! SINK, started on the first frame with that frame's caps."""

    def __init__(self, sink: str, live: bool):
        self.pipeline = parse(f"appsrc name={APPSRC} format=time block=true max-bytes=0 "
                              f"is-live={'true' if live else 'false'} ! videoconvert ! {sink}", "sink", sink)
        self.appsrc = self.pipeline.get_by_name(APPSRC)
        self.stride = 0
        self.started = False
        self.first_pts = -1

    def start(self, caps) -> None:
        Gst, _, GstVideo = gst()
        structure = caps.get_structure(0)
        ok, num, den = structure.get_fraction("framerate")
        width, height = structure.get_value("width"), structure.get_value("height")
        rate = f"{num}/{den}" if ok else "0/1"
        out_caps = Gst.Caps.from_string(f"video/x-raw,format=RGB,width={width},height={height},framerate={rate}")
        self.stride = GstVideo.VideoInfo.new_from_caps(out_caps).stride[0]
        self.appsrc.set_property("caps", out_caps)
        _set_state(self.pipeline, Gst.State.PLAYING, "sink")
        self.started = True

    def push(self, frame: np.ndarray, pts: int, duration: int) -> None:
        Gst = gst()[0]
        if pts >= 0 and self.first_pts < 0:
            self.first_pts = pts
        shifted = max(0, pts - self.first_pts) if pts >= 0 else -1
        result = self.appsrc.emit("push-buffer", _make_buffer(frame, self.stride, shifted, duration))
        if result not in (Gst.FlowReturn.OK, Gst.FlowReturn.FLUSHING):
            _check_bus(self.pipeline, "sink", wait_s=1.0)
            raise PipelineError(f"the sink refused a frame ({result.value_nick}); check the --sink description")
        _check_bus(self.pipeline, "sink")

    def finish(self, timeout_s: float) -> None:
        """EOS into the sink and wait until it has written everything (files need their trailer)."""
        Gst = gst()[0]
        try:
            if self.started:
                self.appsrc.emit("end-of-stream")
                if not _check_bus(self.pipeline, "sink", wait_s=timeout_s):
                    raise PipelineError(f"the sink did not finish within {timeout_s:.0f} s after end of stream")
        finally:
            self.pipeline.set_state(Gst.State.NULL)


def _input_pipeline(config: PipelineConfig):
    return parse(f"{config.source} ! queue name={QUEUE} ! videoconvert ! video/x-raw,format=RGB ! "
                 f"appsink name={APPSINK} sync=false max-buffers=2 drop=false", "source", config.source)


def _open_input(config: PipelineConfig):
    """Parses and pauses the input pipeline; returns (pipeline, appsink, live)."""
    Gst = gst()[0]
    pipeline = _input_pipeline(config)
    try:
        state = _set_state(pipeline, Gst.State.PAUSED, "source")
    except PipelineError:
        pipeline.set_state(Gst.State.NULL)
        raise
    live = state == Gst.StateChangeReturn.NO_PREROLL if config.live is None else config.live
    if live:  # keep only the newest frame: a slow callback sees fresh frames, never a backlog
        pipeline.get_by_name(QUEUE).set_property("leaky", 2)  # downstream: drop the oldest
        for key in ("max-size-buffers", "max-size-bytes", "max-size-time"):
            pipeline.get_by_name(QUEUE).set_property(key, 1 if key == "max-size-buffers" else 0)
        appsink = pipeline.get_by_name(APPSINK)
        appsink.set_property("max-buffers", 1)
        appsink.set_property("drop", True)
    try:
        _set_state(pipeline, Gst.State.PLAYING, "source")
    except PipelineError:
        pipeline.set_state(Gst.State.NULL)
        raise
    return pipeline, pipeline.get_by_name(APPSINK), live


def check_descriptions(config: PipelineConfig) -> None:
    """Parses the source and sink parts without starting anything (fail before loading a model)."""
    for pipeline in (_input_pipeline(config), _Output(config.sink, False).pipeline):
        pipeline.set_state(gst()[0].State.NULL)


def run_pipeline(config: PipelineConfig, on_frame: FrameCallback) -> PipelineStats:
    """Runs SOURCE -> on_frame -> SINK until end of stream, max_frames or Ctrl-C.

    on_frame gets each frame as (H, W, 3) uint8 RGB and its timestamp in seconds, and returns the
    frame to show/write (same shape). Raises PipelineError (naming the element) on any failure.
    """
    Gst = gst()[0]
    if config.max_frames is not None and config.max_frames < 1:
        raise PipelineError(f"max_frames must be at least 1, got {config.max_frames}")
    stats = PipelineStats()
    output = _Output(config.sink, bool(config.live))  # a bad sink fails before the source opens
    pipeline, appsink, stats.live = _open_input(config)
    if stats.live:
        output.appsrc.set_property("is-live", True)
    try:
        stats.ended_by = _loop(config, on_frame, pipeline, appsink, output, stats)
    finally:
        pipeline.set_state(Gst.State.NULL)
        try:
            output.finish(config.finish_timeout_s)
        except PipelineError as error:  # do not hide the error that got us here
            if sys.exc_info()[0] is None:
                raise
            print(f"[gst] {error}", file=sys.stderr)
    if stats.frames == 0:
        raise PipelineError("the source ended before producing any video frame; check that it "
                            "outputs video (e.g. 'filesrc location=x.mp4 ! decodebin')")
    return stats


def _loop(config, on_frame, pipeline, appsink, output: _Output, stats: PipelineStats) -> str:
    Gst = gst()[0]
    timeout = int(config.pull_timeout_s * Gst.SECOND)
    try:
        while config.max_frames is None or stats.frames < config.max_frames:
            sample = appsink.try_pull_sample(timeout)
            if sample is None:
                if _check_bus(pipeline, "source") or appsink.is_eos():
                    return "eos"
                continue
            frame, pts, duration = _frame_from_sample(sample)
            if not output.started:
                output.start(sample.get_caps())
                structure = sample.get_caps().get_structure(0)
                ok, num, den = structure.get_fraction("framerate")
                stats.framerate = (num, den) if ok else (0, 1)
                stats.height, stats.width = frame.shape[:2]
            elif frame.shape[:2] != (stats.height, stats.width):
                raise PipelineError(f"the source changed its frame size from {stats.width}x{stats.height} to "
                                    f"{frame.shape[1]}x{frame.shape[0]} mid-stream; fix it with a caps filter, "
                                    f"e.g. '! videoscale ! video/x-raw,width={stats.width},height={stats.height}'")
            if pts < 0 and stats.framerate[0] > 0:  # an untimed source: stamp frames by the nominal rate
                num, den = stats.framerate
                pts, duration = stats.frames * den * Gst.SECOND // num, den * Gst.SECOND // num
            shown = on_frame(frame, pts / Gst.SECOND if pts >= 0 else float(stats.frames))
            if not isinstance(shown, np.ndarray) or shown.shape != frame.shape or shown.dtype != np.uint8:
                raise PipelineError(f"the frame callback must return a uint8 array of shape {frame.shape}, "
                                    f"got {getattr(shown, 'dtype', type(shown))} {getattr(shown, 'shape', '')}")
            output.push(shown, pts, duration)
            stats.frames += 1
        return "max_frames"
    except KeyboardInterrupt:
        return "interrupted"
