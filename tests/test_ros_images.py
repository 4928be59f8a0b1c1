"""Image message conversion (mobius_ros/images.py) on real sensor_msgs and rosbags messages.

Inputs are built independently of the code under test (NumPy / OpenCV from a known RGB frame), for
every encoding family, with row padding and both byte orders; bad messages raise ImageDecodeError.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from mobius_ros.images import ImageDecodeError, array_to_image, image_to_array, rgb_to_compressed, to_rgb

pytestmark = pytest.mark.ros
H, W = 12, 16


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)


def raw(pixels: np.ndarray, encoding: str, step: int | None = None, bigendian: bool = False) -> Image:
    """An Image built by hand (not by array_to_image), optionally with padded rows."""
    pixels = np.ascontiguousarray(pixels)
    row = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1) * pixels.itemsize
    step = step or row
    data = pixels.astype(pixels.dtype.newbyteorder(">") if bigendian else pixels.dtype).tobytes()
    rows = [data[i * row:(i + 1) * row] + b"\xee" * (step - row) for i in range(pixels.shape[0])]
    return Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=int(bigendian),
                 step=step, data=b"".join(rows))


def test_colour_encodings_are_exact(rgb):
    alpha = np.full((H, W, 1), 77, np.uint8)
    cases = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
             "bgra8": np.concatenate([rgb[..., ::-1], alpha], 2), "8UC3": rgb,
             "8UC4": np.concatenate([rgb, alpha], 2)}
    for encoding, pixels in cases.items():
        np.testing.assert_array_equal(to_rgb(raw(pixels, encoding)), rgb, err_msg=encoding)


def test_grey_and_deep_encodings(rgb):
    grey = rgb[..., 0]
    want = np.repeat(grey[..., None], 3, axis=2).astype(int)
    cases = {"mono8": grey, "8UC1": grey, "mono16": grey.astype(np.uint16) * 257,
             "16UC1": grey.astype(np.uint16) * 257, "32FC1": grey.astype(np.float32) / 255.0}
    for encoding, pixels in cases.items():
        got = to_rgb(raw(pixels, encoding))
        assert got.dtype == np.uint8 and got.shape == (H, W, 3), encoding
        assert np.abs(got.astype(int) - want).max() <= 1, encoding
    deep = {"rgb16": rgb.astype(np.uint16) * 257, "bgra16": np.concatenate(
        [rgb[..., ::-1].astype(np.uint16) * 257, np.zeros((H, W, 1), np.uint16)], 2)}
    for encoding, pixels in deep.items():
        assert np.abs(to_rgb(raw(pixels, encoding)).astype(int) - rgb).max() <= 1, encoding


def test_non_finite_floats_become_black():
    pixels = np.full((H, W), 0.5, np.float32)
    pixels[0, :3] = [np.nan, np.inf, -np.inf]
    got = to_rgb(raw(pixels, "32FC1"))
    assert (got[0, :3] == 0).all() and (got[1:] == 128).all()


def test_padded_rows_and_big_endian(rgb):
    np.testing.assert_array_equal(to_rgb(raw(rgb, "rgb8", step=W * 3 + 13)), rgb)
    deep = rgb[..., 1].astype(np.uint16) * 257
    little, big = to_rgb(raw(deep, "mono16")), to_rgb(raw(deep, "mono16", step=W * 2 + 6, bigendian=True))
    np.testing.assert_array_equal(little, big)
    np.testing.assert_array_equal(image_to_array(raw(deep, "mono16", bigendian=True)), deep)


def test_yuv_encodings_keep_layout():
    """Grey YUV (U = V = 128) with a dark left and a bright right half stays grey and ordered."""
    luma = np.where(np.arange(W) < W // 2, 40, 200).astype(np.uint8)[None].repeat(H, 0)
    uyvy = np.stack([np.full((H, W), 128, np.uint8), luma], 2)          # U Y V Y: chroma byte first
    yuyv = np.stack([luma, np.full((H, W), 128, np.uint8)], 2)
    nv = np.concatenate([luma, np.full((H // 2, W), 128, np.uint8)])    # Y plane, then interleaved UV
    messages = {"uyvy": raw(uyvy, "uyvy"), "yuv422": raw(uyvy, "yuv422"), "yuyv": raw(yuyv, "yuyv"),
                "nv12": raw(nv, "nv12"), "nv21": raw(nv, "nv21")}
    for name, msg in messages.items():
        if name.startswith("nv"):
            msg.height = H  # the message height is the image height; the buffer holds 1.5 x H rows
        got = to_rgb(msg).astype(int)
        assert got.shape == (H, W, 3), name
        assert np.abs(got - got[..., :1]).max() <= 2, name           # grey
        assert got[:, : W // 2 - 1].max() < 60 < 180 < got[:, W // 2 + 1:].min(), name


@pytest.mark.parametrize("encoding, offsets", [("bayer_rggb8", (0, 0, 1, 1)), ("bayer_bggr8", (1, 1, 0, 0)),
                                               ("bayer_grbg8", (0, 1, 1, 0)), ("bayer_gbrg8", (1, 0, 0, 1)),
                                               ("bayer_rggb16", (0, 0, 1, 1))])
def test_bayer_patterns_give_the_right_colour(encoding, offsets):
    """A flat colour mosaicked by the named pattern demosaics back to that colour (inside)."""
    colour = (200, 60, 20)
    red_row, red_col, blue_row, blue_col = offsets
    mosaic = np.full((H, W), colour[1], np.uint16)                     # green everywhere else
    mosaic[red_row::2, red_col::2] = colour[0]
    mosaic[blue_row::2, blue_col::2] = colour[2]
    deep = encoding.endswith("16")
    mosaic = mosaic * 257 if deep else mosaic.astype(np.uint8)
    got = to_rgb(raw(mosaic, encoding)).astype(int)
    assert np.abs(got[2:-2, 2:-2] - np.array(colour)).max() <= 2, got[H // 2, W // 2]


def test_compressed_png_is_exact_and_jpeg_close(rgb):
    smooth = cv2.GaussianBlur(rgb, (5, 5), 2)
    np.testing.assert_array_equal(to_rgb(rgb_to_compressed(rgb, "png")), rgb)
    assert np.abs(to_rgb(rgb_to_compressed(smooth, "jpeg", quality=95)).astype(int) - smooth).mean() < 4
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))  # grey PNG -> 3 channels
    got = to_rgb(CompressedImage(format="png", data=png.tobytes()))
    assert got.shape == (H, W, 3) and np.array_equal(got[..., 0], got[..., 2])


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: setattr(m, "encoding", "xyz16"), "unsupported image encoding 'xyz16'"),
    (lambda m: setattr(m, "encoding", "8UC2"), "2 channels"),
    (lambda m: setattr(m, "width", 0), "invalid"),
    (lambda m: setattr(m, "height", 100000), "invalid"),
    (lambda m: setattr(m, "step", W * 3 - 1), "step"),
    (lambda m: setattr(m, "data", bytes(m.data[:-1])), "needs"),
    (lambda m: setattr(m, "data", b""), "needs"),
    (lambda m: (setattr(m, "encoding", "nv12"), setattr(m, "width", W - 1)), "even"),
])
def test_bad_raw_images_raise_clear_errors(rgb, mutate, reason):
    msg = raw(rgb, "rgb8")
    mutate(msg)
    with pytest.raises(ImageDecodeError, match=reason):
        to_rgb(msg)


def test_bad_compressed_images_raise_clear_errors(rgb):
    png = rgb_to_compressed(rgb, "png")
    cases = [(CompressedImage(format="png", data=bytes(png.data[: len(png.data) // 2])), "truncated or corrupt"),
             (CompressedImage(format="jpeg", data=bytes(png.data)), "do not start like a jpeg"),
             (CompressedImage(format="16UC1; compressedDepth png", data=bytes(png.data)), "depth"),
             (CompressedImage(format="tiff", data=bytes(png.data)), "not supported"),
             (CompressedImage(format="png", data=b""), "do not start like a png")]
    for msg, reason in cases:
        with pytest.raises(ImageDecodeError, match=reason):
            to_rgb(msg)


def test_rosbags_messages_convert_like_rclpy_messages(rgb):
    """The bag tools hand rosbags messages (NumPy data) to the same function."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.LATEST)
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                                frame_id="cam")
    image = store.types["sensor_msgs/msg/Image"](header=header, height=H, width=W, encoding="bgr8", is_bigendian=0,
                                                 step=W * 3, data=np.frombuffer(rgb[..., ::-1].tobytes(), np.uint8))
    np.testing.assert_array_equal(to_rgb(image), rgb)
    png = rgb_to_compressed(rgb, "png")
    compressed = store.types["sensor_msgs/msg/CompressedImage"](header=header, format=png.format,
                                                                data=np.frombuffer(bytes(png.data), np.uint8))
    np.testing.assert_array_equal(to_rgb(compressed), rgb)


def test_array_to_image_round_trip_and_checks(rgb):
    ids = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 300
    msg = array_to_image(ids, "mono16")
    assert (msg.encoding, msg.step, len(msg.data)) == ("mono16", W * 2, H * W * 2)
    np.testing.assert_array_equal(image_to_array(msg), ids)
    np.testing.assert_array_equal(to_rgb(array_to_image(rgb, "rgb8")), rgb)
    with pytest.raises(ValueError, match="mono16 needs a uint16"):
        array_to_image(ids.astype(np.int32), "mono16")
