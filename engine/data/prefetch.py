"""Runs an iterator in a background thread, a bounded number of items ahead of its consumer.

The producer is a daemon thread filling a ``queue.Queue(maxsize=depth)``; an exception raised
while producing is re-raised in the consumer at the position it happened; :meth:`close` stops
the thread, even when it is blocked on a full queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_ITEM, _END, _ERROR = 0, 1, 2


class Prefetcher(Generic[T]):
    """Iterates ``source`` (consumed in a daemon thread) up to ``depth`` items ahead."""

    def __init__(self, source: Iterator[T], depth: int, name: str = "crucible-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth is {depth}; give at least 1 (or do not prefetch)")
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put((_ERROR, e))

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the prefetch thread stopped without a result") from None
        if kind == _ITEM:
            return value
        self._done = True
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stops the producer thread and waits for it."""
        self._stop.set()
        self._done = True
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join()
        close = getattr(self._source, "close", None)
        if close is not None and not self._thread.is_alive():
            close()
