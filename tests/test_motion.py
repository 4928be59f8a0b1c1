"""Motion compensation of bottleneck reuse (runtime/motion.py): the keyframe's coarse mask part is
moved after the object by the shift at which it agrees with the fresh stride-4 part."""
import numpy as np
import pytest

from perception_core.runtime import motion

SIZE = 48


def _disc(center, radius):
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return np.hypot(rows - center[0], cols - center[1]) <= radius


def _parts(old, new, radius=8.0):
    """A coarse part that says 'object at `old`' (a smooth cone, positive within `radius`) and a fine
    part that sees it at `new` (+-2 inside / outside a sharp disc)."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    coarse = 4.0 * (1.0 - np.hypot(rows - old[0], cols - old[1]) / radius)
    fine = np.where(_disc(new, radius), 2.0, -2.0)
    return coarse[None], fine[None]


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def test_the_coarse_part_follows_the_object():
    old, new = (20.0, 18.0), (25.0, 24.0)
    coarse, fine = _parts(old, new)
    key = np.array([motion.centroid(_disc(old, 8.0))])
    masks, shifts = motion.align(coarse, fine, key)
    np.testing.assert_allclose(shifts[0], np.subtract(new, old), atol=1.0)
    truth = _disc(new, 8.0)
    assert _iou(masks[0] > 0, truth) > 0.9 > _iou(coarse[0] + fine[0] > 0, truth)


def test_a_still_object_is_not_moved_and_a_warm_start_is_kept():
    coarse, fine = _parts((20.0, 20.0), (20.0, 20.0))
    key = np.array([motion.centroid(_disc((20.0, 20.0), 8.0))])
    masks, shifts = motion.align(coarse, fine, key)
    np.testing.assert_array_equal(shifts, [[0.0, 0.0]])
    np.testing.assert_array_equal(masks, coarse + fine)
    coarse, fine = _parts((20.0, 20.0), (26.0, 20.0))       # the shift found last frame is the answer now
    _, shifts = motion.align(coarse, fine, key, start=np.array([[6.0, 0.0]]))
    np.testing.assert_array_equal(shifts, [[6.0, 0.0]])


def test_objects_without_a_keyframe_mask_and_runaway_starts():
    coarse, fine = _parts((20.0, 20.0), (24.0, 20.0))
    masks, shifts = motion.align(coarse, fine, np.full((1, 2), np.nan))
    np.testing.assert_array_equal(shifts, [[0.0, 0.0]])
    np.testing.assert_array_equal(masks, coarse + fine)
    empty = np.full((1, SIZE, SIZE), -5.0)                    # the object vanished: no centroid to follow
    masks, shifts = motion.align(empty, empty, np.array([[20.0, 20.0]]), start=np.array([[100.0, -100.0]]))
    limit = motion.MAX_SHIFT * SIZE
    np.testing.assert_array_equal(shifts, [[limit, -limit]])
    assert (masks < 0).all()


def test_shifter_moves_and_replicates_the_border():
    values = np.arange(20.0).reshape(4, 5)
    shifter = motion.Shifter(values, (2, 3))
    moved = shifter(np.array([1.4, -2.0]))                    # one row down, two columns left
    np.testing.assert_array_equal(moved[1:, :3], values[:3, 2:])
    np.testing.assert_array_equal(moved[0], moved[1])        # rows entering at the top repeat the border
    np.testing.assert_array_equal(moved[:, 3], moved[:, 2])
    assert np.isnan(motion.centroid(np.zeros((3, 3), bool))).all()
    np.testing.assert_array_equal(shifter.padded, np.pad(values, ((2, 2), (3, 3)), mode="edge"))
    np.testing.assert_array_equal(shifter(np.array([9.0, -9.0])), shifter(np.array([2.0, -3.0])))  # clipped
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:6] = True
    np.testing.assert_allclose(motion.centroid(mask), [1.5, 3.5])
    logits = np.stack([np.where(mask, 1.0, -1.0), np.full((5, 6), -1.0)])
    centroids = motion.mask_centroids(logits)
    np.testing.assert_allclose(centroids[0], [1.5, 3.5])
    assert np.isnan(centroids[1]).all() and motion.mask_centroids(logits[:0]).shape == (0, 2)


def test_mismatched_parts_are_refused():
    with pytest.raises(ValueError, match="key_centroids"):
        motion.align(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="alike"):
        motion.align(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), np.zeros((1, 2)))
