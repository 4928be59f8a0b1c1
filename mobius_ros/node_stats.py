"""Running statistics of the segmentation node, as shown on /diagnostics.

Thread-safe: the worker records frames, the subscription callback counts arrivals, the executor
thread reads snapshots. Latency is arrival of the input message -> outputs published.

Dropped frames are counted in two places: frames the node received but replaced by a newer one
before the worker took them (LatestFrameSlot.dropped), and frames that never reached the node
because the keep-last-1 reader queue overwrote them or the network lost them: gaps in the
publishers' sequence numbers (where the RMW reports them, e.g. Fast DDS and Cyclone DDS).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StatsSnapshot:
    received: int                     # input messages since activation
    processed: int                    # frames that produced outputs
    dropped: int                      # frames_dropped_by_node + frames_dropped_before_node
    dropped_by_node: int              # received, then replaced by a newer one before processing
    dropped_before_node: int          # gaps in publisher sequence numbers (queue overwrite, loss)
    bad_frames: int                   # messages that could not be decoded (skipped)
    failed_frames: int                # frames the model raised on (skipped)
    rate_hz: float                    # processed frames per second over the window
    latency_ms: dict[str, float]      # "p50", "p90", "p99", "max" over the window ({} before any frame)
    kept_per_layer: list[int]         # decoder queries kept after each layer, last full-decode frame
    decoder_gflops: float | None      # mean over the window (None if unknown)
    instances: float                  # mean instances per frame over the window
    last_error: str                   # the latest decode or processing error ("" if none)


class NodeStats:
    """Counters plus a sliding window of the last `window` processed frames."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._done: deque[tuple[float, float, int, float | None]] = deque(maxlen=window)
        self.received = self.processed = self.bad_frames = self.failed_frames = 0
        self._kept: list[int] = []
        self._last_error = ""
        self._last_sequence: dict[bytes, int] = {}
        self.gaps = 0

    def record_received(self, publisher: bytes | None = None, sequence: int | None = None) -> None:
        """One input message; `publisher` (gid bytes) and its `sequence` number when the RMW has them."""
        with self._lock:
            self.received += 1
            if publisher is None or not sequence or sequence >= 2 ** 63:  # unsupported: 0 or UINT64_MAX
                return
            last = self._last_sequence.get(publisher)
            if last is not None and sequence > last + 1:
                self.gaps += sequence - last - 1
            self._last_sequence[publisher] = max(sequence, last or 0)

    def record_bad(self, reason: str) -> None:
        with self._lock:
            self.bad_frames += 1
            self._last_error = reason

    def record_failed(self, reason: str) -> None:
        with self._lock:
            self.failed_frames += 1
            self._last_error = reason

    def record_frame(self, latency_ms: float, instances: int, kept_per_layer: list[int],
                     decoder_gflops: float | None) -> None:
        with self._lock:
            self.processed += 1
            self._done.append((time.monotonic(), latency_ms, instances, decoder_gflops))
            if kept_per_layer:  # kernel-reuse frames run no decoder
                self._kept = list(kept_per_layer)

    def snapshot(self, dropped_by_node: int) -> StatsSnapshot:
        with self._lock:
            done = list(self._done)
            counts = (self.received, self.processed, self.bad_frames, self.failed_frames, self.gaps)
            kept, error = list(self._kept), self._last_error
        latencies = np.array([d[1] for d in done]) if done else np.zeros(0)
        latency = {} if not done else {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)}
        if done:
            latency["max"] = float(latencies.max())
        span = done[-1][0] - done[0][0] if len(done) > 1 else 0.0
        gflops = [d[3] for d in done if d[3] is not None]
        return StatsSnapshot(
            received=counts[0], processed=counts[1], dropped=dropped_by_node + counts[4],
            dropped_by_node=dropped_by_node, dropped_before_node=counts[4], bad_frames=counts[2],
            failed_frames=counts[3], rate_hz=(len(done) - 1) / span if span > 0 else 0.0,
            latency_ms=latency, kept_per_layer=kept,
            decoder_gflops=float(np.mean(gflops)) if gflops else None,
            instances=float(np.mean([d[2] for d in done])) if done else 0.0, last_error=error)
