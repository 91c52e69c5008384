"""Coalescing concurrent retrievals into one query-tower call and one batched search.

The query service answers each HTTP request on its own thread. Alone, every request pays a
whole TensorFlow call and a ScaNN search, and on a 2-core machine 8 clients queue up behind
one another for them. :class:`Coalescer` combines them instead (flat combining, no threads of
its own). A request thread appends its resolved request (already validated on its own
thread) to a queue and tries to become the combiner. The combiner answers the queue from its
head in batches of up to ``max_batch``, one
:meth:`serving.retriever.Retriever.answer_resolved` call (one tower call, one search) each,
until its own request is answered. It then hands the role to the thread at the head of what
is left. A thread that finds a combiner at work sleeps until it is answered or handed the role.

Nothing waits to fill a batch. A lone request finds no combiner and answers itself on its
own thread, with no hand-off. Under load, a batch is whatever queued up during the previous
call. No combiner serves others for long: it stops once its own request is answered, so one
client's latency is bounded by the batches ahead of it. Each request keeps its own k,
exclude_seen and Retriever, so a batch never mixes versions: requests that took different
versions are answered in separate calls.

Why no request is left behind: every release of the combiner role wakes the head of a
non-empty queue. A thread that appends after that check then finds the role free itself,
because it always tries to take the role after appending.
"""

from __future__ import annotations

import collections
import threading
from typing import Optional


class _Job:
    __slots__ = ("retriever", "resolved", "k", "exclude_seen", "done", "wake", "result", "error")

    def __init__(self, retriever, resolved, k: int, exclude_seen: bool):
        self.retriever = retriever
        self.resolved = resolved
        self.k = k
        self.exclude_seen = exclude_seen
        self.done = False
        self.wake = threading.Event()  # set when answered, or when handed the combiner role
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
        self._queue: collections.deque = collections.deque()
        self._queue_lock = threading.Lock()
        self._combiner = threading.Lock()
        self.calls = 0  # tower calls made, and requests they answered (tests and benches read these)
        self.requests = 0

    def submit(self, retriever, resolved, k: int, exclude_seen: bool):
        """Answer one request, alone or with whatever else is waiting.

        Re-raises an exception that made its whole call fail.
        """
        job = _Job(retriever, resolved, k, exclude_seen)
        with self._queue_lock:
            self._queue.append(job)
        while not job.done:
            if self._combiner.acquire(blocking=False):
                try:
                    while not job.done:
                        self._answer_next_batch()
                finally:
                    self._combiner.release()
                self._wake_head()
            else:
                job.wake.wait()
                job.wake.clear()
        if job.error is not None:
            raise job.error
        return job.result

    def _wake_head(self) -> None:
        """Hand the combiner role to the thread at the head of the queue, if any."""
        with self._queue_lock:
            head = self._queue[0] if self._queue else None
        if head is not None:
            head.wake.set()

    def _answer_next_batch(self) -> None:
        """Answer up to ``max_batch`` jobs from the head (called holding the combiner role)."""
        with self._queue_lock:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
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
            job.done = True
            job.wake.set()


def _by_retriever(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs grouped by the Retriever (version) they took, in arrival order."""
    groups: dict[int, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(id(job.retriever), []).append(job)
    return list(groups.values())
