"""Which partition a run reads, from an explicit date or its schedule time."""

import pytest

from core.partitions import PartitionError, parse_schedule_time, partition_path, resolve_data_date


def test_explicit_date_wins_over_schedule_time():
    assert resolve_data_date(True, "2026-11-02", "2026-11-22T03:00:00Z", 1) == "2026-11-02"


def test_scheduled_run_covers_the_day_before_by_default():
    assert resolve_data_date(True, "", "2026-11-22T03:00:00Z", 1) == "2026-11-21"
    assert resolve_data_date(True, "", "2026-11-22T03:00:00+00:00", 0) == "2026-11-22"
    # A time zone other than UTC is converted first: 01:00+03:00 is 22:00 UTC the day before.
    assert resolve_data_date(True, "", "2026-11-22T01:00:00+03:00", 0) == "2026-11-21"


def test_unresolved_placeholder_counts_as_no_schedule_time():
    assert parse_schedule_time("{{$.pipeline_job_schedule_time_utc}}") is None
    with pytest.raises(PartitionError, match="--data-date"):
        resolve_data_date(True, "", "{{$.pipeline_job_schedule_time_utc}}", 1)


def test_unpartitioned_dataset_takes_no_date():
    assert resolve_data_date(False, "", "2026-11-22T03:00:00Z", 1) is None
    with pytest.raises(PartitionError, match="data.partitioned is false"):
        resolve_data_date(False, "2026-11-02", "", 1)


@pytest.mark.parametrize("bad", ["2026-13-01", "20261101", "2026-02-30", "yesterday"])
def test_malformed_dates_are_named(bad):
    with pytest.raises(PartitionError, match="data_date"):
        resolve_data_date(True, bad, "", 1)


def test_partition_path_local_and_gcs(tmp_path):
    assert partition_path(str(tmp_path), "2026-11-02") == str(tmp_path / "date=2026-11-02")
    assert partition_path("gs://b/data/", "2026-11-02") == "gs://b/data/date=2026-11-02"
    assert partition_path("gs://b/data", None) == "gs://b/data"
