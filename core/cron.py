"""Standard 5-field cron expressions (``minute hour day-of-month month day-of-week``).

One parser for every scheduler: the local scheduler computes fire times with it, and
the remote schedule commands validate with it before converting to what the service
wants (KFP recurring runs take a 6-field cron with seconds first; Vertex AI takes the
5-field form as is).

Semantics follow Vixie cron: ``*``, lists ``1,15``, ranges ``1-5``, steps ``*/15`` and
``10-50/20``, month and weekday names (``JAN``, ``MON``), Sunday as 0, and when
both day-of-month and day-of-week are restricted a day matches if either does.
Times are naive UTC ``datetime`` values at minute resolution.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
# Day-of-week 0-6 (0 = Sunday): KFP's cron library rejects 7, so the common subset is 0-6.
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_MONTHS = {name: i + 1 for i, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}
_WEEKDAYS = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
# A valid expression fires at least once in any 28 years (the Gregorian weekday/leap cycle);
# searching that far distinguishes "rare" (Feb 29 on a Monday) from "never" (Feb 30).
_SEARCH_DAYS = 366 * 28


class CronError(ValueError):
    """An invalid cron expression; the message names the field and the bad part."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_restricted: bool
    weekday_restricted: bool

    def matches_day(self, day: _dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return dom or dow
        return dom and dow

    def next_after(self, moment: _dt.datetime) -> _dt.datetime:
        """The first fire time strictly after ``moment`` (seconds are ignored).

        Raises:
            CronError: the expression never fires (e.g. ``0 0 30 2 *``).
        """
        start = moment.replace(second=0, microsecond=0, tzinfo=None)
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if self.matches_day(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        fire = _dt.datetime.combine(day, _dt.time(hour, minute))
                        if fire > start:
                            return fire
            day += _dt.timedelta(days=1)
        raise CronError(f"cron {self.expression!r} never fires")

    def fire_times(self, after: _dt.datetime, until: _dt.datetime) -> list[_dt.datetime]:
        """Every fire time ``t`` with ``after < t <= until``, oldest first."""
        times = []
        moment = after
        while True:
            moment = self.next_after(moment)
            if moment > until:
                return times
            times.append(moment)

    def to_kfp(self) -> str:
        """KFP recurring runs want 6 fields, seconds first."""
        return "0 " + self.expression


def parse_cron(expression: str) -> Cron:
    """Parse a 5-field cron expression.

    Raises:
        CronError: wrong number of fields, or a field with an unknown name, an out-of-range
            value, a reversed range or a zero step; the message names the field.
    """
    if not isinstance(expression, str):
        raise CronError(f"cron expression must be a string, got {type(expression).__name__}")
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(f"cron {expression!r}: expected 5 fields ({' '.join(FIELD_NAMES)}), got {len(parts)}"
                        + (" (no seconds field: KFP's seconds are added for you)" if len(parts) == 6 else ""))
    names = (None, None, None, _MONTHS, _WEEKDAYS)
    values = [_parse_field(expression, i, part, names[i]) for i, part in enumerate(parts)]
    weekdays = frozenset(values[4])
    cron = Cron(" ".join(parts), frozenset(values[0]), frozenset(values[1]), frozenset(values[2]),
                frozenset(values[3]), weekdays,
                # Vixie cron: a field starting with "*" (also "*/2") counts as unrestricted.
                not parts[2].startswith("*"), not parts[4].startswith("*"))
    cron.next_after(_dt.datetime(2000, 1, 1))  # fail now, not at 3 a.m., if it never fires
    return cron


def _parse_field(expression: str, index: int, text: str, names) -> set[int]:
    low, high = _BOUNDS[index]

    def bad(why: str) -> CronError:
        return CronError(f"cron {expression!r}: field {index + 1} ({FIELD_NAMES[index]}) {text!r}: {why}")

    def number(token: str) -> int:
        if names and token.upper() in names:
            return names[token.upper()]
        if not token.isdigit():
            raise bad(f"{token!r} is not a number" + (" or a name" if names else ""))
        value = int(token)
        if not low <= value <= high:
            raise bad(f"value {value} out of range {low}-{high}")
        return value

    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise bad("empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise bad(f"step {step_text!r} must be a whole number >= 1")
            if base != "*" and "-" not in base:
                # 'N/S' is an extension some crons lack; '*/S' and 'A-B/S' mean the same everywhere.
                raise bad(f"a step needs '*' or a range before it, e.g. '*/{step_text}' or '{low}-{high}/{step_text}'")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise bad(f"range {base!r} runs backwards")
        else:
            first = last = number(base)
        out.update(range(first, last + 1, step))
    return out
