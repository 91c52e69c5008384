"""The local daily scheduler behind ``twotower schedule run``: a cluster's recurring run, on one machine.

For each fire time of a 5-field cron expression it runs the whole pipeline locally on
that day's partition (``data_date = fire date - data.partition_lag_days``), with the
partition's fingerprint as a pipeline input. Guarantees:

- never two runs at once: runs are sequential, and an exclusive lock on
  ``<runs_dir>/scheduler.lock`` stops a second scheduler on the same runs folder;
- an explicit missed-run policy for fire times that passed while the scheduler was down
  or a run overran (``latest``: run only the newest, like KFP's no-catch-up; ``all``:
  run each, oldest first; ``skip``: run the newest only if it is within the grace period);
- a failed run is recorded and the scheduler goes on (the store keeps its live version);
- state survives restarts: ``<runs_dir>/scheduler.json`` holds the last fire time handled
  and the history of fire times (run, skipped, failed).

The clock is injected (``Clock``), so tests drive days in seconds.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional, Protocol

from core import storage
from core.config import Config
from core.contracts.files import SCHEDULER_STATE_FILE
from core.cron import Cron
from core.partitions import date_for_fire_time

log = logging.getLogger("twotower.scheduler")

MissedRunPolicy = Literal["latest", "all", "skip"]
MISSED_RUN_POLICIES = ("latest", "all", "skip")
STATE_FILE = SCHEDULER_STATE_FILE
LOCK_FILE = "scheduler.lock"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class SchedulerBusyError(RuntimeError):
    """Another scheduler holds the runs folder's lock."""


