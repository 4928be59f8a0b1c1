"""Tracking by query propagation (MobileInst Sec. 3.2-3.4) with a track life cycle.

Queries are good trackers: the refined query (query_embed) and box of every confirmed track that was
seen at frame t are fed to the decoder at frame t+1 as extra queries (`track_queries` /
`track_boxes`), before the language-selected ones. Output row i that came from carried query j
(kept_indices[i] == j < num_prefix) continues that track when its score stays >= keep_score.

A carried row that drifted to a neighbour (its mask left the track's last mask, or it changed prompt
without staying in place) is not a continuation.
Everything else is associated by the Hungarian algorithm (scipy), first to the established tracks
not continued this way (lost, or confirmed ones whose carried query faded), then to tentative ones,
on a similarity that mixes the cosine similarity of query embeddings and mask IoU (discounted
across labels). Leftover detections start tentative tracks.

Defaults: keep_score, embedding_weight and match_threshold were chosen on a val video split of the
procedural benchmark (48 clips, `mobius data synth --split val --videos 48 --seed 6`) by HOTA over a
grid (keep_score 0.2-0.6, match_threshold 0.15-0.5, embedding_weight 0.5/0.7, confirm_hits 1/2); of
two tied at HOTA 54.8, the stricter match_threshold 0.35 (0.25 let two objects with no mask overlap
match on query cosines near 0.35). Test numbers: docs/MODEL_CARD.md. On your own clips,
`mobius eval-video --data VAL.json --tracker keep_score=0.4 ...` scores other settings.
A carried query is held to a higher score than a fresh detection (keep_score 0.5 against the node's
score_threshold 0.4): below it, a carried query had more often drifted off its object, and letting it
count as a fresh detection instead lost 3.5 points of MOTA there.

Life cycle:  tentative --(confirm_hits matches in a row)--> confirmed --(missed)--> lost
             lost --(matched again within max_age frames)--> confirmed;  lost > max_age -> removed
             tentative --(missed once)--> removed
Track ids start at 1, increase, and are never reused (not even after reset()).

The tracker works on `Detection`s (numpy only), so it can be driven by synthetic detections.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

TENTATIVE, CONFIRMED, LOST = "tentative", "confirmed", "lost"


@dataclass(frozen=True)
class TrackerConfig:
    keep_score: float = 0.5            # a carried query continues its track while its score >= this,
    continue_iou: float = 0.1          # and its mask overlaps the track's last mask at least this much,
    relabel_iou: float = 0.5           # or this much when its prompt changed (else it drifted to a neighbour)
    confirm_hits: int = 2              # matches in a row that confirm a tentative track
    max_age: int = 30                  # frames a lost track waits for re-identification before removal
    embedding_weight: float = 0.7      # similarity = w * cosine(query embeddings) + (1 - w) * mask IoU
    match_threshold: float = 0.35      # lowest similarity the Hungarian association accepts
    label_mismatch: float = 0.5        # similarity factor when a detection's prompt differs from the track's
    duplicate_iou: float = 0.7         # a new detection overlapping an accepted one this much is dropped
    max_track_queries: int = 100       # at most this many tracks are carried into the next frame

    def __post_init__(self) -> None:
        for name in ("keep_score", "continue_iou", "relabel_iou", "embedding_weight", "match_threshold", "label_mismatch",
                     "duplicate_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TrackerConfig.{name}={value} must be in [0, 1]")
        for name in ("confirm_hits", "max_age", "max_track_queries"):
            if getattr(self, name) < (1 if name == "confirm_hits" else 0):
                raise ValueError(f"TrackerConfig.{name}={getattr(self, name)} is out of range")


@dataclass
class Detection:
    """One instance proposed for a frame.

    score: confidence in [0, 1]; label: prompt index; mask: (h, w) bool at any resolution that is the
    same for every frame (used for IoU); embedding: (C,) refined query; query_box: (4,) cxcywh in
    [0, 1] of the network input (fed back with the query); prefix: index into the track queries that
    were fed this frame if the row came from one, else None; payload: anything the caller needs back.
    """
    score: float
    label: int
    mask: np.ndarray
    embedding: np.ndarray
    query_box: np.ndarray
    prefix: int | None = None
    payload: Any = None


@dataclass
class Track:
    track_id: int
    state: str
    first_frame: int
    last_frame: int
    hits: int
    detection: Detection

    @property
    def embedding(self) -> np.ndarray:
        return self.detection.embedding


@dataclass
class TrackOutput:
    """A track reported for the current frame with the detection that updated it."""
    track_id: int
    detection: Detection
    age: int                            # frames since the track was created


@dataclass
class Tracker:
    config: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        self._next_id = 1
        self.tracks: list[Track] = []
        self._fed: list[int] = []       # track ids of the queries handed out by track_queries()
        self._updates = 0               # update() calls since the start or reset()
        self._frame = -1                # frame index of the last update()

    def reset(self) -> None:
        """Forget every track (a new video); ids keep increasing."""
        self.tracks, self._fed, self._updates, self._frame = [], [], 0, -1

    def track_queries(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Queries to feed with the next frame: (1, Nt, C) embeddings and (1, Nt, 4) boxes of the
        confirmed tracks seen in the last update (most recently created last). Remembers the order."""
        carried = [t for t in self.tracks if t.state == CONFIRMED and t.last_frame == self._frame]
        carried = carried[-self.config.max_track_queries:] if self.config.max_track_queries else []
        self._fed = [t.track_id for t in carried]
        if not carried:
            return np.zeros((1, 0, dim), np.float32), np.zeros((1, 0, 4), np.float32)
        queries = np.stack([t.embedding for t in carried]).astype(np.float32)[None]
        boxes = np.stack([t.detection.query_box for t in carried]).astype(np.float32)[None]
        return queries, boxes

    def update(self, detections: Sequence[Detection], frame: int | None = None) -> list[TrackOutput]:
        """Associates one frame's detections; returns the tracks to report, best score first.

        frame: the frame index (increasing; gaps allowed, e.g. keyframes only); default previous + 1.
        """
        frame = self._frame + 1 if frame is None else int(frame)
        if frame <= self._frame:
            raise ValueError(f"frame index {frame} must increase (last was {self._frame}); call reset() "
                             f"before a new video")
        self._updates, self._frame = self._updates + 1, frame
        by_id = {t.track_id: t for t in self.tracks}
        matched: dict[int, Detection] = {}
        continued = self._continued(detections, by_id)
        self._fed = []                  # the carried queries are used up; track_queries() hands out new ones
        matched.update(continued)
        fresh = self._deduplicate([d for d in detections if d.prefix is None], list(continued.values()))
        # established tracks first, tentative ones get the leftovers (a duplicate that started a
        # tentative track a frame ago must not steal the object from its real track)
        established = [t for t in self.tracks if t.track_id not in matched and t.state != TENTATIVE]
        pairs, unmatched = self._associate(fresh, established)
        matched.update(pairs)
        tentative = [t for t in self.tracks if t.track_id not in matched and t.state == TENTATIVE]
        pairs, unmatched = self._associate(unmatched, tentative)
        matched.update(pairs)
        for detection in unmatched:
            track = Track(self._next_id, TENTATIVE, frame, frame, 0, detection)
            self._next_id += 1
            self.tracks.append(track)
            matched[track.track_id] = detection
        self._advance(matched, frame)
        return self._report(matched, frame)

    # ------------------------------------------------------------------ steps of update()

    def _continued(self, detections: Sequence[Detection], by_id: dict[int, Track]) -> dict[int, Detection]:
        """Rows that came from carried queries and still describe their object: {track id: detection}.

        A carried query can drift to a neighbour (occlusion, touching objects); its mask then leaves
        the track's last mask or switches to the neighbour's prompt. Such rows do not continue the
        track: they join the fresh detections, where association decides. A prompt change is accepted
        when the mask stays in place (similar prompts such as "red star" and "orange star" can swap
        on one object from frame to frame)."""
        continued: dict[int, Detection] = {}
        for detection in sorted((d for d in detections if d.prefix is not None), key=lambda d: -d.score):
            if not 0 <= detection.prefix < len(self._fed) or detection.score < self.config.keep_score:
                continue
            track = by_id.get(self._fed[detection.prefix])
            if track is None or track.track_id in continued:
                detection.prefix = None
                continue
            overlap = mask_iou_matrix([detection.mask], [track.detection.mask])[0, 0]
            needed = self.config.continue_iou if detection.label == track.detection.label else self.config.relabel_iou
            accepted = [d.mask for d in continued.values()]
            if overlap < needed or (accepted and mask_iou_matrix([detection.mask], accepted).max() > self.config.duplicate_iou):
                detection.prefix = None     # drifted away, or collapsed onto another track's object
                continue
            continued[track.track_id] = detection
        return continued

    def _deduplicate(self, fresh: list[Detection], accepted: list[Detection]) -> list[Detection]:
        """Drops new detections that mostly cover an already accepted one (best score wins)."""
        fresh = sorted(fresh, key=lambda d: -d.score)
        if not fresh:
            return []
        # (F, A + F) IoU with the accepted detections, then with the fresh ones, computed once
        iou = mask_iou_matrix([d.mask for d in fresh], [d.mask for d in accepted + fresh])
        blockers = list(range(len(accepted)))
        for index in range(len(fresh)):
            if not blockers or iou[index, blockers].max() <= self.config.duplicate_iou:
                blockers.append(len(accepted) + index)
        return [fresh[i - len(accepted)] for i in blockers[len(accepted):]]

    def _associate(self, fresh: list[Detection],
                   candidates: list[Track]) -> tuple[dict[int, Detection], list[Detection]]:
        """Hungarian assignment on 1 - similarity; pairs below match_threshold are rejected."""
        if not fresh or not candidates:
            return {}, fresh
        from scipy.optimize import linear_sum_assignment

        similarity = self.similarity(fresh, [t.detection for t in candidates])
        rows, cols = linear_sum_assignment(1.0 - similarity)
        pairs, used = {}, set()
        for row, col in zip(rows, cols):
            if similarity[row, col] >= self.config.match_threshold:
                pairs[candidates[col].track_id] = fresh[row]
                used.add(row)
        return pairs, [d for i, d in enumerate(fresh) if i not in used]

    def similarity(self, detections: list[Detection], previous: list[Detection]) -> np.ndarray:
        """(D, T): w * cosine(embeddings) + (1 - w) * mask IoU, cosine clipped to [0, 1]; times
        label_mismatch where the labels (prompts) differ."""
        a = np.stack([d.embedding for d in detections]).astype(np.float64)
        b = np.stack([d.embedding for d in previous]).astype(np.float64)
        a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
        b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
        cosine = np.clip(a @ b.T, 0.0, 1.0)
        iou = mask_iou_matrix([d.mask for d in detections], [d.mask for d in previous])
        weight = self.config.embedding_weight
        same_label = np.equal.outer([d.label for d in detections], [d.label for d in previous])
        return np.where(same_label, 1.0, self.config.label_mismatch) * (weight * cosine + (1.0 - weight) * iou)

    def _advance(self, matched: dict[int, Detection], frame: int) -> None:
        """Life-cycle transitions for every track after association."""
        survivors = []
        for track in self.tracks:
            detection = matched.get(track.track_id)
            if detection is not None:
                track.hits += 1                             # tentative tracks are never missed
                track.detection, track.last_frame = detection, frame
                if track.state == LOST or (track.state == TENTATIVE and track.hits >= self.config.confirm_hits):
                    track.state = CONFIRMED
            elif track.state == TENTATIVE:
                continue                                    # a missed tentative track is dropped
            else:
                track.state = LOST
                if frame - track.last_frame > self.config.max_age:
                    continue                                # lost for too long: removed
            survivors.append(track)
        self.tracks = survivors

    def _report(self, matched: dict[int, Detection], frame: int) -> list[TrackOutput]:
        """Confirmed tracks seen now; tentative ones too during the first confirm_hits updates of a
        video (so objects of the first frame are reported at once)."""
        start = self._updates <= self.config.confirm_hits
        out = [TrackOutput(t.track_id, t.detection, frame - t.first_frame) for t in self.tracks
               if t.track_id in matched and (t.state == CONFIRMED or start)]
        return sorted(out, key=lambda o: -o.detection.score)

    def update_query_box(self, track_id: int, query_box: np.ndarray) -> None:
        """Moves the box carried with a track's query (kernel reuse: boxes from the reused masks)."""
        for track in self.tracks:
            if track.track_id == track_id:
                track.detection.query_box = np.asarray(query_box, dtype=np.float32)


def mask_iou_matrix(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) IoU of bool masks of one shape, as a matmul of flattened masks."""
    if not a or not b or any(m.shape != a[0].shape for m in a + b):
        return np.zeros((len(a), len(b)))           # masks of another frame size: no overlap
    fa = np.stack([m.reshape(-1) for m in a]).astype(np.float32)
    fb = np.stack([m.reshape(-1) for m in b]).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)
