"""One-off runs and recurring runs on a Kubeflow Pipelines (v2) API server.

Everything goes through the real ``kfp.Client``; this module adds what the client leaves to
the caller: 5-field cron checking and conversion, one-line errors instead of ``ApiException``
dumps, and the UI links.

Use::

    kfp = KfpRemote("https://kfp.example.com", token=None)
    run = kfp.submit("pipeline.yaml", {"config_json": ...}, experiment="twotower")
    schedule = kfp.create_schedule("pipeline.yaml", params, cron="0 3 * * *", name="nightly",
                                   experiment="twotower")
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from typing import Any, Callable, Optional, TypeVar

from pipelines.remote_common import RemoteError, RunStatus, ScheduleInfo, SubmittedRun, cron_from_kfp, kfp_cron

T = TypeVar("T")

#: Recurring runs fetched per list request (the server caps pages anyway).
LIST_PAGE_SIZE = 100


class KfpRemote:
    """A KFP API server at ``host`` (``http(s)://...``), optionally with a bearer ``token``.

    ``client`` may be given instead of building one (tests, or a client configured with
    credentials this wrapper does not expose).
    """

    def __init__(self, host: str, token: Optional[str] = None, client: Any = None) -> None:
        if not host.startswith(("http://", "https://")):
            raise RemoteError(f"--host {host!r}: expected an http:// or https:// URL")
        self.host = host.rstrip("/")
        self._client = client if client is not None else self._call(
            lambda: _new_client(self.host, token), what="connect")

    # ---- one-off runs -------------------------------------------------------------------

    def submit(self, package_path: str, parameters: dict[str, Any], experiment: str,
               run_name: Optional[str] = None, pipeline_root: Optional[str] = None) -> SubmittedRun:
        """Start one run of the compiled pipeline at ``package_path`` (IR YAML).

        The experiment is created when it does not exist yet.
        """
        result = self._call(lambda: self._client.create_run_from_pipeline_package(
            pipeline_file=package_path, arguments=parameters, run_name=run_name,
            experiment_name=experiment, pipeline_root=pipeline_root), what="submit the run")
        return SubmittedRun(run_id=result.run_id, link=self.run_link(result.run_id))

    def run_link(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"

    def run_status(self, run_id: str) -> RunStatus:
        """The run's current state (``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``CANCELING`` ...)."""
        run = self._call(lambda: self._client.get_run(run_id), what=f"read run {run_id}")
        return RunStatus(run_id=run.run_id, state=run.state or "RUNTIME_STATE_UNSPECIFIED",
                         display_name=run.display_name or "", link=self.run_link(run.run_id))

    def cancel_run(self, run_id: str) -> None:
        """Terminate a pending or running run: it goes ``CANCELING``, then ``CANCELED``.

        The server refuses (HTTP 400) a run that has already finished.
        """
        self._call(lambda: self._client.terminate_run(run_id), what=f"cancel run {run_id}")

    # ---- recurring runs -----------------------------------------------------------------

    def create_schedule(self, package_path: str, parameters: dict[str, Any], cron: str, name: str,
                        experiment: str, pipeline_root: Optional[str] = None) -> ScheduleInfo:
        """Create an enabled recurring run firing on the standard 5-field ``cron``.

        At most one run at a time, and no catch-up: a paused-then-resumed schedule (or a
        scheduler outage) starts the latest missed interval only, instead of a burst of
        backfill runs that would each republish the index.
        """
        six_field = kfp_cron(cron)  # validate before touching the server
        experiment_id = self._experiment_id(experiment)
        recurring = self._call(lambda: self._client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, cron_expression=six_field,
            max_concurrency=1, no_catchup=True, enabled=True, params=parameters,
            pipeline_package_path=package_path, pipeline_root=pipeline_root),
            what="create the schedule")
        return self._info(recurring)

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every recurring run the caller can see, following the server's pages."""
        found, token = [], ""
        while True:
            page = self._call(lambda: self._client.list_recurring_runs(
                page_token=token, page_size=LIST_PAGE_SIZE), what="list schedules")
            found.extend(self._info(r) for r in page.recurring_runs or [])
            token = page.next_page_token or ""
            if not token:
                return found

    def pause_schedule(self, schedule_id: str) -> None:
        self._call(lambda: self._client.disable_recurring_run(schedule_id),
                   what=f"pause schedule {schedule_id}")

    def resume_schedule(self, schedule_id: str) -> None:
        # Catch-up stays off: it was fixed at creation (no_catchup=True) and enable keeps it.
        self._call(lambda: self._client.enable_recurring_run(schedule_id),
                   what=f"resume schedule {schedule_id}")

    def delete_schedule(self, schedule_id: str) -> None:
        self._call(lambda: self._client.delete_recurring_run(schedule_id),
                   what=f"delete schedule {schedule_id}")

    def schedule_link(self, schedule_id: str) -> str:
        return f"{self.host}/#/recurringrun/details/{schedule_id}"

    # ---- helpers ------------------------------------------------------------------------

    def _experiment_id(self, name: str) -> str:
        experiment = self._call(lambda: self._client.create_experiment(name=name),
                                what=f"get or create experiment {name!r}")
        return experiment.experiment_id

    def _info(self, recurring) -> ScheduleInfo:
        trigger = recurring.trigger
        cron = ""
        if trigger is not None and trigger.cron_schedule is not None:
            cron = cron_from_kfp(trigger.cron_schedule.cron or "")
        elif trigger is not None and trigger.periodic_schedule is not None:
            cron = f"every {trigger.periodic_schedule.interval_second}s"
        state = {"ENABLED": "ACTIVE", "DISABLED": "PAUSED"}.get(recurring.status or "", recurring.status or "")
        return ScheduleInfo(schedule_id=recurring.recurring_run_id, display_name=recurring.display_name or "",
                            cron=cron, state=state, link=self.schedule_link(recurring.recurring_run_id))

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run one client call, turning API and connection failures into one-line RemoteErrors.

        The client prints "Experiment details: ..." / "Run details: ..." itself; that output is
        captured so the CLI prints one clean link of its own.
        """
        import kfp_server_api
        import urllib3

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return fn()
        except kfp_server_api.ApiException as exc:
            raise RemoteError(f"KFP API at {self.host} could not {what}: HTTP {exc.status}: "
                              f"{_api_message(exc)}", status=exc.status) from None
        except urllib3.exceptions.HTTPError as exc:
            raise RemoteError(f"cannot reach the KFP API at {self.host} to {what}: {exc}") from None
        except TimeoutError as exc:  # the client's health check gives up this way
            raise RemoteError(f"KFP API at {self.host} did not become healthy: {exc}") from None


def _new_client(host: str, token: Optional[str]):
    import kfp

    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": noise for users.
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, existing_token=token or None)


def _api_message(exc) -> str:
    """The server's own message from an ``ApiException`` body (grpc-gateway JSON), else its reason."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            return body.strip()[:500]
        if isinstance(data, dict):
            message = data.get("message") or data.get("error")
            if message:
                return str(message)
    return str(getattr(exc, "reason", "") or "no message")

