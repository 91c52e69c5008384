"""One-off runs and schedules on Vertex AI Pipelines through its REST API (v1).

No ``google-cloud-aiplatform``: the calls are plain JSON over an authorised ``requests``
session (``google.auth`` application-default credentials, or a given session). Resources:

- ``POST {base}/v1/projects/P/locations/R/pipelineJobs?pipelineJobId=ID`` (a PipelineJob);
- ``POST|GET {base}/v1/projects/P/locations/R/schedules``, ``GET|DELETE .../schedules/ID``,
  ``POST .../schedules/ID:pause`` and ``:resume``.

Use::

    vertex = VertexRemote(project="p", region="us-central1")
    run = vertex.submit(spec, params, pipeline_root="gs://bucket/root")
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Optional

from pipelines.remote_common import RemoteError, ScheduleInfo, SubmittedRun, parse_cron

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
LIST_PAGE_SIZE = 100
#: Seconds to wait for one API answer: long enough for a large pipelineSpec upload.
REQUEST_TIMEOUT_S = 60


class VertexApiError(RemoteError):
    """The Vertex AI API answered an error: ``status`` is the HTTP status, the message the server's."""


class VertexRemote:
    """Vertex AI Pipelines in ``project`` / ``region``.

    Args:
        api_endpoint: base URL; default ``https://{region}-aiplatform.googleapis.com``
            (a private endpoint or a local fake may be given instead).
        session: a ``requests.Session``-compatible object that adds credentials itself;
            default an ``AuthorizedSession`` over ``google.auth.default`` credentials.
    """

    def __init__(self, project: str, region: str, api_endpoint: Optional[str] = None,
                 session: Any = None) -> None:
        if not project:
            raise RemoteError("Vertex AI needs --project")
        if not region:
            raise RemoteError("Vertex AI needs --region (e.g. us-central1)")
        self.project = project
        self.region = region
        self.base_url = (api_endpoint or f"https://{region}-aiplatform.googleapis.com").rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise RemoteError(f"--api-endpoint {api_endpoint!r}: expected an http:// or https:// URL")
        self._session = session if session is not None else default_session()

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    # ---- one-off runs -------------------------------------------------------------------

    def submit(self, pipeline_spec: dict, parameters: dict[str, Any], pipeline_root: str,
               display_name: Optional[str] = None, job_id: Optional[str] = None) -> SubmittedRun:
        """Create (and so start) a PipelineJob from a compiled spec (the IR YAML as a dict).

        ``pipeline_root`` (a ``gs://`` prefix) is where Vertex writes the run's artifacts.
        """
        job = self._pipeline_job(pipeline_spec, parameters, pipeline_root, display_name)
        job_id = job_id or new_job_id(pipeline_spec)
        created = self._request("POST", f"{self.parent}/pipelineJobs", params={"pipelineJobId": job_id},
                                json=job, what="create the pipeline job")
        run_id = created.get("name", job_id).rsplit("/", 1)[-1]
        return SubmittedRun(run_id=run_id, link=self.run_link(run_id))

    def run_link(self, run_id: str) -> str:
        return (f"https://console.cloud.google.com/vertex-ai/locations/{self.region}/pipelines/runs/"
                f"{run_id}?project={self.project}")

    # ---- schedules ----------------------------------------------------------------------

    def create_schedule(self, pipeline_spec: dict, parameters: dict[str, Any], pipeline_root: str,
                        cron: str, name: str) -> ScheduleInfo:
        """Create an active schedule firing on the standard 5-field ``cron`` (``TZ=`` prefix allowed).

        One run at a time and no catch-up, so a paused-then-resumed schedule does not fire a
        burst of backfill runs that would each republish the index.
        """
        parse_cron(cron)  # validate before touching the server
        body = {
            "displayName": name,
            "cron": " ".join(cron.split()),
            "maxConcurrentRunCount": 1,
            "catchUp": False,
            "createPipelineJobRequest": {
                "parent": self.parent,
                "pipelineJob": self._pipeline_job(pipeline_spec, parameters, pipeline_root, name),
            },
        }
        created = self._request("POST", f"{self.parent}/schedules", json=body, what="create the schedule")
        return self._info(created)

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule in the project and region, following the server's pages."""
        found, token = [], None
        while True:
            params = {"pageSize": LIST_PAGE_SIZE}
            if token:
                params["pageToken"] = token
            page = self._request("GET", f"{self.parent}/schedules", params=params, what="list schedules")
            found.extend(self._info(s) for s in page.get("schedules", []))
            token = page.get("nextPageToken")
            if not token:
                return found

    def pause_schedule(self, schedule_id: str) -> None:
        self._request("POST", f"{self.schedule_name(schedule_id)}:pause", json={},
                      what=f"pause schedule {schedule_id}")

    def resume_schedule(self, schedule_id: str) -> None:
        # catchUp false: resuming must not backfill every run missed while paused.
        self._request("POST", f"{self.schedule_name(schedule_id)}:resume", json={"catchUp": False},
                      what=f"resume schedule {schedule_id}")

    def delete_schedule(self, schedule_id: str) -> None:
        # The answer is a long-running operation; deleting a schedule needs no waiting for it.
        self._request("DELETE", self.schedule_name(schedule_id), what=f"delete schedule {schedule_id}")

    def schedule_name(self, schedule_id: str) -> str:
        """``projects/P/locations/R/schedules/ID`` from a bare id or a full resource name."""
        if "/" in schedule_id:
            if not schedule_id.startswith(f"{self.parent}/schedules/"):
                raise RemoteError(f"schedule {schedule_id!r} is not in {self.parent}")
            return schedule_id
        return f"{self.parent}/schedules/{schedule_id}"

    def schedule_link(self, schedule_id: str) -> str:
        return (f"https://console.cloud.google.com/vertex-ai/locations/{self.region}/pipelines/schedules/"
                f"{schedule_id}?project={self.project}")

    # ---- helpers ------------------------------------------------------------------------

    def _pipeline_job(self, pipeline_spec: dict, parameters: dict[str, Any], pipeline_root: str,
                      display_name: Optional[str]) -> dict:
        if not pipeline_root:
            raise RemoteError("Vertex AI needs --pipeline-root gs://BUCKET/PREFIX (where runs write artifacts)")
        if not pipeline_root.startswith("gs://") or len(pipeline_root) <= len("gs://"):
            raise RemoteError(f"--pipeline-root {pipeline_root!r}: expected a gs://BUCKET/PREFIX")
        name = display_name or pipeline_spec.get("pipelineInfo", {}).get("name", "pipeline")
        return {
            "displayName": name[:128],
            "pipelineSpec": pipeline_spec,
            "runtimeConfig": {"gcsOutputDirectory": pipeline_root, "parameterValues": dict(parameters)},
        }

    def _info(self, schedule: dict) -> ScheduleInfo:
        schedule_id = schedule.get("name", "").rsplit("/", 1)[-1]
        return ScheduleInfo(schedule_id=schedule_id, display_name=schedule.get("displayName", ""),
                            cron=schedule.get("cron", ""), state=schedule.get("state", ""),
                            link=self.schedule_link(schedule_id))

    def _request(self, method: str, resource: str, what: str, params: Optional[dict] = None,
                 json: Optional[dict] = None) -> dict:
        """One API call; any non-2xx answer becomes a :class:`VertexApiError` with the server's message."""
        import google.auth.exceptions
        import requests

        url = f"{self.base_url}/v1/{resource}"
        try:
            response = self._session.request(method, url, params=params, json=json, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:
            raise RemoteError(f"cannot reach the Vertex AI API at {self.base_url} to {what}: {exc}") from None
        except google.auth.exceptions.GoogleAuthError as exc:  # e.g. expired application-default login
            raise RemoteError(f"Google Cloud credentials failed while trying to {what}: {exc}") from None
        if response.status_code >= 400:
            raise VertexApiError(f"Vertex AI API could not {what}: HTTP {response.status_code}: "
                                 f"{_error_message(response)}", status=response.status_code)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise RemoteError(f"Vertex AI API at {self.base_url} answered {what} with non-JSON: "
                              f"{response.text[:200]!r}") from None


def _error_message(response) -> str:
    """Google APIs answer ``{"error": {"code", "message", "status"}}``; fall back to the raw text."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    if isinstance(error, dict) and error.get("message"):
        status = error.get("status")
        return f"{status}: {error['message']}" if status else str(error["message"])
    return (response.text or response.reason or "no message").strip()[:500]


def default_session():
    """An ``AuthorizedSession`` over application-default credentials (cloud-platform scope)."""
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise RemoteError("no Google Cloud credentials: run `gcloud auth application-default login` "
                          f"or pass --token ({exc})") from None
    return AuthorizedSession(credentials)


def token_session(token: str):
    """A session that sends ``Authorization: Bearer <token>`` (e.g. ``gcloud auth print-access-token``).

    A plain session, not an AuthorizedSession: a bare token cannot be refreshed, so a 401 should
    reach the user as the server's answer rather than as a failed refresh.
    """
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def anonymous_session():
    """A session without credentials: for a loopback endpoint (a local fake or an authenticating proxy)."""
    import requests

    return requests.Session()


def new_job_id(pipeline_spec: dict, now: Optional[datetime] = None) -> str:
    """``twotower-20240501-030000-123456``: the pipeline name plus a UTC time stamp.

    Vertex job ids are ``[a-z][a-z0-9-]*`` up to 128 characters; the pipeline name is folded
    into that alphabet.
    """
    name = pipeline_spec.get("pipelineInfo", {}).get("name", "pipeline").lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-") or "pipeline"
    if not name[0].isalpha():
        name = "p-" + name
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S-%f")
    return f"{name[:100]}-{stamp}"
