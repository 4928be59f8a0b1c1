"""ROS image messages <-> NumPy arrays, for rclpy messages and rosbags messages alike.

Input: `sensor_msgs/Image` in any encoding of REP 104 / `sensor_msgs/image_encodings` that has a
colour meaning (rgb8, bgr8, rgba8, bgra8, mono8, mono16, rgb16, bgr16, rgba16, bgra16, bayer_*8/16,
yuv422/uyvy, yuyv/yuv422_yuy2, nv12, nv21) or an OpenCV type (8UC1..8UC4, 16UC1, 16UC3, 32FC1, ...),
with row padding (`step`) and either byte order; and `sensor_msgs/CompressedImage` in jpeg or png
(the image_transport `compressed` formats, e.g. "jpeg", "rgb8; jpeg compressed bgr8").
Output: a (H, W, 3) uint8 RGB array. cv_bridge does the conversion when it is installed (after the
checks below), `rosbags-image` otherwise; both give the same result.

Anything that cannot be converted raises ImageDecodeError (a ValueError) with one line saying why;
callers log it and skip the frame. The message is validated (size, step, data length, encoding,
compressed format and magic bytes) before any buffer is touched.

Conventions for encodings without a colour meaning (as cv_bridge): 1 channel = grey; 3 channels =
RGB order; 4 channels = RGB + ignored alpha; 16-bit scaled by 255/65535; floats taken as [0, 1]
intensities (clipped; NaN and inf become 0); signed ints min-max scaled.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

GENERIC_DTYPES = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16, "32S": np.int32,
                  "32F": np.float32, "64F": np.float64}
COMPRESSED_MAGIC = {"jpeg": (b"\xff\xd8",), "png": (b"\x89PNG\r\n\x1a\n",)}
MAX_SIDE = 16384  # larger sides are rejected before allocating anything
YUV422 = ("uyvy", "yuv422", "yuyv", "yuv422_yuy2")  # two pixels share one chroma pair
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an RGB frame; the text says why."""


def _encoding_info(encoding: str) -> tuple[np.dtype, int, bool]:
    """(dtype, channels, named) of an encoding; named = has a colour meaning rosbags-image knows."""
    from rosbags.image.image import ENCODINGMAP, ENC_RE

    if encoding in ENCODINGMAP:
        _, _, typestr, channels = ENCODINGMAP[encoding]
        return np.dtype(typestr), channels, True
    match = ENC_RE.fullmatch(encoding)
    if match:
        depth, channels = match.groups()
        if channels is not None and int(channels) < 1:
            raise ImageDecodeError(f"image encoding {encoding!r} has no channels; use e.g. 8UC1 or 8UC3")
        return np.dtype(GENERIC_DTYPES[depth]), int(channels or 1), False
    raise ImageDecodeError(
        f"unsupported image encoding {encoding!r}; use one of {', '.join(sorted(ENCODINGMAP))} "
        f"or an OpenCV type such as 8UC3, 16UC1, 32FC1")


