"""A fake Vertex AI REST API (v1) for pipeline jobs and schedules, as google-cloud-aiplatform calls it.

Serves on 127.0.0.1 and an ephemeral port what the SDK's REST transport
(``aiplatform.init(api_transport="rest", api_endpoint="http://127.0.0.1:PORT")``) sends for
``PipelineJob`` and ``PipelineJobSchedule``, with the shapes of the public v1 REST reference
(camelCase JSON, int64 as strings, RFC 3339 times, ``{"error": {"code", "message", "status"}}``):

- ``POST /v1/projects/P/locations/L/pipelineJobs?pipelineJobId=ID`` -> PipelineJob (``name``,
  ``state`` ``PIPELINE_STATE_PENDING``, ``createTime``, ...); ``GET .../pipelineJobs/ID``;
  ``POST .../pipelineJobs/ID:cancel`` (``{}``);
- ``POST /v1/projects/P/locations/L/schedules`` -> Schedule (``name`` = ``.../schedules/<number>``,
  ``state`` ``ACTIVE``, ``nextRunTime``); ``GET .../schedules`` (``pageSize`` capped at
  ``max_page_size``, ``pageToken`` -> ``schedules`` + ``nextPageToken``); ``GET .../schedules/ID``;
  ``POST .../schedules/ID:pause`` and ``:resume``; ``DELETE .../schedules/ID`` -> a long-running
  Operation, polled at ``GET /ui/{operation name}`` (the binding the SDK's operations client
  picks first) or ``/v1/{operation name}``;
- ``$alt=json;enum-encoding=int`` (which the SDK always sends) makes enum fields answer as
  numbers, as the real service does.

Refused the way the real service refuses (400 INVALID_ARGUMENT unless said otherwise):

- a request without ``Authorization: Bearer ...`` (401 UNAUTHENTICATED), or with another token
  than ``token`` when one is given; ``allow_anonymous=True`` accepts requests without one;
- unknown fields in a body ("Unknown name");
- a PipelineJob without ``pipelineSpec`` (or ``templateUri``), with an incomplete spec (see
  :func:`tests.fakes.kfp_api_server.check_pipeline_spec`), without a ``gs://``
  ``runtimeConfig.gcsOutputDirectory``, with ``parameterValues`` that are not declared root
  inputs of the declared type, the deprecated ``parameters`` on a schema >= 2.1.0, a
  ``displayName`` over 128 characters, bad ``labels``, a ``network`` that is not
  ``projects/NUMBER/global/networks/NAME``, a bad ``serviceAccount``; a ``pipelineJobId`` not
  matching ``[a-z][-a-z0-9]{0,127}``, or already taken (409 ALREADY_EXISTS);
- a Schedule without ``displayName``, without a valid 5-field ``cron`` (an optional ``TZ=`` /
  ``CRON_TZ=`` prefix naming a real time zone), with ``maxConcurrentRunCount`` < 1, an
  ``endTime`` not after ``startTime``, or a ``createPipelineJobRequest`` whose ``parent`` is
  not the schedule's own location or whose job is refused as above;
- pausing a schedule that is not ACTIVE, resuming one that is not PAUSED, cancelling a job
  that already ended (400 FAILED_PRECONDITION);
- a schedule id that is not a number; unknown ids and other projects' / locations'
  resources (404 NOT_FOUND).

A cancelled job is ``PIPELINE_STATE_CANCELLING`` and becomes ``PIPELINE_STATE_CANCELLED`` when
next read; :meth:`FakeVertexServer.set_job_state` moves a job on as the service would.
Every request is recorded (:attr:`FakeVertexServer.requests`).

:func:`loopback_only` is the guard tests wrap around the SDK: it fails a test that lets the
SDK reach anything but 127.0.0.1 (a metadata server, Cloud Storage, Resource Manager);
:func:`sdk_sandbox` adds a recorder in place of the SDK's pipeline-root bucket check.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import itertools
import json
import re
import socket
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Optional

from tests.fakes.http_base import JsonApiFake, JsonApiHandler
from tests.fakes.kfp_api_server import check_parameters, check_pipeline_spec

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}

#: Fields a create request may carry (output-only ones are accepted and overwritten, as the
#: service ignores them).
PIPELINE_JOB_FIELDS = {"displayName", "pipelineSpec", "runtimeConfig", "labels", "serviceAccount", "network",
                       "encryptionSpec", "templateUri", "reservedIpRanges", "pscInterfaceConfig",
                       "preflightValidations", "name", "state", "createTime", "startTime", "endTime",
                       "updateTime", "jobDetail", "error", "templateMetadata", "scheduleName"}
RUNTIME_CONFIG_FIELDS = {"gcsOutputDirectory", "parameterValues", "parameters", "failurePolicy",
                         "inputArtifacts", "defaultRuntime"}
SCHEDULE_FIELDS = {"displayName", "cron", "maxConcurrentRunCount", "maxConcurrentActiveRunCount", "catchUp",
                   "allowQueueing", "startTime", "endTime", "maxRunCount", "createPipelineJobRequest",
                   "createNotebookExecutionJobRequest", "name", "state", "createTime", "updateTime",
                   "nextRunTime", "lastPauseTime", "lastResumeTime", "startedRunCount",
                   "lastScheduledRunResponse"}

#: Enum values as the v1 protos number them (answered as numbers under enum-encoding=int).
PIPELINE_STATES = ["PIPELINE_STATE_UNSPECIFIED", "PIPELINE_STATE_QUEUED", "PIPELINE_STATE_PENDING",
                   "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED",
                   "PIPELINE_STATE_CANCELLING", "PIPELINE_STATE_CANCELLED", "PIPELINE_STATE_PAUSED"]
SCHEDULE_STATES = ["STATE_UNSPECIFIED", "ACTIVE", "PAUSED", "COMPLETED"]
_JOB_ENDED = {"PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED"}

_JOB_ID = re.compile(r"[a-z][-a-z0-9]{0,127}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_NETWORK = re.compile(r"projects/\d+/global/networks/[a-z]([-a-z0-9]*[a-z0-9])?")
_SERVICE_ACCOUNT = re.compile(r"[a-z0-9-]+@[a-z0-9.-]+\.iam\.gserviceaccount\.com"
                              r"|\d+-compute@developer\.gserviceaccount\.com")


class VertexError(Exception):
    """Raised inside a handler; answered as Google's JSON error body."""

    def __init__(self, code: int, message: str, status: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, "UNKNOWN")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(text: str, field: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise VertexError(400, f"{field} {text!r} is not an RFC 3339 timestamp") from None


# ---- unix cron (5 fields) as Cloud Scheduler / Vertex read it --------------------------------

_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_CRON5 = [("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
          ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS)]


def check_unix_cron(expression: str) -> None:
    """Raise ValueError unless ``expression`` is ``[TZ=zone] m h dom mon dow`` with a real zone."""
    fields = expression.split()
    prefix = re.fullmatch(r"(?:CRON_TZ|TZ)=(\S+)", fields[0]) if fields else None
    if prefix:
        try:
            zoneinfo.ZoneInfo(prefix.group(1))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {prefix.group(1)!r}") from None
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
    """The fake; a context manager that starts and stops it on a background thread.

    Args:
        token: the bearer token every request must carry (None: any token).
        max_page_size: the most schedules one list page holds (small: tests follow pages).
        allow_anonymous: also accept requests without credentials (``AnonymousCredentials``).
    """

    def __init__(self, token: Optional[str] = None, max_page_size: int = 100,
                 allow_anonymous: bool = False) -> None:
        super().__init__(token, max_page_size)
        self.allow_anonymous = allow_anonymous
        self.pipeline_jobs: dict[str, dict] = {}  # full resource name -> PipelineJob (enums as names)
        self.schedules: dict[str, dict] = {}  # full resource name -> Schedule
        self.operations: dict[str, dict] = {}  # full operation name -> Operation
        self._ids = itertools.count(1000000000000000001)

    def start(self) -> "FakeVertexServer":
        return self._start(_Handler)

    def set_job_state(self, job: str, state: str) -> None:
        """Move a job (id or full name) to ``state``, as the service does while it runs."""
        if state not in PIPELINE_STATES:
            raise ValueError(f"unknown PipelineState {state!r}")
        with self._lock:
            name = job if "/" in job else next(n for n in self.pipeline_jobs if n.endswith(f"/pipelineJobs/{job}"))
            self.pipeline_jobs[name].update({"state": state, "updateTime": _ts(_now())})

    # routing -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: Any) -> dict:
        loc = r"/v1/(projects/[^/]+/locations/[^/]+)"
        routes = [
            ("POST", loc + r"/pipelineJobs", self._create_job),
            ("GET", loc + r"/pipelineJobs/([^/:]+)", self._get_job),
            ("POST", loc + r"/pipelineJobs/([^/:]+):cancel", self._cancel_job),
            ("POST", loc + r"/schedules", self._create_schedule),
            ("GET", loc + r"/schedules", self._list_schedules),
            ("GET", loc + r"/schedules/([^/:]+)", self._get_schedule),
            ("DELETE", loc + r"/schedules/([^/:]+)", self._delete_schedule),
            ("POST", loc + r"/schedules/([^/:]+):pause", self._pause),
            ("POST", loc + r"/schedules/([^/:]+):resume", self._resume),
            # The SDK's operations client polls the /ui/ binding (listed first in its http
            # rules); the service answers it and /v1/ alike.
            ("GET", r"/(?:v1|ui)/(projects/[^/]+/locations/[^/]+/.+/operations/[^/:]+)", self._get_operation),
        ]
        answer = self._route(routes, method, path, query, body,
                             VertexError(404, f"The requested URL {path} was not found on this server."))
        return _encode_enums(answer) if "enum-encoding=int" in query.get("$alt", [""])[0] else answer

    # pipeline jobs -------------------------------------------------------------------------

    def _create_job(self, query, body, parent) -> dict:
        job_id = query.get("pipelineJobId", [""])[0] or f"job-{next(self._ids)}"
        if not _JOB_ID.fullmatch(job_id):
            raise VertexError(400, f"pipelineJobId {job_id!r} must match [a-z][-a-z0-9]{{0,127}}")
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
        job = self._known(self.pipeline_jobs, f"{parent}/pipelineJobs/{job_id}")
        if job["state"] == "PIPELINE_STATE_CANCELLING":  # the cancellation has gone through since
            job.update({"state": "PIPELINE_STATE_CANCELLED", "endTime": _ts(_now()), "updateTime": _ts(_now())})
        return job

    def _cancel_job(self, query, body, parent, job_id) -> dict:
        job = self._known(self.pipeline_jobs, f"{parent}/pipelineJobs/{job_id}")
        _no_unknown(body or {}, set(), "CancelPipelineJobRequest.")
        if job["state"] in _JOB_ENDED or job["state"] == "PIPELINE_STATE_CANCELLING":
            raise VertexError(400, f"Cannot cancel PipelineJob {job['name']} in state {job['state']}",
                              "FAILED_PRECONDITION")
        job.update({"state": "PIPELINE_STATE_CANCELLING", "updateTime": _ts(_now())})
        return {}

    def _checked_job(self, body: Any, where: str) -> dict:
        """The PipelineJob ``body`` as stored, after the service's checks (``where``: field path prefix)."""
        if not isinstance(body, dict):
            raise VertexError(400, f"{where or 'PipelineJob'}: request body must be a JSON object")
        _no_unknown(body, PIPELINE_JOB_FIELDS, where)
        spec = body.get("pipelineSpec")
        if spec is None and not body.get("templateUri"):
            raise VertexError(400, f"{where}pipelineSpec is required (or a templateUri)")
        declared = {}
        if spec is not None:
            try:
                declared = check_pipeline_spec(spec)
            except ValueError as exc:
                raise VertexError(400, f"{where}pipelineSpec: {exc}") from None
        self._check_runtime_config(body.get("runtimeConfig"), spec or {}, declared, where)
        if len(body.get("displayName", "")) > 128:
            raise VertexError(400, f"{where}displayName is longer than 128 characters")
        _check_labels(body.get("labels") or {}, where)
        if body.get("network") and not _NETWORK.fullmatch(body["network"]):
            raise VertexError(400, f"{where}network {body['network']!r} must be "
                                   "projects/PROJECT_NUMBER/global/networks/NAME")
        if body.get("serviceAccount") and not _SERVICE_ACCOUNT.fullmatch(body["serviceAccount"]):
            raise VertexError(400, f"{where}serviceAccount {body['serviceAccount']!r} is not a service account email")
        return json.loads(json.dumps(body))

    @staticmethod
    def _check_runtime_config(runtime: Any, spec: dict, declared: dict, where: str) -> None:
        runtime = runtime or {}
        _no_unknown(runtime, RUNTIME_CONFIG_FIELDS, f"{where}runtimeConfig.")
        output_dir = runtime.get("gcsOutputDirectory", "")
        if not output_dir:
            raise VertexError(400, f"{where}runtimeConfig.gcsOutputDirectory is required "
                                   "(the pipeline root, gs://BUCKET/PREFIX)")
        if not re.fullmatch(r"gs://[a-z0-9][-_.a-z0-9]{1,221}[a-z0-9](/.*)?", output_dir):
            raise VertexError(400, f"{where}runtimeConfig.gcsOutputDirectory {output_dir!r} must be a "
                                   "gs://BUCKET[/PREFIX] URI with a valid bucket name (3-222 characters)")
        if runtime.get("parameters") and spec.get("schemaVersion", "") >= "2.1.0":
            raise VertexError(400, f"{where}runtimeConfig.parameters is deprecated for schemaVersion "
                                   f"{spec['schemaVersion']}: use parameterValues")
        values = _whole_numbers_as_ints(runtime.get("parameterValues") or {}, declared)
        try:
            check_parameters(declared, values)
        except ValueError as exc:
            raise VertexError(400, f"{where}runtimeConfig.parameterValues: {exc}") from None

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
        now = _now()
        start = _parse_ts(body["startTime"], "Schedule.startTime") if body.get("startTime") else now
        if body.get("endTime") and _parse_ts(body["endTime"], "Schedule.endTime") <= start:
            raise VertexError(400, "Schedule.endTime must be after Schedule.startTime")
        request = body.get("createPipelineJobRequest")
        if not isinstance(request, dict):
            raise VertexError(400, "Schedule needs createPipelineJobRequest")
        _no_unknown(request, {"parent", "pipelineJob", "pipelineJobId"}, "createPipelineJobRequest.")
        if request.get("parent") != parent:
            raise VertexError(400, f"createPipelineJobRequest.parent {request.get('parent')!r} must be {parent!r}")
        self._checked_job(request.get("pipelineJob"), "createPipelineJobRequest.pipelineJob.")
        name = f"{parent}/schedules/{next(self._ids)}"
        schedule = json.loads(json.dumps(body))
        schedule.update({
            "name": name, "state": "ACTIVE", "createTime": _ts(now), "updateTime": _ts(now),
            "startTime": _ts(start), "nextRunTime": _ts(max(start, now) + timedelta(hours=1)),
            "maxConcurrentRunCount": str(concurrency), "startedRunCount": "0",
        })
        self.schedules[name] = schedule
        return schedule

    def _list_schedules(self, query, body, parent) -> dict:
        size = int(query.get("pageSize", ["0"])[0] or 0)
        size = min(size if size > 0 else 100, self.max_page_size)
        start = self._page_start(query.get("pageToken", [""])[0], parent)
        items = [s for n, s in self.schedules.items() if n.startswith(parent + "/")]
        answer: dict = {}
        if items[start:start + size]:
            answer["schedules"] = items[start:start + size]
        if start + size < len(items):
            answer["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"parent": parent, "offset": start + size}).encode()).decode()
        return answer

    @staticmethod
    def _page_start(token: str, parent: str) -> int:
        """The offset a page token this fake issued for ``parent`` stands for (400 for others)."""
        if not token:
            return 0
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
            if decoded["parent"] == parent:
                return int(decoded["offset"])
        except (ValueError, KeyError, TypeError):
            pass
        raise VertexError(400, f"Invalid page token {token!r}")

    def _get_schedule(self, query, body, parent, sid) -> dict:
        return self._schedule(parent, sid)

    def _delete_schedule(self, query, body, parent, sid) -> dict:
        schedule = self._schedule(parent, sid)
        del self.schedules[schedule["name"]]
        # Deleted at once; the answer says "not done yet" like the service's usually does, so
        # the client has to poll the operation (which is done by then).
        name = f"{schedule['name']}/operations/{next(self._ids)}"
        metadata = {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                    "genericMetadata": {"createTime": _ts(_now()), "updateTime": _ts(_now())}}
        self.operations[name] = {"name": name, "metadata": metadata, "done": True,
                                 "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
        return {"name": name, "metadata": metadata}

    def _get_operation(self, query, body, name) -> dict:
        return self._known(self.operations, name)

    def _pause(self, query, body, parent, sid) -> dict:
        schedule = self._schedule(parent, sid)
        _no_unknown(body or {}, set(), "PauseScheduleRequest.")
        if schedule["state"] != "ACTIVE":
            raise VertexError(400, f"Cannot pause schedule {schedule['name']} in state {schedule['state']}",
                              "FAILED_PRECONDITION")
        schedule.update({"state": "PAUSED", "lastPauseTime": _ts(_now()), "updateTime": _ts(_now())})
        schedule.pop("nextRunTime", None)
        return {}

    def _resume(self, query, body, parent, sid) -> dict:
        schedule = self._schedule(parent, sid)
        _no_unknown(body or {}, {"catchUp"}, "ResumeScheduleRequest.")
        if schedule["state"] != "PAUSED":
            raise VertexError(400, f"Cannot resume schedule {schedule['name']} in state {schedule['state']}",
                              "FAILED_PRECONDITION")
        schedule.update({"state": "ACTIVE", "lastResumeTime": _ts(_now()), "updateTime": _ts(_now()),
                         "nextRunTime": _ts(_now() + timedelta(hours=1))})
        if body and "catchUp" in body:  # the request's catchUp also updates the schedule's
            schedule["catchUp"] = bool(body["catchUp"])
        return {}

    def _schedule(self, parent: str, sid: str) -> dict:
        if not sid.isdigit():
            raise VertexError(400, f"Invalid Schedule resource name {parent}/schedules/{sid}: "
                                   "the schedule id must be a number")
        return self._known(self.schedules, f"{parent}/schedules/{sid}")

    @staticmethod
    def _known(table: dict, name: str) -> dict:
        if name not in table:
            raise VertexError(404, f"{name} not found")
        return table[name]


def _no_unknown(body: Any, known: set, where: str) -> None:
    if not isinstance(body, dict):
        raise VertexError(400, f"{where or 'body'} must be an object")
    for key in body:
        if key not in known:
            raise VertexError(400, f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': '
                                   "Cannot find field.")


def _check_labels(labels: Any, where: str) -> None:
    """Label keys and values as Google Cloud allows them (lower case, <= 63 characters, <= 64 labels)."""
    if not isinstance(labels, dict) or len(labels) > 64:
        raise VertexError(400, f"{where}labels must be an object of at most 64 labels")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key) or not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            raise VertexError(400, f"{where}labels: invalid label {key!r}: {value!r} (lower-case letters, "
                                   "digits, '_' and '-', at most 63 characters; keys start with a letter)")


def _whole_numbers_as_ints(values: Any, declared: dict) -> Any:
    """JSON from a protobuf Value has no integers (3 arrives as 3.0): read whole numbers as ints
    for integer parameters, as the service does."""
    if not isinstance(values, dict):
        return values

    def fixed(name: str, value: Any) -> Any:
        integer = declared.get(name, {}).get("parameterType") == "NUMBER_INTEGER"
        return int(value) if integer and isinstance(value, float) and value.is_integer() else value

    return {name: fixed(name, value) for name, value in values.items()}


def _encode_enums(answer: dict) -> dict:
    """The answer with ``state`` fields as enum numbers (``$alt=json;enum-encoding=int``)."""
    def encode(resource: dict) -> dict:
        state = resource.get("state")
        if state in PIPELINE_STATES:
            return {**resource, "state": PIPELINE_STATES.index(state)}
        if state in SCHEDULE_STATES:
            return {**resource, "state": SCHEDULE_STATES.index(state)}
        return resource

    if "schedules" in answer:
        return {**answer, "schedules": [encode(s) for s in answer["schedules"]]}
    return encode(answer)


class _Handler(JsonApiHandler):
    fake: FakeVertexServer
    json_content_type = "application/json; charset=UTF-8"

    def _answer(self, path: str, query: dict, body: Any, bad_json: bool) -> tuple[int, dict]:
        try:
            self._check_auth()
            if bad_json:
                raise VertexError(400, "Invalid JSON payload received.")
            return 200, self.fake.handle(self.command, path, query, body)
        except VertexError as exc:
            return exc.code, {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}

    def _check_auth(self) -> None:
        auth = self.headers.get("Authorization", "")
        if not auth and self.fake.allow_anonymous:
            return
        if not auth.startswith("Bearer ") or (self.fake.token is not None and auth != f"Bearer {self.fake.token}"):
            raise VertexError(401, "Request is missing required authentication credential. "
                                   "Expected OAuth 2 access token.")


# ---- keeping the SDK on the loopback interface --------------------------------------------------

@contextlib.contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse, and list, every attempt to open a connection to anything but the loopback interface.

    Yields the list of refused destinations: a test asserts it is empty, because the SDK
    swallows some failures (its pipeline-root bucket check logs and carries on) and a refused
    connection alone would not fail the test. gRPC channels are refused outright: the code
    under test uses the REST transport only, and gRPC's own sockets would bypass this guard.
    """
    import google.api_core.grpc_helpers as grpc_helpers

    refused: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    real_channel = grpc_helpers.create_channel

    def is_loopback(host: Any) -> bool:
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return host == "localhost"

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            refused.append(f"connect {address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"test guard: no network beyond 127.0.0.1 (tried {address[0]})")
        return real_connect(sock, address)

    def is_ip_literal(host: Any) -> bool:  # resolving one asks no DNS server; connect() decides
        try:
            ipaddress.ip_address(str(host).split("%")[0])
            return True
        except ValueError:
            return False

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback(host) and not is_ip_literal(host):
            refused.append(f"resolve {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no DNS for {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def create_channel(target, *args, **kwargs):
        refused.append(f"grpc {target}")
        raise ConnectionRefusedError(f"test guard: no gRPC channel to {target}")

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
    grpc_helpers.create_channel = create_channel
    try:
        yield refused
    finally:
        socket.socket.connect, socket.getaddrinfo = real_connect, real_getaddrinfo
        grpc_helpers.create_channel = real_channel


@dataclass
class SdkSandbox:
    """What :func:`sdk_sandbox` saw: refused destinations, and the SDK's pipeline-root bucket checks
    (the keyword arguments of each)."""

    refused: list[str] = field(default_factory=list)
    bucket_checks: list[dict] = field(default_factory=list)


@contextlib.contextmanager
def sdk_sandbox() -> Iterator[SdkSandbox]:
    """:func:`loopback_only`, with the SDK's pipeline-root bucket check recorded instead of run.

    ``PipelineJob.submit()`` gets or creates the pipeline root's bucket and checks that the
    bucket belongs to the project through Resource Manager (gRPC, to googleapis.com): nothing
    a local fake can answer, and it would only log its failure. The tests check that it is
    asked about the right bucket, project and credentials.
    """
    from unittest import mock

    from google.cloud.aiplatform.utils import gcs_utils

    sandbox = SdkSandbox()

    def record(**kwargs):
        sandbox.bucket_checks.append(kwargs)
        return kwargs.get("output_artifacts_gcs_dir")

    with loopback_only() as refused, mock.patch.object(
            gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist", record):
        sandbox.refused = refused
        yield sandbox
