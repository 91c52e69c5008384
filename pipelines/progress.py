"""Concise console progress for local runs; the runner's full output goes to a log file.

The KFP local runner prints every task's executor input and output JSON. That stays in
``<run_dir>/pipeline.log``; the console gets one line per task start/finish, our own
stage lines (``[twotower] ...``, ``[train] epoch ...``), and, when a task fails, that
task's whole streamed log so the error is visible without opening the file.
"""

from __future__ import annotations

import io
import re
import sys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_STAGE_LINE = re.compile(r"^\s*\[(twotower|train)\]")
_PIPELINE_END = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")


class ProgressStream(io.TextIOBase):
    """A write-only text stream: everything to ``log``, a filtered view to ``console``."""

    def __init__(self, log, console=None):
        self._log = log
        self._console = console or sys.__stdout__
        self._partial = ""
        self._task_lines: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._console.flush()

    def _line(self, line: str) -> None:
        start = _TASK_START.search(line)
        if start:
            self._task_lines = []
            self._say(f"-> {start.group(1)}")
            return
        end = _TASK_END.search(line)
        if end:
            if end.group(2) != "SUCCESS":
                self._say(f"   {end.group(1)} {end.group(2)}; its log:")
                for kept in self._task_lines:
                    self._say(f"   | {kept.strip()}")
            return
        done = _PIPELINE_END.search(line)
        if done:
            self._say(f"pipeline {done.group(1)}: {done.group(2)}")
            return
        self._task_lines.append(line)
        if _STAGE_LINE.search(line):
            self._say("   " + line.strip())

    def _say(self, text: str) -> None:
        self._console.write(text + "\n")
        self._console.flush()
