"""Query-propagation tracker driven by synthetic detections (its real input): a scripted scene of
objects with their own query embeddings and moving masks, seen by a stand-in for the model that
continues carried queries (prefix rows) and proposes fresh detections for everything else."""
import numpy as np
import pytest

from perception_core.runtime.tracker import Detection, Tracker, TrackerConfig

GRID = 48
DIM = 16


class Scene:
    """Objects with a fixed embedding; `visible[name]` = frames where it is seen, `place` its box."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.embeddings = {}

    def embedding(self, name):
        if name not in self.embeddings:
            self.embeddings[name] = self.rng.normal(size=DIM)
        return self.embeddings[name] + self.rng.normal(scale=0.15, size=DIM)   # per-frame jitter

    def detect(self, tracker, objects, duplicates=False, score=0.9):
        """objects: {name: (x, y)} visible this frame (8x8 squares). Mirrors the model: a carried query
        that follows an object comes back as its prefix row; otherwise selection proposes it."""
        carried = tracker.track_queries(DIM)[0][0]      # (Nt, C), what the model would receive
        detections = []
        for name, (x, y) in objects.items():
            mask = np.zeros((GRID, GRID), bool)
            mask[y:y + 8, x:x + 8] = True
            embedding = self.embedding(name)
            box = np.array([(x + 4) / GRID, (y + 4) / GRID, 8 / GRID, 8 / GRID], np.float32)
            prefix = None
            if len(carried):
                similarity = carried @ self.embeddings[name] / np.linalg.norm(carried, axis=1)
                best = int(np.argmax(similarity))
                if similarity[best] > 0.8 * np.linalg.norm(self.embeddings[name]):
                    prefix = best
            detections.append(Detection(score, 0, mask, embedding, box, prefix, name))
            if prefix is not None and duplicates:        # selection finds the object again as well
                detections.append(Detection(score - 0.1, 0, mask.copy(), self.embedding(name), box, None, name))
        return detections


def run(script, config=TrackerConfig(), scene=None, duplicates=False, tracker=None):
    """script: list of {name: (x, y)} per frame -> list of {name: track_id} reported per frame."""
    scene = scene or Scene()
    tracker = tracker or Tracker(config)
    reported = []
    for frame, objects in enumerate(script):
        outputs = tracker.update(scene.detect(tracker, objects, duplicates))
        names = [o.detection.payload for o in outputs]
        pairs = [(o.track_id, o.detection.payload) for o in outputs]
        assert len(names) == len(set(names)), f"frame {frame}: an object got two tracks {pairs}"
        reported.append({o.detection.payload: o.track_id for o in outputs})
    return reported, tracker


def moving(x0, y0, frames, dx=1, dy=0):
    return [(x0 + dx * t, y0 + dy * t) for t in range(frames)]


def test_ids_persist_through_a_scripted_occlusion():
    a, b = moving(2, 5, 30), moving(30, 30, 30, dx=-1)
    script = [{"a": a[t], **({"b": b[t]} if not 8 <= t < 16 else {})} for t in range(30)]  # b hidden 8 frames
    reported, _ = run(script, duplicates=True)
    assert {r["a"] for r in reported} == {1}
    assert {r["b"] for r in reported if "b" in r} == {2}
    assert all("b" not in r for r in reported[8:16])
    assert reported[16]["b"] == 2          # back on its first visible frame, moved 8 px: no mask overlap


def test_exit_and_reentry_within_max_age_keeps_the_id():
    config = TrackerConfig(max_age=20)
    script = [{"a": (3, 3)} for _ in range(5)] + [{} for _ in range(15)] + [{"a": (35, 35)} for _ in range(3)]
    reported, tracker = run(script, config)
    assert [r.get("a") for r in reported] == [1] * 5 + [None] * 15 + [1] * 3
    assert [t.track_id for t in tracker.tracks] == [1]


def test_new_id_after_max_age_and_ids_are_never_reused():
    config = TrackerConfig(max_age=5)
    script = ([{"a": (3, 3), "b": (30, 3)}] * 4 + [{"b": (30, 3)}] * 8     # a gone for 8 > 5 frames
              + [{"a": (3, 3), "b": (30, 3)}] * 4)
    reported, tracker = run(script, config)
    assert reported[0] == {"a": 1, "b": 2}
    assert {r["b"] for r in reported} == {2}
    assert reported[-1]["a"] == 3          # a fresh id, not 1 again
    tracker.reset()
    again, _ = run([{"a": (3, 3)}] * 2, config, tracker=tracker)
    assert again[0]["a"] == 4              # reset forgets tracks, not the id counter


def test_random_churn_never_reuses_an_id():
    rng = np.random.default_rng(3)
    config = TrackerConfig(max_age=3)
    positions = {f"o{i}": (int(rng.integers(0, 40)), int(rng.integers(0, 40))) for i in range(6)}
    script = [{n: p for n, p in positions.items() if rng.random() < 0.6} for _ in range(60)]
    reported, _ = run(script, config, scene=Scene(seed=5))
    owner = {}
    for frame in reported:
        for name, track_id in frame.items():
            assert owner.setdefault(track_id, name) == name, f"id {track_id} given to {owner[track_id]} and {name}"
    assert len(owner) > len(positions)     # objects gone longer than max_age came back with new ids


def test_confirmation_and_one_frame_false_positives():
    config = TrackerConfig(confirm_hits=3)
    script = [{"a": (3, 3)}] * 6
    script[4] = {"a": (3, 3), "ghost": (30, 30)}                          # one frame only
    script = script + [{"a": (3, 3), "late": (30, 5)}] * 4                  # appears at frame 6
    reported, tracker = run(script, config)
    assert reported[0] == {"a": 1}         # objects of the first frames are reported at once
    assert all("ghost" not in r for r in reported)
    assert [("late" in r) for r in reported[6:]] == [False, False, True, True]
    assert all(t.detection.payload != "ghost" for t in tracker.tracks)


def test_duplicates_of_carried_objects_are_suppressed():
    reported, tracker = run([{"a": (3, 3), "b": (20, 20)}] * 6, duplicates=True)
    assert [r for r in reported] == [{"a": 1, "b": 2}] * 6
    assert len(tracker.tracks) == 2


def test_carried_queries_are_confirmed_tracks_seen_last_frame():
    scene, tracker = Scene(), Tracker(TrackerConfig(confirm_hits=2))
    tracker.update(scene.detect(tracker, {"a": (3, 3)}))
    queries, boxes = tracker.track_queries(DIM)
    assert queries.shape == (1, 0, DIM)    # tentative: not carried yet
    tracker.update(scene.detect(tracker, {"a": (4, 3)}))
    queries, boxes = tracker.track_queries(DIM)
    assert queries.shape == (1, 1, DIM) and boxes.shape == (1, 1, 4)
    assert boxes[0, 0, 0] == pytest.approx(8 / GRID)
    # a carried query whose score fell below keep_score does not continue its track
    weak = scene.detect(tracker, {"a": (5, 3)}, score=0.1)
    assert weak[0].prefix == 0
    assert tracker.update(weak) == []
    assert tracker.tracks[0].state == "lost"
    assert tracker.track_queries(DIM)[0].shape == (1, 0, DIM)


def test_hungarian_assigns_two_returning_objects_by_embedding():
    scene = Scene(seed=1)
    script = [{"a": (3, 3), "b": (30, 30)}] * 3 + [{}] * 3 + [{"a": (30, 30), "b": (3, 3)}] * 2  # swapped places
    reported, _ = run(script, TrackerConfig(embedding_weight=0.8), scene=scene)
    assert reported[0] == {"a": 1, "b": 2} and reported[-1] == {"a": 1, "b": 2}


def test_bad_configuration_and_frame_order():
    with pytest.raises(ValueError, match="keep_score"):
        TrackerConfig(keep_score=1.5)
    with pytest.raises(ValueError, match="confirm_hits"):
        TrackerConfig(confirm_hits=0)
    tracker = Tracker()
    tracker.update([], frame=5)
    with pytest.raises(ValueError, match="must increase"):
        tracker.update([], frame=5)


def square(x, y, size=8):
    mask = np.zeros((GRID, GRID), bool)
    mask[y:y + size, x:x + size] = True
    return mask


def detection(label, x, y, embedding, prefix=None, score=0.9):
    box = np.array([(x + 4) / GRID, (y + 4) / GRID, 8 / GRID, 8 / GRID], np.float32)
    return Detection(score, label, square(x, y), np.asarray(embedding, np.float64), box, prefix)


def confirmed_tracker(objects):
    """A tracker with one confirmed track per (label, x, y, embedding) after two frames."""
    tracker = Tracker(TrackerConfig(confirm_hits=2))
    for _ in range(2):
        tracker.track_queries(DIM)
        tracker.update([detection(*o) for o in objects])
    return tracker


def test_a_carried_query_that_drifts_to_another_object_does_not_carry_the_track():
    rng = np.random.default_rng(1)
    cross, star = rng.normal(size=DIM), rng.normal(size=DIM)
    tracker = confirmed_tracker([(0, 4, 4, cross), (1, 30, 30, star)])
    ids = {t.detection.label: t.track_id for t in tracker.tracks}
    queries, _ = tracker.track_queries(DIM)
    assert queries.shape[1] == 2
    # the cross's query (prefix 0) now describes the star (label 1, star's place); the star's own
    # query faded; selection finds the cross again as a fresh row
    outputs = tracker.update([detection(1, 30, 30, star, prefix=0), detection(0, 5, 4, cross)])
    reported = {o.detection.label: o.track_id for o in outputs}
    assert reported == {0: ids[0], 1: ids[1]}  # no id switch: each object keeps its own id


def test_a_carried_query_that_jumps_away_from_its_mask_is_not_a_continuation():
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=DIM), rng.normal(size=DIM)
    tracker = confirmed_tracker([(0, 4, 4, first), (0, 34, 34, second)])
    ids = {(t.detection.mask.nonzero()[0][0]): t.track_id for t in tracker.tracks}
    tracker.track_queries(DIM)
    # same label, but prefix 0 (the object at y=4) now sits on the other object at y=34
    outputs = tracker.update([detection(0, 34, 34, second, prefix=0), detection(0, 4, 4, first)])
    reported = {int(o.detection.mask.nonzero()[0][0]): o.track_id for o in outputs}
    assert reported == {4: ids[4], 34: ids[34]}


def test_a_carried_query_may_switch_prompt_when_it_stays_on_its_object():
    rng = np.random.default_rng(4)
    embedding = rng.normal(size=DIM)
    tracker = confirmed_tracker([(0, 10, 10, embedding)])
    established = tracker.tracks[0].track_id
    tracker.track_queries(DIM)
    outputs = tracker.update([detection(1, 10, 10, embedding, prefix=0)])  # "red star" -> "orange star"
    assert [(o.track_id, o.detection.label) for o in outputs] == [(established, 1)]


def test_association_discounts_other_prompts_and_prefers_established_tracks():
    rng = np.random.default_rng(3)
    embedding = rng.normal(size=DIM)
    tracker = confirmed_tracker([(0, 10, 10, embedding)])
    established = tracker.tracks[0].track_id
    tracker.track_queries(DIM)
    # the object is missed by its carried query; a same-place detection of ANOTHER prompt with an
    # unrelated query appears: 0.5 x (0.5 x cos 0 + 0.5 x IoU 1) = 0.25 < match_threshold
    outputs = tracker.update([detection(1, 10, 10, -embedding)])
    assert [o.track_id for o in outputs] != [established]
    assert {t.track_id: t.state for t in tracker.tracks}[established] == "lost"
    # next frame: a duplicate tentative track exists; the real object must go back to its lost track
    tracker.track_queries(DIM)
    tracker.update([detection(0, 10, 11, embedding), detection(0, 11, 11, embedding, score=0.5)])
    states = {t.track_id: t.state for t in tracker.tracks}
    assert states[established] == "confirmed"
