"""Seeded samples of query keys: one definition for evaluation, validation and index tuning.

A key's place in a sample depends only on (seed, key), through a keyed hash that is the same
on every machine and Python process (unlike ``hash()``, which is salted per process).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np


def key_rank(seed: int, key: str) -> int:
    """A stable 64-bit pseudo-random number for (seed, key): keyed BLAKE2b, the same on every
    machine and Python process (unlike ``hash()``, which is salted per process)."""
    digest = hashlib.blake2b(str(key).encode("utf-8"), digest_size=8, key=str(int(seed)).encode("ascii"))
    return int.from_bytes(digest.digest(), "big")


def sample_keys(keys: Sequence[str], max_queries: Optional[int], seed: int) -> list[str]:
    """A seeded uniform sample of at most ``max_queries`` of ``keys``, in their given order.

    The keys kept are the ``max_queries`` with the smallest :func:`key_rank` (seed, key).
    So the sample depends only on the set of keys and the seed, not on their order, the
    process or the run: the candidate, the popularity baseline, the live version and the
    next run all score the same keys of the same split; a larger ``max_queries`` keeps a
    superset; and, the hash behaving as a random function of (seed, key), every subset of
    that size is equally likely (a uniform draw without replacement). Cost: one hash per key
    (about 1 s per million keys).

    Args:
        keys: distinct keys.
        max_queries: the most to keep; None or 0 = all.
    Returns:
        The kept keys (all of them when there are at most ``max_queries``).
    """
    keys = list(keys)
    if not max_queries or len(keys) <= max_queries:
        return keys
    # Two keys sharing a 64-bit rank (p ~ n^2 / 2^65) would be ordered by position.
    chosen = np.sort(ranked_order(keys, seed)[:max_queries])
    return [keys[i] for i in chosen]


def ranked_order(keys: Sequence[str], seed: int) -> np.ndarray:
    """Positions of ``keys`` by ascending :func:`key_rank` (seed, key): int64 [len(keys)].

    Its first m positions are :func:`sample_keys`'s sample of m; the next ones extend it.
    """
    ranks = np.fromiter((key_rank(seed, k) for k in keys), dtype=np.uint64, count=len(keys))
    return np.argsort(ranks, kind="stable")

