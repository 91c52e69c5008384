"""What the KFP and Vertex AI clients share: the error type, cron checking, result records.

Kept apart from :mod:`pipelines.kfp_remote` and :mod:`pipelines.vertex_remote` so neither
imports the other and neither needs the pipeline definition: both take an already compiled
pipeline spec and a dict of parameter values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from core import cron as core_cron


class RemoteError(RuntimeError):
    """A submission or schedule operation failed for a reason the user can act on.

    ``status`` is the HTTP status when the API server answered with an error, else None.
    """

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class CronError(RemoteError):
    """A cron expression is not a valid standard 5-field expression; the message names the field."""


@dataclass(frozen=True)
class SubmittedRun:
    """A one-off run the server accepted: its id and the UI page that shows it."""

    run_id: str
    link: str


#: Run states after which nothing changes, as each server spells them: KFP's
#: ``V2beta1RuntimeState`` and Vertex AI's ``PipelineState`` names.
SUCCEEDED_STATES = frozenset({"SUCCEEDED", "SKIPPED", "PIPELINE_STATE_SUCCEEDED"})
FINAL_STATES = SUCCEEDED_STATES | {"FAILED", "CANCELED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED"}


@dataclass(frozen=True)
class RunStatus:
    """One run as its server reports it, described the same way for KFP and Vertex AI.

    ``state`` is the server's own name (KFP ``RUNNING`` / ``SUCCEEDED`` / ``CANCELED`` ...,
    Vertex AI ``PIPELINE_STATE_RUNNING`` / ``PIPELINE_STATE_CANCELLED`` ...), passed through so
    it matches what the server's UI shows.
    """

    run_id: str
    state: str
    display_name: str
    link: str

    @property
    def finished(self) -> bool:
        """True once the run can no longer change (succeeded, skipped, failed or cancelled)."""
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state in SUCCEEDED_STATES


@dataclass(frozen=True)
class ScheduleInfo:
    """One recurring schedule, described the same way for KFP and Vertex AI.

    ``cron`` is the standard 5-field expression (KFP's leading seconds field stripped when it
    is ``0``); ``state`` is ``ACTIVE`` or ``PAUSED`` (anything else is passed through).
    """

    schedule_id: str
    display_name: str
    cron: str
    state: str
    link: str = ""


_TZ_PREFIX = re.compile(r"^(?:CRON_TZ|TZ)=(\S+)$")


def parse_cron(expression: str) -> tuple[Optional[str], list[str]]:
    """Validate a standard 5-field cron expression (``"0 3 * * *"`` = 03:00 every day).

    An optional leading ``TZ=Area/City`` (or ``CRON_TZ=``) names the time zone (Vertex AI
    takes it; KFP does not). The fields themselves are checked by :mod:`core.cron`, the one
    parser every scheduler here uses.

    Returns:
        ``(time_zone or None, [minute, hour, day_of_month, month, day_of_week])``.

    Raises:
        CronError: naming the bad field and why.
    """
    tokens = expression.split()
    tz = None
    if tokens and _TZ_PREFIX.match(tokens[0]):
        tz = _TZ_PREFIX.match(tokens[0]).group(1)
        tokens = tokens[1:]
    if tokens and tokens[0].startswith("@"):
        raise CronError(f"cron {expression!r}: descriptors like {tokens[0]} are not supported; "
                        "use 5 fields, e.g. '0 3 * * *' for 03:00 daily")
    try:
        core_cron.parse_cron(" ".join(tokens))
    except core_cron.CronError as exc:
        raise CronError(str(exc).replace(repr(" ".join(tokens)), repr(expression), 1)) from None
    return tz, tokens


def kfp_cron(expression: str) -> str:
    """Convert a standard 5-field cron to the 6-field form KFP expects (seconds first).

    KFP's scheduler reads the first field as seconds, so ``"0 3 * * *"`` sent unchanged would
    fire at minute 3 of every hour; ``"0 0 3 * * *"`` is 03:00 daily.

    Raises:
        CronError: when the expression is invalid, or carries a time zone (KFP schedules run in
            the cluster controller's time zone, so a TZ would be silently wrong there).
    """
    tz, fields = parse_cron(expression)
    if tz:
        raise CronError(f"cron {expression!r}: a time zone is not supported on KFP "
                        "(schedules use the cluster's time zone); drop the TZ= prefix")
    return core_cron.parse_cron(" ".join(fields)).to_kfp()


def cron_from_kfp(expression: str) -> str:
    """The 5-field form of a KFP 6-field cron when its seconds field is 0; else unchanged."""
    tokens = expression.split()
    if len(tokens) == 6 and tokens[0] == "0":
        return " ".join(tokens[1:])
    return expression


def default_run_name(pipeline_name: str, data_date: str = "") -> str:
    """``"twotower 2024-05-01"`` for a dated run, else the pipeline name and the UTC time."""
    when = data_date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{pipeline_name} {when}"
