"""A controllable clock for scheduler tests: ``sleep`` moves time forward instantly."""

import datetime as dt


class ManualClock:
    def __init__(self, start: dt.datetime):
        self.moment = start
        self.slept: list[float] = []

    def now(self) -> dt.datetime:
        return self.moment

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.moment += dt.timedelta(seconds=seconds)

    def advance(self, **delta) -> None:
        self.moment += dt.timedelta(**delta)
