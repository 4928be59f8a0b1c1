"""A one-slot mailbox between the subscription callback and the inference worker.

The callback `put`s every incoming message and returns at once (it never blocks on inference); the
worker `take`s the newest one. A message that is replaced before the worker took it is dropped and
counted, so a slow model skips frames instead of queueing stale ones: latency stays one frame deep.
"""
from __future__ import annotations

import threading
import time
from typing import Any


class LatestFrameSlot:
    """Holds at most one item: (message, arrival time in seconds of time.monotonic())."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: tuple[Any, float] | None = None
        self._closed = False
        self.dropped = 0                  # items replaced before they were taken

    def put(self, message: Any) -> bool:
        """Stores `message` as the newest frame; True if it replaced one that was never taken."""
        with self._condition:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = (message, time.monotonic())
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None) -> tuple[Any, float] | None:
        """The newest (message, arrival time), waiting up to `timeout` s; None on timeout or close."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._item is not None or self._closed, timeout):
                return None
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def discard(self) -> bool:
        """Drops a waiting item (counted); True if there was one."""
        with self._condition:
            if self._item is None:
                return False
            self._item = None
            self.dropped += 1
            return True

    def close(self) -> None:
        """Wakes every waiting `take` (they return None); later puts are still stored."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reopen(self) -> None:
        with self._condition:
            self._closed = False
            self._item = None
