"""Letterbox + normalization of frames into the network input."""
import cv2
import numpy as np
import pytest

from perception_core.runtime.preprocess import MEAN, STD, preprocess


def _expected(frame: np.ndarray, size: int, bgr: bool) -> np.ndarray:
    """The definition: resize the long side to `size` (cubic when enlarging), RGB, (x - mean) / std,
    top-left anchored, zero (already normalized) padding, channels first."""
    height, width = frame.shape[:2]
    scale = size / max(height, width)
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    resized = cv2.resize(frame, (cols, rows), interpolation=cv2.INTER_LINEAR if scale < 1 else cv2.INTER_CUBIC)
    if bgr:
        resized = resized[..., ::-1]
    out = np.zeros((size, size, 3), np.float32)
    out[:rows, :cols] = (resized.astype(np.float32) - MEAN) / STD
    return out.transpose(2, 0, 1)[None]


@pytest.mark.parametrize("shape", [(288, 384), (384, 384), (100, 700), (1000, 50), (50, 60), (1, 2000)])
@pytest.mark.parametrize("bgr", [False, True])
def test_preprocess_matches_its_definition(shape, bgr):
    frame = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    image, box = preprocess(frame, 384, bgr=bgr)
    assert image.shape == (1, 3, 384, 384) and image.dtype == np.float32 and image.flags.c_contiguous
    np.testing.assert_allclose(image, _expected(frame, 384, bgr), rtol=0, atol=1e-6)
    rows, cols = box.valid
    assert not image[..., rows:, :].any() and not image[..., :, cols:].any()   # padding
    # a pure red pixel normalizes to (1 - mean) / std in channel 0 whatever the input order
    red = np.zeros((384, 384, 3), np.uint8)
    red[..., 2 if bgr else 0] = 255
    assert preprocess(red, 384, bgr=bgr)[0][0, 0, 5, 5] == pytest.approx((255 - MEAN[0]) / STD[0])


def test_preprocess_takes_non_contiguous_frames():
    """Views a driver or cv_bridge may hand over (flipped channels, a crop of a larger buffer)."""
    base = np.random.default_rng(3).integers(0, 256, (300, 500, 4), dtype=np.uint8)
    for view in (base[:, :, 2::-1], base[10:298, 20:404, :3], base[::-1, :, 1:]):
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(preprocess(view, 384)[0], preprocess(np.ascontiguousarray(view), 384)[0])
