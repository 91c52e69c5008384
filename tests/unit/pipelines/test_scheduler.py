"""The local scheduler's policy: which fire times run, in what order, one at a time.

The pipeline itself is replaced by a recording runner here (the policy is what is under
test, and it must run in milliseconds); tests/integration/test_multi_day.py drives the
real pipeline through the same scheduler.
"""

import datetime as dt
import json
import multiprocessing

import pytest

from core.config import load_config
from core.cron import parse_cron
from pipelines.local_run import RunFailedError
from pipelines.scheduler import LocalScheduler, SchedulerBusyError
from tests.clocks import ManualClock

T = dt.datetime.fromisoformat


class RecordingRunner:
    """Stands in for run_local: records calls, checks none overlap, fails on chosen dates."""

    def __init__(self, clock=None, fail_dates=(), run_minutes=0):
        self.calls, self.active, self.clock = [], 0, clock
        self.fail_dates, self.run_minutes = set(fail_dates), run_minutes

    def __call__(self, config, run_id, data_date):
        assert self.active == 0, "two runs at once"
        self.active += 1
        try:
            self.calls.append((run_id, data_date))
            if self.clock and self.run_minutes:
                self.clock.advance(minutes=self.run_minutes)
            if data_date in self.fail_dates:
                raise RunFailedError({"run_id": run_id, "failed_step": "ingest", "error": "IngestError: corrupt"})
            return {"published": True, "version": f"v-{data_date}", "reasons": []}
        finally:
            self.active -= 1


@pytest.fixture
def config(tmp_path):
    return load_config("shop", [
        f"data.path={tmp_path / 'data'}", "data.partitioned=true", f"publish.store={tmp_path / 'store'}",
        f"pipeline.runs_dir={tmp_path / 'runs'}"])


def make(config, clock, runner, **kw):
    return LocalScheduler(config, parse_cron("0 3 * * *"), runner, clock=clock, **kw)


def test_each_day_runs_the_previous_days_partition(config):
    clock = ManualClock(T("2026-11-01T00:00"))
    runner = RecordingRunner()
    done = make(config, clock, runner).run_forever(until=T("2026-11-04T00:00"))
    assert runner.calls == [("20261101T030000Z-scheduled", "2026-10-31"),
                            ("20261102T030000Z-scheduled", "2026-11-01"),
                            ("20261103T030000Z-scheduled", "2026-11-02")]
    assert [d.outcome for d in done] == ["published"] * 3
    # It slept until each fire time instead of polling busily (poll is at most a minute).
    assert len(clock.slept) < 3 * 24 * 60 + 10


def test_missed_runs_latest_policy_runs_only_the_newest(config):
    clock = ManualClock(T("2026-11-01T00:00"))
    runner = RecordingRunner()
    scheduler = make(config, clock, runner)
    clock.advance(days=3)  # the scheduler was down for three fire times
    done = scheduler.tick()
    assert runner.calls == [("20261103T030000Z-scheduled", "2026-11-02")]
    assert [(d.data_date, d.outcome) for d in done] == [
        ("2026-10-31", "skipped"), ("2026-11-01", "skipped"), ("2026-11-02", "published")]


def test_missed_runs_all_policy_backfills_in_order(config):
    clock = ManualClock(T("2026-11-01T00:00"))
    runner = RecordingRunner(clock=clock, run_minutes=90)  # runs overrun into each other's slots
    scheduler = make(config, clock, runner, missed="all")
    clock.advance(days=3)
    scheduler.tick()
    assert [d for _, d in runner.calls] == ["2026-10-31", "2026-11-01", "2026-11-02"]


def test_missed_runs_skip_policy_respects_the_grace_period(config):
    clock = ManualClock(T("2026-11-01T00:00"))
    runner = RecordingRunner()
    scheduler = make(config, clock, runner, missed="skip", grace=dt.timedelta(hours=1))
    clock.moment = T("2026-11-03T05:00")  # two hours after the newest fire time: too late
    assert [d.outcome for d in scheduler.tick()] == ["skipped", "skipped", "skipped"]
    clock.moment = T("2026-11-04T03:30")  # within the grace period
    assert [d.outcome for d in scheduler.tick()] == ["published"]
    assert runner.calls == [("20261104T030000Z-scheduled", "2026-11-03")]


def test_failed_run_is_recorded_and_the_schedule_goes_on(config, tmp_path):
    clock = ManualClock(T("2026-11-01T00:00"))
    runner = RecordingRunner(fail_dates={"2026-11-01"})
    done = make(config, clock, runner).run_forever(until=T("2026-11-04T00:00"))
    assert [d.outcome for d in done] == ["published", "failed", "published"]
    assert "corrupt" in done[1].error
    state = json.loads((tmp_path / "runs" / "scheduler.json").read_text())
    assert state["last_fire_time"] == "2026-11-03T03:00:00"
    assert [h["outcome"] for h in state["history"]] == ["published", "failed", "published"]


def test_state_survives_a_restart(config):
    clock = ManualClock(T("2026-11-01T00:00"))
    runner = RecordingRunner()
    make(config, clock, runner).run_forever(until=T("2026-11-02T00:00"))
    clock.advance(days=1)
    again = make(config, clock, runner)  # a new process: state comes from scheduler.json
    assert again.last_fire_time == T("2026-11-01T03:00")
    again.tick()
    assert [d for _, d in runner.calls] == ["2026-10-31", "2026-11-01"]


def test_first_start_does_not_backfill_unless_asked(config):
    clock = ManualClock(T("2026-11-05T12:00"))
    runner = RecordingRunner()
    assert make(config, clock, runner).tick() == []
    backfill = make(config, clock, RecordingRunner(), missed="all", backfill_from=T("2026-11-03T00:00"))
    assert [d.data_date for d in backfill.tick()] == ["2026-11-02", "2026-11-03", "2026-11-04"]


def _hold_lock(runs_dir, ready, release):
    from pipelines.scheduler import _FileLock
    with _FileLock(f"{runs_dir}/scheduler.lock"):
        ready.set()
        release.wait(10)


def test_a_second_scheduler_on_the_same_runs_folder_is_refused(config, tmp_path):
    (tmp_path / "runs").mkdir()
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "runs"), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(SchedulerBusyError, match="another scheduler"):
            make(config, ManualClock(T("2026-11-01T00:00")), RecordingRunner()).run_forever(
                until=T("2026-11-02T00:00"))
    finally:
        release.set()
        holder.join(10)


def test_unpartitioned_config_is_refused(tmp_path):
    config = load_config("shop", [f"data.path={tmp_path}", f"publish.store={tmp_path}"])
    with pytest.raises(ValueError, match="data.partitioned=true"):
        make(config, ManualClock(T("2026-11-01T00:00")), RecordingRunner())
