"""One-off runs and schedules on Vertex AI Pipelines through ``google-cloud-aiplatform``.

The SDK does the talking: ``aiplatform.PipelineJob`` (built from the compiled pipeline YAML,
``.submit()``, ``.get()``, ``.cancel()``) and ``aiplatform.PipelineJobSchedule`` (``.create()``,
``.list()``, ``.pause()``, ``.resume()``, ``.delete()``). This module adds what the CLI needs
around it: input checks before any request, one-line errors (the server's status and message,
never a traceback), quiet SDK logging, and console links.

Endpoint and credentials:

- production: the regional endpoint ``{region}-aiplatform.googleapis.com`` and
  application-default credentials, as the SDK would choose them itself;
- ``api_endpoint`` (``--api-endpoint``) replaces the endpoint; an ``http://`` URL is honoured
  (the SDK's REST transport keeps a URL's scheme), which is how tests reach a local fake;
- ``credentials`` replaces application-default credentials: :func:`token_credentials` for a
  bare bearer token, :func:`anonymous_credentials` for a loopback fake or proxy.

The SDK always runs with its REST transport, so what the tests exercise against the fake is
what production sends.

Use::

    vertex = VertexRemote(project="p", region="us-central1")
    run = vertex.submit("pipeline.yaml", params, pipeline_root="gs://bucket/root")
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from pipelines.remote_common import RemoteError, RunStatus, ScheduleInfo, SubmittedRun, parse_cron

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
#: Seconds to wait for a create call: long enough for a large pipelineSpec upload.
REQUEST_TIMEOUT_S = 60
#: The SDK logs every create/delete at INFO ("Creating PipelineJob", code snippets) on stdout.
SDK_LOG_LEVEL = logging.WARNING


class VertexApiError(RemoteError):
    """The Vertex AI API answered an error: ``status`` is the HTTP status, the message the server's."""


