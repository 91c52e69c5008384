"""Interaction histories: one definition for the transform (training examples, the query table)
and for serving (request-time clicks).

A history is a list of item ids, oldest first, at most ``max_length`` long (the most recent
kept). Events are ordered by (timestamp, item_id): equal timestamps order by the item id's
string, so a history never depends on input order. The history of an interaction at time t
holds only events strictly before t, so never the interaction's own item or anything later.

On the wire (TFRecords, the query tower's input) a history is one string, the ids joined by
:data:`SEPARATOR` (the ASCII unit separator, which ingest refuses inside an item id), so every
feature stays one scalar per example (core/records.py). The query table and requests carry
it as a JSON list.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Sequence

#: Joins a history's item ids in one string (U+001F, "unit separator": never in a clean id).
SEPARATOR = "\x1f"


class Timeline:
    """One key's events, ordered by (timestamp, item_id).

    Args:
        events: (timestamp, item_id) pairs in any order; timestamps are ints (unix seconds).
    """

    def __init__(self, events: Iterable[tuple[int, str]]):
        ordered = sorted((int(ts), str(item)) for ts, item in events)
        self._timestamps = [ts for ts, _ in ordered]
        self._items = [item for _, item in ordered]

    def __len__(self) -> int:
        return len(self._items)

    def before(self, timestamp: int, max_length: int) -> list[str]:
        """The last ``max_length`` items strictly before ``timestamp``, oldest first."""
        end = bisect.bisect_left(self._timestamps, int(timestamp))
        return self._items[max(0, end - max_length):end]

    def latest(self, max_length: int) -> list[str]:
        """The last ``max_length`` items of the whole timeline (the query table's history)."""
        return self._items[max(0, len(self._items) - max_length):]


def extend(history: Sequence[str], clicks: Sequence[str], max_length: int) -> list[str]:
    """``history`` followed by newer ``clicks``, cut to the most recent ``max_length``."""
    joined = [*history, *clicks]
    return joined[max(0, len(joined) - max_length):]


def join(items: Sequence[str]) -> str:
    """A history as the query tower's one-string input.

    Raises:
        ValueError: an item id contains :data:`SEPARATOR` (it would split into two ids).
    """
    bad = [item for item in items if SEPARATOR in item]
    if bad:
        raise ValueError(f"item id {bad[0]!r} contains the history separator U+001F")
    return SEPARATOR.join(items)


def split(value: str) -> list[str]:
    """Inverse of :func:`join` ("" -> [])."""
    return value.split(SEPARATOR) if value else []