def _rows(encoding: str, height: int) -> int:
    """Rows of the data buffer: the semi-planar YUV 4:2:0 formats carry chroma below the luma."""
    return height * 3 // 2 if encoding in ("nv12", "nv21") else height


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> its pixels as stored: (H, W) or (H, W, C), native byte order, no copy
    when the rows are unpadded. Honours `step` (row padding) and `is_bigendian`."""
    encoding = str(msg.encoding)
    dtype, channels, _ = _encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ImageDecodeError(f"image size {width}x{height} is invalid (each side must be 1..{MAX_SIDE})")
    if encoding in ("nv12", "nv21") and (height % 2 or width % 2):
        raise ImageDecodeError(f"{encoding} needs an even width and height, got {width}x{height}")
    if encoding in YUV422 and width % 2:
        raise ImageDecodeError(f"{encoding} (YUV 4:2:2) needs an even width, got {width}x{height}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is smaller than width x bytes per pixel = {row_bytes} "
                               f"({width} px of {encoding})")
    rows = _rows(encoding, height)
    data = np.frombuffer(msg.data, dtype=np.uint8) if len(msg.data) else np.zeros(0, np.uint8)
    if data.size < step * rows:
        raise ImageDecodeError(f"data has {data.size} bytes, {encoding} {width}x{height} with step {step} "
                               f"needs {step * rows}")
    buffer = data[:step * rows].reshape(rows, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(buffer).view(dtype)  # (rows, W*C*itemsize) bytes -> (rows, W*C) values
    pixels = pixels.reshape((rows, width, channels) if channels > 1 else (rows, width))
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    return pixels


def _generic_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """An OpenCV-typed image (no colour meaning) -> RGB uint8, by the module's conventions."""
    if pixels.dtype == np.uint8:
        scaled = pixels
    elif pixels.dtype == np.uint16:
        scaled = (pixels.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif pixels.dtype.kind == "f":
        values = np.nan_to_num(pixels.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scaled = (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:  # signed ints: no natural range; stretch what is there
        values = pixels.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = ((values - low) * (255.0 / max(high - low, 1e-12)) + 0.5).astype(np.uint8)
    if scaled.ndim == 2:
        return cv2.cvtColor(scaled, cv2.COLOR_GRAY2RGB)
    channels = scaled.shape[2]
    if channels == 1:
        return cv2.cvtColor(scaled[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels in (3, 4):
        return np.ascontiguousarray(scaled[:, :, :3])
    raise ImageDecodeError(f"an image with {channels} channels has no RGB meaning; use 1, 3 or 4 channels")


def _raw_to_rgb(msg: Any) -> np.ndarray:
    encoding = str(msg.encoding)
    pixels = image_to_array(msg)  # validates everything first
    _, _, named = _encoding_info(encoding)
    if not named:
        return _generic_to_rgb(pixels)
    bridge = _cv_bridge()
    if bridge is not None and hasattr(msg, "_fields_and_field_types"):  # an rclpy message
        return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    from rosbags.image.image import convert_color

    if encoding in ("nv12", "nv21"):  # rosbags-image reads these with the luma rows only
        code = cv2.COLOR_YUV2RGB_NV12 if encoding == "nv12" else cv2.COLOR_YUV2RGB_NV21
        return cv2.cvtColor(pixels, code)
    return np.ascontiguousarray(convert_color(pixels, encoding, "rgb8"))


def compressed_codec(msg: Any) -> str:
    """'jpeg' or 'png' from a CompressedImage format string and its magic bytes, else ImageDecodeError."""
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise ImageDecodeError(f"compressed format {msg.format!r} is a depth image; only colour jpeg/png are supported")
    codec = "jpeg" if ("jpeg" in fmt or "jpg" in fmt) else "png" if "png" in fmt else None
    if codec is None:
        raise ImageDecodeError(f"compressed format {msg.format!r} is not supported; use jpeg or png "
                               f"(e.g. 'jpeg' or 'rgb8; jpeg compressed bgr8')")
    head = bytes(msg.data[:8])
    if not any(head.startswith(magic) for magic in COMPRESSED_MAGIC[codec]):
        raise ImageDecodeError(f"compressed format says {codec} but the {len(msg.data)} data bytes "
                               f"do not start like a {codec} file")
    return codec


def compressed_size(data: bytes, codec: str) -> tuple[int, int] | None:
    """(width, height) declared by a PNG IHDR or JPEG SOF header; None when no header is found."""
    if codec == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    index = 2                                          # after SOI; walk the marker segments
    while index + 9 <= len(data) and data[index] == 0xFF:
        marker = data[index + 1]
        if marker == 0xFF:                             # fill byte
            index += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            index += 2
        elif marker in _JPEG_SOF:                      # FF Cx len(2) precision(1) height(2) width(2)
            return int.from_bytes(data[index + 7:index + 9], "big"), int.from_bytes(data[index + 5:index + 7], "big")
        else:
            index += 2 + int.from_bytes(data[index + 2:index + 4], "big")
    return None


def _compressed_to_rgb(msg: Any) -> np.ndarray:
    codec = compressed_codec(msg)
    size = compressed_size(bytes(msg.data[:65536]), codec)
    if size is not None and not (0 < size[0] <= MAX_SIDE and 0 < size[1] <= MAX_SIDE):
        raise ImageDecodeError(f"compressed {codec} declares {size[0]}x{size[1]} pixels (each side must be "
                               f"1..{MAX_SIDE}); refused before decoding")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)  # always 3-channel 8-bit BGR, whatever was stored
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(f"compressed image ({msg.format!r}, {data.size} bytes) could not be "
                               f"decoded: truncated or corrupt")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage (rclpy or rosbags) -> (H, W, 3) uint8 RGB.

    Raises ImageDecodeError with a one-line reason for anything that cannot be converted."""
    try:
        if hasattr(msg, "format"):
            return _compressed_to_rgb(msg)
        return _raw_to_rgb(msg)
    except ImageDecodeError:
        raise
    except (cv2.error, ValueError, TypeError, AttributeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ImageDecodeError(f"image conversion failed: {first_line}") from None
    except Exception as error:  # cv_bridge raises its own CvBridgeError
        raise ImageDecodeError(f"image conversion failed ({type(error).__name__}): {error}") from None


@lru_cache(maxsize=1)
def _cv_bridge() -> Any:
    """A CvBridge where cv_bridge is installed, else None."""
    try:
        from cv_bridge import CvBridge  # type: ignore[import-not-found]
    except ImportError:
        return None
    return CvBridge()


def array_to_image(pixels: np.ndarray, encoding: str, header: Any = None) -> Any:
    """(H, W) or (H, W, C) array -> sensor_msgs/Image (rclpy) with the given encoding and header.

    The array must match the encoding's dtype and channel count (e.g. uint16 (H, W) for mono16)."""
    from sensor_msgs.msg import Image

    dtype, channels, _ = _encoding_info(encoding)
    pixels = np.ascontiguousarray(pixels)
    got_channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.dtype != dtype or got_channels != channels or pixels.ndim not in (2, 3):
        raise ValueError(f"encoding {encoding} needs a {dtype} array with {channels} channel(s), "
                         f"got {pixels.dtype} of shape {pixels.shape}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(msg.width * channels * dtype.itemsize)
    msg.data = pixels.tobytes()
    return msg


def rgb_to_compressed(rgb: np.ndarray, codec: str = "jpeg", header: Any = None, quality: int = 90) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage in the image_transport convention."""
    from sensor_msgs.msg import CompressedImage

    if codec not in COMPRESSED_MAGIC:
        raise ValueError(f"codec must be 'jpeg' or 'png', got {codec!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if codec == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f"rgb8; {codec} compressed bgr8"
    msg.data = encoded.tobytes()
    return msg