class VertexRemote:
    """Vertex AI Pipelines in ``project`` / ``region``.

    Args:
        api_endpoint: base URL, ``http(s)://HOST[:PORT]``; default the regional endpoint
            (a private endpoint or a local fake may be given instead).
        credentials: ``google.auth`` credentials; default application-default credentials.
    """

    def __init__(self, project: str, region: str, api_endpoint: Optional[str] = None,
                 credentials: Any = None) -> None:
        if not project:
            raise RemoteError("Vertex AI needs --project")
        if not region:
            raise RemoteError("Vertex AI needs --region (e.g. us-central1)")
        self.project = project
        self.region = region
        self.api_endpoint = _checked_endpoint(api_endpoint) if api_endpoint else f"{region}-aiplatform.googleapis.com"
        self.credentials = credentials if credentials is not None else default_credentials()
        self._configure_sdk()  # also checks the region before anything is compiled or sent

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    # ---- one-off runs -------------------------------------------------------------------

    def submit(self, template_path: str, parameters: dict[str, Any], pipeline_root: str,
               display_name: Optional[str] = None, job_id: Optional[str] = None, *,
               labels: Optional[dict[str, str]] = None, enable_caching: Optional[bool] = None,
               service_account: Optional[str] = None, network: Optional[str] = None) -> SubmittedRun:
        """Create (and so start) a PipelineJob from the compiled pipeline YAML at ``template_path``.

        ``pipeline_root`` (a ``gs://`` prefix) is where Vertex writes the run's artifacts;
        ``enable_caching`` None keeps the compiled per-task setting. Before creating the job
        the SDK checks that the root's bucket exists (creating it if not) and belongs to the
        project (Cloud Storage and Resource Manager calls); it only logs when that check
        fails (after retrying for up to 2 minutes when Cloud Storage is unreachable), and the
        server has the last word on the root.
        """
        job = self._pipeline_job(template_path, parameters, pipeline_root, display_name, job_id,
                                 labels=labels, enable_caching=enable_caching)
        self._call("create the pipeline job", job.submit, service_account=service_account, network=network,
                   create_request_timeout=REQUEST_TIMEOUT_S)
        return SubmittedRun(run_id=job.name, link=self.run_link(job.name))

    def run_status(self, run_id: str) -> RunStatus:
        """The job's current state, read back from the server."""
        job = self._job(run_id, f"read pipeline job {run_id}")
        return RunStatus(run_id=job.name, state=job.gca_resource.state.name,
                         display_name=job.gca_resource.display_name, link=self.run_link(job.name))

    def cancel_run(self, run_id: str) -> None:
        """Ask the server to cancel a job; it ends as ``PIPELINE_STATE_CANCELLED`` (or finishes first)."""
        job = self._job(run_id, f"cancel pipeline job {run_id}")
        self._call(f"cancel pipeline job {run_id}", job.cancel)

    def job_name(self, run_id: str) -> str:
        """``projects/P/locations/R/pipelineJobs/ID`` from a bare id or a full resource name."""
        return self._resource_name("pipelineJobs", run_id, "pipeline job")

    def run_link(self, run_id: str) -> str:
        return (f"https://console.cloud.google.com/vertex-ai/locations/{self.region}/pipelines/runs/"
                f"{run_id}?project={self.project}")

    # ---- schedules ----------------------------------------------------------------------

    def create_schedule(self, template_path: str, parameters: dict[str, Any], pipeline_root: str,
                        cron: str, name: str, *, start_time: Optional[datetime] = None,
                        end_time: Optional[datetime] = None, labels: Optional[dict[str, str]] = None,
                        enable_caching: Optional[bool] = None, service_account: Optional[str] = None,
                        network: Optional[str] = None) -> ScheduleInfo:
        """Create an active schedule firing on the standard 5-field ``cron`` (``TZ=`` prefix allowed).

        One run at a time and no catch-up (the service's default, which the SDK leaves
        alone), so a paused-then-resumed schedule does not fire a burst of backfill runs that
        would each republish the index. ``start_time`` / ``end_time`` (aware datetimes)
        bound when it fires.
        """
        parse_cron(cron)  # validate before touching the server
        for label, when in (("start_time", start_time), ("end_time", end_time)):
            if when is not None and when.tzinfo is None:
                raise RemoteError(f"schedule {label} {when.isoformat()} needs a time zone")
        job = self._pipeline_job(template_path, parameters, pipeline_root, name, None,
                                 labels=labels, enable_caching=enable_caching)
        aiplatform = _sdk()
        schedule = self._call("prepare the schedule", aiplatform.PipelineJobSchedule, pipeline_job=job,
                              display_name=name, credentials=self.credentials, project=self.project,
                              location=self.region)
        self._call("create the schedule", schedule.create, cron=" ".join(cron.split()), max_concurrent_run_count=1,
                   start_time=start_time, end_time=end_time, service_account=service_account,
                   network=network, create_request_timeout=REQUEST_TIMEOUT_S)
        return self._info(schedule.gca_resource)

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule in the project and region (the SDK follows the server's pages)."""
        found = self._call("list schedules", _sdk().PipelineJobSchedule.list, project=self.project,
                           location=self.region, credentials=self.credentials)
        return [self._info(schedule.gca_resource) for schedule in found]

    def pause_schedule(self, schedule_id: str) -> None:
        schedule = self._schedule(schedule_id, f"pause schedule {schedule_id}")
        self._call(f"pause schedule {schedule_id}", schedule.pause)

    def resume_schedule(self, schedule_id: str) -> None:
        # No catch-up: resuming must not backfill every run missed while paused. (SDK 1.165
        # sends no catchUp whatever it is given; the service reads a missing one as false.)
        schedule = self._schedule(schedule_id, f"resume schedule {schedule_id}")
        self._call(f"resume schedule {schedule_id}", schedule.resume, catch_up=False)

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule, waiting for the server's long-running operation to finish."""
        schedule = self._schedule(schedule_id, f"delete schedule {schedule_id}")
        self._call(f"delete schedule {schedule_id}", schedule.delete)

    def schedule_name(self, schedule_id: str) -> str:
        """``projects/P/locations/R/schedules/ID`` from a bare id or a full resource name."""
        return self._resource_name("schedules", schedule_id, "schedule")

    def schedule_link(self, schedule_id: str) -> str:
        return (f"https://console.cloud.google.com/vertex-ai/locations/{self.region}/pipelines/schedules/"
                f"{schedule_id}?project={self.project}")

    # ---- helpers ------------------------------------------------------------------------

    def _pipeline_job(self, template_path: str, parameters: dict[str, Any], pipeline_root: str,
                      display_name: Optional[str], job_id: Optional[str], **options):
        """An ``aiplatform.PipelineJob`` built locally (no request yet) from the compiled YAML.

        The SDK checks the parameters against the pipeline's inputs, the labels and the job
        id here; those refusals become :class:`RemoteError` too.
        """
        _check_pipeline_root(pipeline_root)
        name = _pipeline_name(template_path)
        return self._call("prepare the pipeline job", _sdk().PipelineJob, display_name=(display_name or name)[:128],
                          template_path=template_path, job_id=job_id or new_job_id({"pipelineInfo": {"name": name}}),
                          pipeline_root=pipeline_root, parameter_values=dict(parameters),
                          credentials=self.credentials, project=self.project, location=self.region, **options)

    def _job(self, run_id: str, what: str):
        return self._call(what, _sdk().PipelineJob.get, self.job_name(run_id), project=self.project,
                          location=self.region, credentials=self.credentials)

    def _schedule(self, schedule_id: str, what: str):
        return self._call(what, _sdk().PipelineJobSchedule.get, self.schedule_name(schedule_id),
                          project=self.project, location=self.region, credentials=self.credentials)

    def _resource_name(self, collection: str, resource_id: str, noun: str) -> str:
        if "/" in resource_id:
            if not re.fullmatch(rf"{re.escape(self.parent)}/{collection}/[^/]+", resource_id):
                raise RemoteError(f"{noun} {resource_id!r} is not in {self.parent}")
            return resource_id
        return f"{self.parent}/{collection}/{resource_id}"

    def _info(self, schedule) -> ScheduleInfo:
        """A ScheduleInfo from the SDK's Schedule proto (read as it is: no extra request)."""
        schedule_id = schedule.name.rsplit("/", 1)[-1]
        return ScheduleInfo(schedule_id=schedule_id, display_name=schedule.display_name, cron=schedule.cron,
                            state=schedule.state.name, link=self.schedule_link(schedule_id))

    def _configure_sdk(self) -> None:
        """Point the SDK's process-wide settings at this project, region, endpoint and credentials.

        The SDK reads the endpoint and transport only from ``aiplatform.init``, when it builds
        each API client; every value is set on every call (none left as None, which ``init``
        would ignore), so another VertexRemote's settings never carry over.
        """
        aiplatform = _sdk()
        try:
            aiplatform.init(project=self.project, location=self.region, credentials=self.credentials,
                            api_endpoint=self.api_endpoint, api_transport="rest")
        except ValueError as exc:
            if "region" in str(exc).lower():
                raise RemoteError(f"--region {self.region!r} is not a Vertex AI region "
                                  "(e.g. us-central1, europe-west4)") from None
            raise RemoteError(f"cannot set up the Vertex AI client: {exc}") from None
        _quiet_sdk_loggers()

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the SDK set up for this remote; every failure becomes one
        :class:`RemoteError` line saying what could not be done and why."""
        import google.api_core.exceptions as api_errors
        import google.auth.exceptions as auth_errors
        import requests

        self._configure_sdk()
        try:
            return fn(*args, **kwargs)
        except api_errors.GoogleAPICallError as exc:
            raise _api_error(exc, what) from None
        except api_errors.RetryError as exc:
            raise RemoteError(f"cannot reach the Vertex AI API at {self.api_endpoint} to {what}: "
                              f"{exc.cause or exc}") from None
        except requests.RequestException as exc:
            raise RemoteError(f"cannot reach the Vertex AI API at {self.api_endpoint} to {what}: {exc}") from None
        except (auth_errors.RefreshError, auth_errors.InvalidOperation) as exc:
            raise _refused_credentials(self.credentials, what, exc) from None
        except auth_errors.GoogleAuthError as exc:
            raise RemoteError(f"Google Cloud credentials failed while trying to {what}: {exc}") from None
        except ValueError as exc:  # the SDK's own checks: parameters, labels, display name, ids
            raise RemoteError(f"cannot {what}: {exc}") from None


# ---- pieces -------------------------------------------------------------------------------

def _sdk():
    """``google.cloud.aiplatform``, imported on first use: it takes seconds, and the CLI's
    other commands should not pay for it."""
    from google.cloud import aiplatform

    return aiplatform


def _quiet_sdk_loggers() -> None:
    """The SDK gives each of its modules a logger at INFO with a stdout handler; WARNING keeps
    the CLI's output its own while real problems (e.g. an unreachable bucket) still show."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("google.cloud.aiplatform"):
            logging.getLogger(name).setLevel(SDK_LOG_LEVEL)


def _checked_endpoint(url: str) -> str:
    """``http(s)://HOST[:PORT]`` as given (the SDK's REST transport honours its scheme)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise RemoteError(f"--api-endpoint {url!r}: expected an http:// or https:// URL")
    if parsed.path.strip("/") or parsed.query:
        raise RemoteError(f"--api-endpoint {url!r}: expected a base URL without a path "
                          "(the client adds /v1/...)")
    return f"{parsed.scheme}://{parsed.netloc}"


def _check_pipeline_root(pipeline_root: str) -> None:
    if not pipeline_root:
        raise RemoteError("Vertex AI needs --pipeline-root gs://BUCKET/PREFIX (where runs write artifacts)")
    if not pipeline_root.startswith("gs://") or len(pipeline_root) <= len("gs://"):
        raise RemoteError(f"--pipeline-root {pipeline_root!r}: expected a gs://BUCKET/PREFIX")


def _pipeline_name(template_path: str) -> str:
    """``pipelineInfo.name`` of the compiled pipeline (its first YAML document)."""
    import yaml

    try:
        with open(template_path) as f:
            spec = next(yaml.safe_load_all(f), None) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RemoteError(f"cannot read the compiled pipeline {template_path}: {exc}") from None
    if not isinstance(spec, dict) or "pipelineInfo" not in spec:
        raise RemoteError(f"{template_path} is not a compiled pipeline (no pipelineInfo)")
    return str(spec["pipelineInfo"].get("name") or "pipeline")


def _api_error(exc, what: str) -> "VertexApiError":
    """``Vertex AI API could not <what>: HTTP 409: ALREADY_EXISTS: <server message>``.

    The SDK's own message starts with the request's method and URL; the server's JSON error
    body (``{"error": {"code", "message", "status"}}``) says it better, so use that.
    """
    error: dict = {}
    response = getattr(exc, "response", None)
    try:
        error = response.json().get("error", {}) if response is not None else {}
    except (ValueError, AttributeError):
        pass
    if not isinstance(error, dict):
        error = {}
    message = str(error.get("message") or exc.message or "no message").strip()[:500]
    status = error.get("status")
    code = exc.code if isinstance(exc.code, int) else getattr(response, "status_code", None)
    text = f"{status}: {message}" if status else message
    return VertexApiError(f"Vertex AI API could not {what}: HTTP {code}: {text}", status=code)


def _refused_credentials(credentials, what: str, exc: Exception) -> RemoteError:
    """A 401 the credentials cannot recover from: the google.auth session answers it by trying to
    refresh them, which a bare token or anonymous credentials cannot do."""
    import google.auth.credentials
    import google.oauth2.credentials

    if isinstance(credentials, google.auth.credentials.AnonymousCredentials):
        hint = "no credentials were sent (anonymous, for a loopback --api-endpoint); pass --token"
    elif isinstance(credentials, google.oauth2.credentials.Credentials) and credentials.refresh_token is None:
        hint = "the bearer token is wrong or expired; get a fresh one with `gcloud auth print-access-token`"
    else:
        return RemoteError(f"Google Cloud credentials failed while trying to {what}: {exc}")
    return VertexApiError(f"Vertex AI API could not {what}: HTTP 401: UNAUTHENTICATED: {hint}", status=401)


def default_credentials():
    """Application-default credentials (cloud-platform scope)."""
    import google.auth
    import google.auth.exceptions

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise RemoteError("no Google Cloud credentials: run `gcloud auth application-default login` "
                          f"or pass --token ({exc})") from None
    return credentials


def token_credentials(token: str):
    """Credentials that send ``Authorization: Bearer <token>`` (e.g. ``gcloud auth print-access-token``).

    A bare token cannot be refreshed, so a 401 is reported as a refused token rather than
    retried with other credentials.
    """
    import google.oauth2.credentials

    return google.oauth2.credentials.Credentials(token=token)


def anonymous_credentials():
    """No credentials at all: for a loopback endpoint (a local fake or an authenticating proxy)."""
    import google.auth.credentials

    return google.auth.credentials.AnonymousCredentials()


def new_job_id(pipeline_spec: dict, now: Optional[datetime] = None) -> str:
    """``twotower-20240501-030000-123456``: the pipeline name plus a UTC time stamp.

    Vertex job ids are ``[a-z][-a-z0-9]*`` up to 128 characters; the pipeline name is folded
    into that alphabet. Microseconds, not the SDK's default whole seconds, so two
    submissions in the same second do not collide.
    """
    name = pipeline_spec.get("pipelineInfo", {}).get("name", "pipeline").lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-") or "pipeline"
    if not name[0].isalpha():
        name = "p-" + name
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S-%f")
    return f"{name[:100]}-{stamp}"
