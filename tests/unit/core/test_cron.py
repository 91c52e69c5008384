"""5-field cron: fire times worked out by hand, Vixie day-matching, and errors that name the field."""

import datetime as dt
import re

import pytest

from core.cron import CronError, parse_cron


def t(text):
    return dt.datetime.fromisoformat(text)


def test_daily_at_three():
    cron = parse_cron("0 3 * * *")
    assert cron.next_after(t("2026-11-21T02:59")) == t("2026-11-21T03:00")
    assert cron.next_after(t("2026-11-21T03:00")) == t("2026-11-22T03:00")  # strictly after
    assert cron.fire_times(t("2026-11-20T04:00"), t("2026-11-23T03:00")) == [
        t("2026-11-21T03:00"), t("2026-11-22T03:00"), t("2026-11-23T03:00")]


def test_steps_ranges_lists_and_names():
    cron = parse_cron("*/20 9-10 * JAN,feb MON-FRI")
    assert sorted(cron.minutes) == [0, 20, 40]
    assert sorted(cron.hours) == [9, 10]
    assert sorted(cron.months) == [1, 2]
    assert sorted(cron.weekdays) == [1, 2, 3, 4, 5]
    # 2026-01-03 is a Saturday: the next fire is Monday the 5th at 09:00.
    assert cron.next_after(t("2026-01-03T12:00")) == t("2026-01-05T09:00")


def test_sunday_is_0_or_its_name():
    assert parse_cron("0 0 * * SUN").weekdays == parse_cron("0 0 * * 0").weekdays == frozenset({0})


def test_day_of_month_or_day_of_week_when_both_restricted():
    cron = parse_cron("0 0 13 * 5")  # the 13th OR any Friday (Vixie cron)
    # 2026-11-13 is a Friday; 2026-11-06 is a Friday (not the 13th): both fire.
    fires = cron.fire_times(t("2026-11-01T00:00"), t("2026-11-30T00:00"))
    assert t("2026-11-06T00:00") in fires and t("2026-11-13T00:00") in fires and t("2026-11-20T00:00") in fires
    assert len(fires) == 4  # Fridays 6, 13, 20, 27


def test_kfp_form_has_seconds_first():
    assert parse_cron("0 3 * * *").to_kfp() == "0 0 3 * * *"


@pytest.mark.parametrize("expr, needle", [
    ("0 3 * *", "expected 5 fields"),
    ("0 0 3 * * *", "no seconds field"),
    ("60 3 * * *", "field 1 (minute) '60': value 60 out of range 0-59"),
    ("0 24 * * *", "field 2 (hour)"),
    ("0 3 * * 7", "field 5 (day-of-week) '7': value 7 out of range 0-6"),
    ("0 3 * * MOO", "'MOO' is not a number or a name"),
    ("5/10 * * * *", "a step needs"),
    ("0 3 5-1 * *", "runs backwards"),
    ("*/0 3 * * *", "step"),
    ("0 0 30 2 *", "never fires"),
])
def test_errors_name_the_field(expr, needle):
    with pytest.raises(CronError, match=re.escape(needle)):
        parse_cron(expr)
