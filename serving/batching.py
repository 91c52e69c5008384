"""Coalescing concurrent retrievals into one query-tower call and one batched search.

The query service answers each HTTP request on its own thread. Alone, every request pays a
whole TensorFlow call and a ScaNN search, and on a 2-core machine 8 clients queue up behind
one another for them. :class:`Coalescer` combines them instead (flat combining, no threads of
its own). A request thread puts its resolved request (already validated on its own thread)
on a queue and tries to become the combiner. The combiner takes everything waiting, up to
``max_batch``, and answers it with one :meth:`serving.retriever.Retriever.answer_resolved`
call: one tower call and one search. It repeats until the queue is empty. A thread that
finds a combiner at work waits for its answer.

Nothing waits to fill a batch. A lone request finds no combiner and answers itself on its
own thread, with no hand-off. Under load, a batch is whatever queued up during the previous
call. Each request keeps its own k, exclude_seen and Retriever, so a batch never mixes
versions: requests that took different versions are answered in separate calls.

Why no request is left behind: a thread always tries to become the combiner after putting
its job. If it fails, a combiner holds the lock, and that combiner looks at the queue again
after releasing it.
"""

from __future__ import annotations

import queue
import threading
from typing import Optional


class _Job:
    __slots__ = ("retriever", "resolved", "k", "exclude_seen", "done", "result", "error")

    def __init__(self, retriever, resolved, k: int, exclude_seen: bool):
        self.retriever = retriever
        self.resolved = resolved
        self.k = k
        self.exclude_seen = exclude_seen
        self.done = threading.Event()
        self.result = None
        self.error: Optional[BaseException] = None


class Coalescer:
    """``submit(retriever, resolved, k, exclude_seen)`` -> that request's answer (or RequestError).

    Args:
        max_batch: most requests answered by one tower call (>= 1).
    """

    def __init__(self, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._combiner = threading.Lock()
        self.calls = 0  # tower calls made, and requests they answered (tests and benches read these)
        self.requests = 0

    def submit(self, retriever, resolved, k: int, exclude_seen: bool):
        """Answer one request, alone or with whatever else is waiting.

        Re-raises an exception that made its whole call fail.
        """
        job = _Job(retriever, resolved, k, exclude_seen)
        self._queue.put(job)
        while not job.done.is_set():
            if self._combiner.acquire(blocking=False):
                try:
                    self._drain()
                finally:
                    self._combiner.release()
                if self._queue.empty():
                    break
                # A job arrived after the last drain and before the release; its thread may
                # already have failed to become the combiner: take another turn.
            else:
                job.done.wait()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _drain(self) -> None:
        """Answer batches until the queue is empty (called holding the combiner lock)."""
        while True:
            batch = []
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            for group in _by_retriever(batch):
                self._answer(group)

    def _answer(self, jobs: list[_Job]) -> None:
        retriever = jobs[0].retriever
        try:
            answers = retriever.answer_resolved([j.resolved for j in jobs], [j.k for j in jobs],
                                                [j.exclude_seen for j in jobs])
        except BaseException as exc:  # a bug or a broken version: every request of the call gets it
            for job in jobs:
                job.error = exc
        else:
            for job, answer in zip(jobs, answers):
                job.result = answer
        self.calls += 1  # only the combiner (one thread at a time) counts
        self.requests += len(jobs)
        for job in jobs:
            job.done.set()


def _by_retriever(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs grouped by the Retriever (version) they took, in arrival order."""
    groups: dict[int, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(id(job.retriever), []).append(job)
    return list(groups.values())
