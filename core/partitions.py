"""Daily data partitions: which folder a run reads, and which day a scheduled run covers.

With ``data.partitioned: true`` the dataset folder holds one complete canonical
dataset per day, Hive style: ``<data.path>/date=YYYY-MM-DD/{interactions,items,users}.*``
(each a snapshot as of that day, so a run needs exactly one partition).

A run's partition comes from, in order: an explicit ``data_date`` pipeline input; else
the run's schedule time minus ``data.partition_lag_days`` (a run at 03:00 on the 22nd
with lag 1 covers the 21st, the last complete day). Unpartitioned datasets take no date.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Optional

from core import storage

PARTITION_KEY = "date"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class PartitionError(ValueError):
    """A data date that is malformed, missing where required, or given where not allowed."""


def parse_date(text: str, what: str = "data_date") -> _dt.date:
    """``YYYY-MM-DD`` -> date; PartitionError names ``what`` and the value otherwise."""
    if not isinstance(text, str) or not _DATE_RE.match(text):
        raise PartitionError(f"{what}: expected YYYY-MM-DD, got {text!r}")
    try:
        return _dt.date.fromisoformat(text)
    except ValueError as exc:
        raise PartitionError(f"{what}: {text!r} is not a calendar date ({exc})") from None


def parse_schedule_time(text: str) -> Optional[_dt.datetime]:
    """A schedule time as the orchestrator fills it in (RFC 3339, UTC), or None.

    None for an empty string and for an unresolved ``{{$...}}`` placeholder (a one-off run,
    or a runner that does not fill it in). Returned naive, in UTC.
    """
    text = (text or "").strip()
    if not text or text.startswith("{{"):
        return None
    try:
        moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PartitionError(f"schedule_time: expected an RFC 3339 time, got {text!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return moment


def date_for_fire_time(fire_time: _dt.datetime, lag_days: int) -> str:
    """The partition a run scheduled at ``fire_time`` covers: ``fire_time.date() - lag_days``."""
    return (fire_time.date() - _dt.timedelta(days=lag_days)).isoformat()


def resolve_data_date(partitioned: bool, data_date: str, schedule_time: str, lag_days: int) -> Optional[str]:
    """The run's partition date (``YYYY-MM-DD``), or None for an unpartitioned dataset.

    Raises:
        PartitionError: a partitioned dataset with neither a date nor a schedule time,
            an unpartitioned one given a date, or a malformed value.
    """
    if not partitioned:
        if data_date:
            raise PartitionError(f"data_date {data_date!r} given but data.partitioned is false; "
                                 "set data.partitioned=true to read <data.path>/date=YYYY-MM-DD/")
        return None
    if data_date:
        return parse_date(data_date).isoformat()
    fire_time = parse_schedule_time(schedule_time)
    if fire_time is None:
        raise PartitionError("data.partitioned is true but the run has no data_date and no schedule time: "
                             "pass --data-date YYYY-MM-DD")
    return date_for_fire_time(fire_time, lag_days)


def partition_path(data_path: str, data_date: Optional[str]) -> str:
    """The folder a run reads: ``data_path`` itself, or its ``date=YYYY-MM-DD`` child."""
    if data_date is None:
        return data_path
    return storage.join(data_path, f"{PARTITION_KEY}={parse_date(data_date).isoformat()}")
