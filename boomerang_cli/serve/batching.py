"""Dynamic batching, one worker per member: requests for one size decode together, sizes run side by side.

A member's worker thread takes the first waiting request, gathers what else
arrives for that member within ``wait_s`` (up to ``max_batch``), and decodes
them as one batch (:func:`generate.run_batch`). Workers of different members
run at the same time (torch releases the GIL inside its kernels); nothing is
serialised behind one global lock. Stopping drains: every request accepted
is finished before a worker exits.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .generate import OnToken, Row, Sampling, run_batch


@dataclass
class Job:
    """One request handed to a member's worker; ``on_done(finish_reason, error)`` ends it."""

    ids: Sequence[int]
    sampling: Sampling
    on_token: OnToken
    on_done: Callable[[str | None, BaseException | None], None]


@dataclass
class BatchStats:
    """What a worker has done (``GET /v1/stats``): batches run and their sizes."""

    batches: int = 0
    requests: int = 0
    largest: int = 0
    busy_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "largest_batch": self.largest,
            "busy_seconds": round(self.busy_s, 3),
        }


@dataclass
class MemberWorker:
    """The batching worker of one member."""

    name: str
    model: Any
    pad_id: int
    eos: set[int]
    max_batch: int = 16
    wait_s: float = 0.005
    stats: BatchStats = field(default_factory=BatchStats)
    _queue: "queue.Queue[Job | None]" = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"serve-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def stop(self, timeout: float | None = None) -> None:
        """Finish every request already submitted, then end the thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` and whatever else arrives within ``wait_s``; True when a stop was seen."""
        jobs = [first]
        deadline = time.monotonic() + self.wait_s
        while len(jobs) < self.max_batch:
            try:
                left = deadline - time.monotonic()
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs, stopping = self._gather(first)
            self._run(jobs)
        while True:  # drain anything submitted before the stop
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._run([job])

    def _run(self, jobs: list[Job]) -> None:
        rows = [Row(j.ids, j.sampling, j.on_token) for j in jobs]
        started = time.monotonic()
        try:
            run_batch(self.model, rows, self.pad_id, self.eos)
        except Exception as exc:  # a failed batch fails its requests, never the worker
            for j in jobs:
                j.on_done(None, exc)
            return
        finally:
            self.stats.batches += 1
            self.stats.requests += len(jobs)
            self.stats.largest = max(self.stats.largest, len(jobs))
            self.stats.busy_s += time.monotonic() - started
        for j, r in zip(jobs, rows):
            j.on_done(r.finish_reason, None)
