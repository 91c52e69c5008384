"""A fake Vertex AI (v1) REST API for pipeline jobs and schedules.

Serves on 127.0.0.1 and an ephemeral port, with the shapes of the public v1 REST reference:

- ``POST /v1/projects/P/locations/R/pipelineJobs?pipelineJobId=ID`` -> PipelineJob
  (``name``, ``displayName``, ``state: PIPELINE_STATE_PENDING``, ``createTime``, ...);
  ``GET .../pipelineJobs/ID``;
- ``POST /v1/projects/P/locations/R/schedules`` -> Schedule (``name`` =
  ``projects/P/locations/R/schedules/<numeric id>``, ``state: ACTIVE``, ``nextRunTime``, int64
  fields as JSON strings); ``GET .../schedules`` (``pageSize`` <= 100, ``pageToken`` ->
  ``schedules`` + ``nextPageToken``); ``GET|DELETE .../schedules/ID`` (delete answers a
  long-running Operation); ``POST .../schedules/ID:pause`` and ``:resume`` (``{}``).

Checked the way the real service refuses requests, answering Google's error body
``{"error": {"code", "message", "status"}}``:

- every request needs an ``Authorization: Bearer ...`` header (401 UNAUTHENTICATED), equal to
  ``token`` when one is given;
- request bodies may only use the resource's known fields (400 "Unknown name");
- a PipelineJob's ``pipelineSpec`` is a complete compiled spec (see
  :func:`tests.fakes.kfp_api_server.check_pipeline_spec`); ``runtimeConfig.gcsOutputDirectory``
  is a ``gs://`` URI unless the spec has ``defaultPipelineRoot`` (400); ``parameterValues``
  name declared root inputs with the declared types; ``pipelineJobId`` matches
  ``[a-z][a-z0-9-]{0,127}`` and is new (409 ALREADY_EXISTS);
- a Schedule has ``displayName``, a standard 5-field ``cron`` (optional ``TZ=``/``CRON_TZ=``
  prefix) whose fields parse, ``maxConcurrentRunCount`` >= 1, and a ``createPipelineJobRequest``
  whose ``parent`` is the schedule's own location;
- pausing a PAUSED schedule or resuming an ACTIVE one is 400 FAILED_PRECONDITION;
- unknown ids and other projects' / locations' resources are 404 NOT_FOUND.

Every request is recorded (:attr:`FakeVertexServer.requests`).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from tests.fakes.http_base import JsonApiFake, JsonApiHandler
from tests.fakes.kfp_api_server import check_parameters, check_pipeline_spec

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}

PIPELINE_JOB_FIELDS = {"displayName", "pipelineSpec", "runtimeConfig", "labels", "serviceAccount", "network",
                       "encryptionSpec", "templateUri", "reservedIpRanges", "pscInterfaceConfig",
                       "preflightValidations"}
RUNTIME_CONFIG_FIELDS = {"gcsOutputDirectory", "parameterValues", "parameters", "failurePolicy",
                         "inputArtifacts", "defaultRuntime"}
SCHEDULE_FIELDS = {"displayName", "cron", "maxConcurrentRunCount", "catchUp", "allowQueueing", "startTime",
                   "endTime", "maxRunCount", "createPipelineJobRequest", "createNotebookExecutionJobRequest"}


class VertexError(Exception):
    def __init__(self, code: int, message: str, status: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, "UNKNOWN")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- unix cron (5 fields) as Cloud Scheduler / Vertex read it --------------------------------

_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_CRON5 = [("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
          ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS)]


def check_unix_cron(expression: str) -> None:
    """Raise ValueError unless ``expression`` is ``[TZ=zone] m h dom mon dow``."""
    fields = expression.split()
    if fields and re.fullmatch(r"(CRON_TZ|TZ)=\S+", fields[0]):
        fields = fields[1:]
    if len(fields) != 5:
        raise ValueError(f"cron must have 5 fields, got {len(fields)}")
    for token, (name, low, high, names) in zip(fields, _CRON5):
        for part in token.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"{name}: bad step in {part!r}")
            if base == "*":
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(bounds):
                raise ValueError(f"{name}: cannot parse {part!r}")
            for bound in bounds:
                value = int(bound) if bound.isdigit() else names.get(bound.upper())
                if value is None or not low <= value <= high:
                    raise ValueError(f"{name}: {bound!r} is not in {low}-{high}")


# ---- the server -----------------------------------------------------------------------------

class FakeVertexServer(JsonApiFake):
    """The fake; a context manager that starts and stops it on a background thread."""

    def __init__(self, token: Optional[str] = None, max_page_size: int = 100) -> None:
        super().__init__(token, max_page_size)
        self.pipeline_jobs: dict[str, dict] = {}  # full resource name -> PipelineJob
        self.schedules: dict[str, dict] = {}  # full resource name -> Schedule
        self._ids = itertools.count(1000000000000000001)

    def start(self) -> "FakeVertexServer":
        return self._start(_Handler)

    # routing -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: Any) -> dict:
        loc = r"/v1/(projects/[^/]+/locations/[^/]+)"
        routes = [
            ("POST", loc + r"/pipelineJobs", self._create_job),
            ("GET", loc + r"/pipelineJobs/([^/:]+)", self._get_job),
            ("POST", loc + r"/schedules", self._create_schedule),
            ("GET", loc + r"/schedules", self._list_schedules),
            ("GET", loc + r"/schedules/([^/:]+)", self._get_schedule),
            ("DELETE", loc + r"/schedules/([^/:]+)", self._delete_schedule),
            ("POST", loc + r"/schedules/([^/:]+):pause", self._pause),
            ("POST", loc + r"/schedules/([^/:]+):resume", self._resume),
        ]
        return self._route(routes, method, path, query, body,
                           VertexError(404, f"The requested URL {path} was not found on this server."))

    # pipeline jobs -------------------------------------------------------------------------

    def _create_job(self, query, body, parent) -> dict:
        job_id = query.get("pipelineJobId", [""])[0] or f"job-{next(self._ids)}"
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,127}", job_id):
            raise VertexError(400, f"pipelineJobId {job_id!r} must match [a-z][a-z0-9-]{{0,127}}")
        name = f"{parent}/pipelineJobs/{job_id}"
        if name in self.pipeline_jobs:
            raise VertexError(409, f"PipelineJob {name} already exists")
        job = self._checked_job(body, "")
        now = _ts(_now())
        job.update({"name": name, "state": "PIPELINE_STATE_PENDING", "createTime": now, "updateTime": now})
        job.setdefault("displayName", job_id)
        self.pipeline_jobs[name] = job
        return job

    def _get_job(self, query, body, parent, job_id) -> dict:
        return self._known(self.pipeline_jobs, f"{parent}/pipelineJobs/{job_id}")

    def _checked_job(self, body: Any, where: str) -> dict:
        if not isinstance(body, dict):
            raise VertexError(400, f"{where or 'PipelineJob'}: request body must be a JSON object")
        _no_unknown(body, PIPELINE_JOB_FIELDS, where)
        spec = body.get("pipelineSpec")
        if spec is None:
            raise VertexError(400, f"{where}pipelineSpec is required")
        try:
            declared = check_pipeline_spec(spec)
        except ValueError as exc:
            raise VertexError(400, f"{where}pipelineSpec: {exc}") from None
        runtime = body.get("runtimeConfig") or {}
        _no_unknown(runtime, RUNTIME_CONFIG_FIELDS, f"{where}runtimeConfig.")
        output_dir = runtime.get("gcsOutputDirectory", "")
        if not output_dir and not spec.get("defaultPipelineRoot"):
            raise VertexError(400, "Pipeline root is not specified: set runtimeConfig.gcsOutputDirectory "
                                   "or the pipeline's defaultPipelineRoot")
        if output_dir and not output_dir.startswith("gs://"):
            raise VertexError(400, f"gcsOutputDirectory {output_dir!r} must be a gs:// URI")
        try:
            check_parameters(declared, runtime.get("parameterValues") or {})
        except ValueError as exc:
            raise VertexError(400, f"{where}runtimeConfig.parameterValues: {exc}") from None
        display = body.get("displayName", "")
        if len(display) > 128:
            raise VertexError(400, f"{where}displayName is longer than 128 characters")
        return json.loads(json.dumps(body))

    # schedules -----------------------------------------------------------------------------

    def _create_schedule(self, query, body, parent) -> dict:
        if not isinstance(body, dict):
            raise VertexError(400, "request body must be a Schedule object")
        _no_unknown(body, SCHEDULE_FIELDS, "")
        if not (body.get("displayName") or "").strip():
            raise VertexError(400, "Schedule.displayName is required")
        try:
            check_unix_cron(body.get("cron") or "")
        except ValueError as exc:
            raise VertexError(400, f"Schedule.cron {body.get('cron')!r} is invalid: {exc}") from None
        try:
            concurrency = int(body.get("maxConcurrentRunCount"))
        except (TypeError, ValueError):
            raise VertexError(400, "Schedule.maxConcurrentRunCount is required") from None
        if concurrency < 1:
            raise VertexError(400, f"Schedule.maxConcurrentRunCount must be > 0, got {concurrency}")
        request = body.get("createPipelineJobRequest")
        if not isinstance(request, dict):
            raise VertexError(400, "Schedule needs createPipelineJobRequest")
        _no_unknown(request, {"parent", "pipelineJob", "pipelineJobId"}, "createPipelineJobRequest.")
        if request.get("parent") != parent:
            raise VertexError(400, f"createPipelineJobRequest.parent {request.get('parent')!r} must be {parent!r}")
        self._checked_job(request.get("pipelineJob"), "createPipelineJobRequest.pipelineJob.")
        now = _now()
        name = f"{parent}/schedules/{next(self._ids)}"
        schedule = json.loads(json.dumps(body))
        schedule.update({
            "name": name, "state": "ACTIVE", "createTime": _ts(now), "updateTime": _ts(now),
            "startTime": body.get("startTime") or _ts(now), "nextRunTime": _ts(now + timedelta(hours=1)),
            "maxConcurrentRunCount": str(concurrency), "catchUp": bool(body.get("catchUp")),
            "startedRunCount": "0",
        })
        self.schedules[name] = schedule
        return schedule

    def _list_schedules(self, query, body, parent) -> dict:
        size = int(query.get("pageSize", ["0"])[0] or 0)
        size = min(size if size > 0 else 100, self.max_page_size)
        token = query.get("pageToken", [""])[0]
        start = 0
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                start = int(decoded["offset"]) if decoded["parent"] == parent else -1
            except (ValueError, KeyError, TypeError):
                start = -1
            if start < 0:
                raise VertexError(400, f"Invalid page token {token!r}")
        items = [s for n, s in self.schedules.items() if n.startswith(parent + "/")]
        answer: dict = {}
        if items[start:start + size]:
            answer["schedules"] = items[start:start + size]
        if start + size < len(items):
            answer["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"parent": parent, "offset": start + size}).encode()).decode()
        return answer

    def _get_schedule(self, query, body, parent, sid) -> dict:
        return self._known(self.schedules, f"{parent}/schedules/{sid}")

    def _delete_schedule(self, query, body, parent, sid) -> dict:
        name = f"{parent}/schedules/{sid}"
        self._known(self.schedules, name)
        del self.schedules[name]
        return {"name": f"{name}/operations/{next(self._ids)}", "done": True,
                "metadata": {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata"},
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}

    def _pause(self, query, body, parent, sid) -> dict:
        schedule = self._known(self.schedules, f"{parent}/schedules/{sid}")
        if body:
            raise VertexError(400, "PauseScheduleRequest has no fields: the body must be empty")
        if schedule["state"] != "ACTIVE":
            raise VertexError(400, f"Cannot pause schedule {schedule['name']} in state {schedule['state']}",
                              "FAILED_PRECONDITION")
        schedule.update({"state": "PAUSED", "lastPauseTime": _ts(_now()), "updateTime": _ts(_now())})
        schedule.pop("nextRunTime", None)
        return {}

    def _resume(self, query, body, parent, sid) -> dict:
        schedule = self._known(self.schedules, f"{parent}/schedules/{sid}")
        _no_unknown(body or {}, {"catchUp"}, "ResumeScheduleRequest.")
        if schedule["state"] != "PAUSED":
            raise VertexError(400, f"Cannot resume schedule {schedule['name']} in state {schedule['state']}",
                              "FAILED_PRECONDITION")
        schedule.update({"state": "ACTIVE", "lastResumeTime": _ts(_now()), "updateTime": _ts(_now()),
                         "nextRunTime": _ts(_now() + timedelta(hours=1))})
        if body and "catchUp" in body:
            schedule["catchUp"] = bool(body["catchUp"])
        return {}

    @staticmethod
    def _known(table: dict, name: str) -> dict:
        if name not in table:
            raise VertexError(404, f"{name} not found")
        return table[name]


def _no_unknown(body: dict, known: set, where: str) -> None:
    if not isinstance(body, dict):
        raise VertexError(400, f"{where or 'body'} must be an object")
    for key in body:
        if key not in known:
            raise VertexError(400, f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': '
                                   "Cannot find field.")


class _Handler(JsonApiHandler):
    fake: FakeVertexServer
    json_content_type = "application/json; charset=UTF-8"

    def _answer(self, path: str, query: dict, body: Any, bad_json: bool) -> tuple[int, dict]:
        try:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or (self.fake.token is not None and auth != f"Bearer {self.fake.token}"):
                raise VertexError(401, "Request is missing required authentication credential. "
                                       "Expected OAuth 2 access token.")
            if bad_json:
                raise VertexError(400, "Invalid JSON payload received.")
            return 200, self.fake.handle(self.command, path, query, body)
        except VertexError as exc:
            return exc.code, {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}
