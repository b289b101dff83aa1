"""Build batches ahead of the training step in a background thread (`data.prefetch`, off by default).

A thread overlaps building the next batch with the step only where building waits outside the
interpreter lock (reading files, decoding images in C). The built-in data is built in Python, and
the training loop of a small model is Python too (kernel launches), so the two take turns: measured
on the main job, a thread made the step slower on the 2-core CPU (0.31 against 0.25 s) and on an
H200 (63 against 43 ms; a forked process was slower still, 81 ms; docs/benchmarks.md, session 12).
The batches are the stream's own, in the same order (every document's random
choices are seeded by its position, not by timing), and `state_dict` describes the batches
consumed, not the ones built ahead, so a resumed run continues exactly where the trainer was.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from ..layout import Batch
from .pipeline import BatchStream


class Prefetcher:
    """A `BatchStream` with up to `depth` batches built ahead by a daemon thread.

    Exposes the stream's interface as the trainer uses it: `next()`, `batches` (consumed),
    `state_dict()` / `load_state_dict()`, `skipped()`. An error raised while building a batch (a bad
    record under the `error` policy) is raised by the `next()` call that would have returned it.
    """

    def __init__(self, stream: BatchStream, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.stream, self.depth = stream, depth
        self._consumed = self._snapshot()
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _snapshot(self) -> dict[str, Any]:
        s = self.stream
        return {"batches": s.batches, "state": s.state_dict(), "skipped": s.skipped()}

    def _work(self, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = (next(self.stream), self._snapshot())
            except BaseException as e:  # handed to the consumer, which raises it
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def _start(self) -> None:
        self._queue, self._stop = queue.Queue(self.depth), threading.Event()
        self._thread = threading.Thread(target=self._work, args=(self._queue, self._stop), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and drop the batches built ahead: the stream goes back to the batches
        consumed, so iterating again continues with the next one."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.load_state_dict(self._consumed["state"])

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread.join()
            self._thread = None
            self.stream.load_state_dict(self._consumed["state"])  # the failed batch is built again if asked
            raise item
        batch, self._consumed = item
        return batch

    @property
    def batches(self) -> int:
        """Batches handed out so far (skipped bad records included in their batch's count)."""
        return self._consumed["batches"]

    def state_dict(self) -> dict[str, Any]:
        return self._consumed["state"]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.stream.load_state_dict(state)
        self._consumed = self._snapshot()

    def skipped(self) -> dict[str, Any]:
        return self._consumed["skipped"]
