"""Sink descriptions for video files: the encoder and muxer picked by the file suffix.

`file_sink(path)` turns 'overlay.mp4' into a gst-launch description such as
'video/x-raw,format=I420 ! x264enc ... ! mp4mux ! filesink location="overlay.mp4"', using the
first encoder of the suffix's list that an installed plugin provides (x264enc comes from
gst-plugins-ugly, vp8enc/vp9enc/jpegenc from gst-plugins-good). `default_output` picks the file
type that this installation can write, mp4 first.
"""
from __future__ import annotations

from pathlib import Path

from .pipeline import PipelineError, element_exists

# x264enc: no B-frames and a fast preset, so the encoder neither lags nor hogs the CPU the model needs.
# I420 in front of it: from RGB it would otherwise pick 4:4:4, which many players cannot decode.
_ENCODERS: dict[str, tuple[str, str]] = {
    "x264enc": ("x264enc", "video/x-raw,format=I420 ! x264enc speed-preset=veryfast tune=zerolatency"),
    "vp9enc": ("vp9enc", "vp9enc deadline=1 cpu-used=8"),
    "vp8enc": ("vp8enc", "vp8enc deadline=1 cpu-used=8"),
    "jpegenc": ("jpegenc", "jpegenc quality=90"),
}

# suffix -> (muxer, encoders it accepts in order of preference)
_CONTAINERS: dict[str, tuple[str, tuple[str, ...]]] = {
    ".mp4": ("mp4mux", ("x264enc", "vp9enc")),
    ".m4v": ("mp4mux", ("x264enc", "vp9enc")),
    ".mov": ("qtmux", ("x264enc", "jpegenc")),
    ".mkv": ("matroskamux", ("x264enc", "vp8enc", "vp9enc", "jpegenc")),
    ".webm": ("webmmux", ("vp8enc", "vp9enc")),
    ".avi": ("avimux", ("jpegenc",)),
}


def quote(path: str | Path) -> str:
    """A file path as a quoted gst-launch property value."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def file_sink(path: str | Path) -> str:
    """gst-launch description that encodes RGB frames into the video file `path`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CONTAINERS:
        raise PipelineError(f"cannot tell the video format of '{path}' from its suffix; use one of "
                            f"{', '.join(sorted(_CONTAINERS))} or give a full --sink description")
    muxer, encoders = _CONTAINERS[suffix]
    available = [name for name in encoders if element_exists(_ENCODERS[name][0])]
    if not available or not element_exists(muxer):
        missing = muxer if not element_exists(muxer) else " or ".join(encoders)
        raise PipelineError(f"no GStreamer plugin here can write '{suffix}' files (missing {missing}); "
                            f"choose another suffix (.mp4, .mkv, .avi) or install gstreamer1.0-plugins-ugly/-good")
    return f"{_ENCODERS[available[0]][1]} ! {muxer} ! filesink location={quote(path)}"


def default_output(stem: str | Path) -> Path:
    """stem + the first suffix this installation can write: .mp4 (x264), .mkv (vp8), .avi (jpeg)."""
    stem = Path(stem)
    for suffix in (".mp4", ".mkv", ".avi"):
        muxer, encoders = _CONTAINERS[suffix]
        if element_exists(muxer) and any(element_exists(_ENCODERS[name][0]) for name in encoders):
            return stem.with_suffix(suffix)
    raise PipelineError("no video encoder plugin is installed (x264enc, vp8enc or jpegenc); install "
                        "gstreamer1.0-plugins-good or give a --sink such as 'fakesink' or 'autovideosink'")