class Clock(Protocol):
    def now(self) -> _dt.datetime:
        """Current time, naive UTC."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""


class SystemClock:
    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


@dataclass
class ScheduledRun:
    """One fire time and what became of it."""

    fire_time: str  # ISO, naive UTC
    data_date: str
    outcome: str  # "published" | "not-published" | "failed" | "skipped"
    run_id: Optional[str] = None
    version: Optional[str] = None
    error: Optional[str] = None


# The runner: run_local's signature (config, run_id=..., data_date=...) -> summary dict.
Runner = Callable[..., dict]


class LocalScheduler:
    """Runs the pipeline for each due fire time of ``cron``; see the module docstring.

    Args:
        config: the pipeline config (``data.partitioned`` must be true: each run needs its day).
        runner: :func:`pipelines.local_run.run_local` (injectable for tests of the policy).
        missed: the missed-run policy.
        grace: how late a fire time may run under the ``skip`` policy.
        backfill_from: on a first start (no state file), handle fire times after this
            moment too; by default a first start only waits for the next fire time.
    """

    def __init__(self, config: Config, cron: Cron, runner: Runner, clock: Optional[Clock] = None,
                 missed: MissedRunPolicy = "latest", grace: _dt.timedelta = _dt.timedelta(hours=1),
                 backfill_from: Optional[_dt.datetime] = None):
        if not config.data.partitioned:
            raise ValueError("schedule run needs a partitioned dataset: set data.partitioned=true and keep one "
                             "complete dataset per day in <data.path>/date=YYYY-MM-DD/")
        if missed not in MISSED_RUN_POLICIES:
            raise ValueError(f"missed-run policy must be one of {', '.join(MISSED_RUN_POLICIES)}, got {missed!r}")
        self.config = config
        self.cron = cron
        self.runner = runner
        self.clock = clock or SystemClock()
        self.missed = missed
        self.grace = grace
        self.runs_dir = config.pipeline.runs_dir
        self.state_path = os.path.join(self.runs_dir, STATE_FILE)
        self._state = self._load_state(backfill_from)

    # -- state -----------------------------------------------------------------------------------
    def _load_state(self, backfill_from: Optional[_dt.datetime]) -> dict:
        if os.path.exists(self.state_path):
            with open(self.state_path) as fh:
                return json.load(fh)
        start = backfill_from or self.clock.now()
        return {"cron": self.cron.expression, "last_fire_time": start.strftime(_TIME_FORMAT), "history": []}

    def _save_state(self) -> None:
        os.makedirs(self.runs_dir, exist_ok=True)
        storage.write_text(self.state_path, json.dumps(self._state, indent=2, sort_keys=True))

    @property
    def last_fire_time(self) -> _dt.datetime:
        return _dt.datetime.strptime(self._state["last_fire_time"], _TIME_FORMAT)

    @property
    def history(self) -> list[ScheduledRun]:
        return [ScheduledRun(**entry) for entry in self._state["history"]]

    def next_fire_time(self) -> _dt.datetime:
        return self.cron.next_after(self.last_fire_time)

    # -- one pass --------------------------------------------------------------------------------
    def plan(self, now: _dt.datetime) -> tuple[list[_dt.datetime], list[_dt.datetime]]:
        """(fire times to run, fire times to skip) among those due by ``now``, by the policy."""
        due = self.cron.fire_times(self.last_fire_time, now)
        if not due or self.missed == "all":
            return due, []
        newest = due[-1]
        if self.missed == "skip" and now - newest > self.grace:
            return [], due
        return [newest], due[:-1]

    def tick(self) -> list[ScheduledRun]:
        """Handle every fire time due now (runs one after another); returns what happened."""
        to_run, to_skip = self.plan(self.clock.now())
        done = []
        for fire in to_skip:
            done.append(self._record(ScheduledRun(fire.strftime(_TIME_FORMAT), self._date(fire), "skipped"), fire))
            log.warning("missed fire time %s skipped (policy %s)", fire, self.missed)
        for fire in to_run:
            done.append(self._record(self._run(fire), fire))
        return done

    def _date(self, fire: _dt.datetime) -> str:
        return date_for_fire_time(fire, self.config.data.partition_lag_days)

    def _run(self, fire: _dt.datetime) -> ScheduledRun:
        from pipelines.local_run import RunFailedError

        data_date = self._date(fire)
        run_id = f"{fire:%Y%m%dT%H%M%SZ}-scheduled"
        entry = ScheduledRun(fire.strftime(_TIME_FORMAT), data_date, "failed", run_id)
        log.info("fire time %s: running the pipeline on partition %s (run %s)", fire, data_date, run_id)
        try:
            summary = self.runner(self.config, run_id=run_id, data_date=data_date)
        except RunFailedError as exc:
            entry.error = str(exc)
            log.error("run %s failed: %s", run_id, exc)
            return entry
        except Exception as exc:  # noqa: BLE001 — recorded and logged with its traceback; the daemon goes on
            entry.error = f"{type(exc).__name__}: {exc}"
            log.exception("run %s crashed", run_id)
            return entry
        entry.outcome = "published" if summary.get("published") else "not-published"
        entry.version = summary.get("version")
        log.info("run %s: %s %s", run_id, entry.outcome, entry.version or "; ".join(summary.get("reasons", [])))
        return entry

    def _record(self, entry: ScheduledRun, fire: _dt.datetime) -> ScheduledRun:
        # Saved after every fire time: a crash mid-backfill resumes after the last one handled.
        self._state["history"].append(asdict(entry))
        self._state["last_fire_time"] = max(fire, self.last_fire_time).strftime(_TIME_FORMAT)
        self._save_state()
        return entry

    # -- the loop --------------------------------------------------------------------------------
    def run_forever(self, until: Optional[_dt.datetime] = None, poll: _dt.timedelta = _dt.timedelta(minutes=1),
                    should_stop: Callable[[], bool] = lambda: False) -> list[ScheduledRun]:
        """Tick, then sleep until the next fire time (at most ``poll`` at a time, so a changed
        clock or a stop request is noticed); returns when ``until`` has passed or ``should_stop()``.

        Raises:
            SchedulerBusyError: another scheduler is running on the same runs folder.
        """
        done: list[ScheduledRun] = []
        with self.lock():
            while not should_stop():
                done += self.tick()
                now = self.clock.now()
                if until is not None and now >= until:
                    return done
                wait = self.next_fire_time() - now
                if until is not None:
                    wait = min(wait, until - now)
                self.clock.sleep(max(0.0, min(wait, poll).total_seconds()))
        return done

    def lock(self):
        """An exclusive, non-blocking lock on the runs folder (released when the process ends)."""
        os.makedirs(self.runs_dir, exist_ok=True)
        return _FileLock(os.path.join(self.runs_dir, LOCK_FILE))


class _FileLock:
    def __init__(self, path: str):
        self.path = path
        self._fh = None

    def __enter__(self):
        self._fh = open(self.path, "a")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise SchedulerBusyError(f"{self.path}: another scheduler is running on this runs folder") from None
        return self

    def __exit__(self, *exc_info):
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
