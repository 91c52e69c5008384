"""A fake Kubeflow Pipelines v2beta1 REST API server for the real ``kfp.Client`` (kfp 2.17).

It serves, on 127.0.0.1 and an ephemeral port, the endpoints the client calls for one-off
runs and recurring runs, with the JSON shapes ``kfp_server_api`` serialises and parses:

- ``GET  /apis/v2beta1/healthz``                          -> ``{multi_user, pipeline_store}``
- ``GET  /apis/v2beta1/experiments`` (``filter``, ``namespace``, ``page_size``, ``page_token``),
  ``POST /apis/v2beta1/experiments``, ``GET /apis/v2beta1/experiments/{id}``
- ``POST /apis/v2beta1/runs``, ``GET /apis/v2beta1/runs``, ``GET /apis/v2beta1/runs/{id}``,
  ``POST /apis/v2beta1/runs/{id}:terminate``
- ``POST /apis/v2beta1/recurringruns``, ``GET /apis/v2beta1/recurringruns`` (list key
  ``recurringRuns``, as the client's model maps it), ``GET|DELETE .../recurringruns/{id}``,
  ``POST .../recurringruns/{id}:enable`` and ``:disable``

and checks requests the way the real server would refuse them (HTTP 400 ``InvalidArgument``,
404 ``NotFound``, 409 ``AlreadyExists``, 401 ``Unauthenticated``, with grpc-gateway's
``{"code", "message", "details"}`` body):

- ``pipeline_spec`` parses as a ``PipelineSpec`` proto and is complete: ``pipelineInfo.name``,
  ``schemaVersion``, ``root.dag.tasks`` whose ``componentRef`` names exist in ``components``,
  and every component's ``executorLabel`` in ``deploymentSpec.executors``;
- ``runtime_config.parameters`` only names parameters declared in the spec's root
  ``inputDefinitions``, with values of the declared type; required ones are present;
- the experiment id exists; display names are not empty;
- a recurring run has exactly one trigger; a cron trigger has the 6 fields of the server's
  robfig/cron parser (seconds first) and every field parses. (The real server would take a
  5-field cron and read its first field as seconds, firing hourly instead of daily; the fake
  refuses it so that mistake fails loudly.) ``max_concurrency`` is 1..10, ``mode`` is
  ``ENABLE`` or ``DISABLE``;
- terminating a run moves a ``PENDING`` or ``RUNNING`` one to ``CANCELING`` (it reads back as
  ``CANCELED`` once the server's persistence agent has caught up: on the next read here); any
  other state is refused with 400, "Failed to terminate run ID. Row not found." as the real
  run store answers when its conditional update matches no row;
- unknown run / recurring run / experiment ids answer 404; page tokens must be ones it issued;
- with ``token=...`` every request but healthz must carry ``Authorization: Bearer <token>``.

Every request is recorded (:attr:`FakeKfpServer.requests`) for assertions. ``max_page_size``
caps list pages so tests exercise pagination.

Use::

    with FakeKfpServer() as kfp_server:
        client = kfp.Client(host=kfp_server.url)
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from google.protobuf import json_format

from tests.fakes.http_base import JsonApiFake, JsonApiHandler

# grpc status codes used in error bodies
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNAUTHENTICATED = 3, 5, 6, 16
_HTTP = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, UNAUTHENTICATED: 401}

#: ``V2beta1RuntimeState`` values a run can hold.
RUNTIME_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "SKIPPED", "FAILED", "CANCELING", "CANCELED", "PAUSED")


class ApiError(Exception):
    """Raised inside a handler: answered as grpc-gateway's error JSON."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- pipeline spec checks (shared with the Vertex fake) -------------------------------------

def check_pipeline_spec(spec: Any) -> dict:
    """Check a compiled pipeline spec like the servers do; returns the root input parameters.

    Raises:
        ValueError: saying what is wrong.
    """
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not isinstance(spec, dict) or not spec:
        raise ValueError("pipeline spec is empty or not an object")
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as exc:
        raise ValueError(f"pipeline spec does not parse: {exc}") from None
    if not spec.get("pipelineInfo", {}).get("name"):
        raise ValueError("pipeline spec has no pipelineInfo.name")
    if not spec.get("schemaVersion"):
        raise ValueError("pipeline spec has no schemaVersion")
    tasks = spec.get("root", {}).get("dag", {}).get("tasks", {})
    if not tasks:
        raise ValueError("pipeline spec has no root.dag.tasks")
    components = spec.get("components", {})
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for task_name, task in tasks.items():
        ref = task.get("componentRef", {}).get("name")
        if ref not in components:
            raise ValueError(f"task {task_name!r} refers to unknown component {ref!r}")
    for comp_name, comp in components.items():
        label = comp.get("executorLabel")
        if label and label not in executors:
            raise ValueError(f"component {comp_name!r} refers to unknown executor {label!r}")
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


_PARAM_TYPES = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}


def check_parameters(declared: dict, values: dict) -> None:
    """Values must name declared root parameters, have their type, and cover required ones."""
    if not isinstance(values, dict):
        raise ValueError("parameters must be an object")
    for name, value in values.items():
        if name not in declared:
            raise ValueError(f"parameter {name!r} is not an input of the pipeline "
                             f"(inputs: {', '.join(sorted(declared)) or 'none'})")
        kind = declared[name].get("parameterType", "STRING")
        allowed = _PARAM_TYPES.get(kind, (object,))
        wrong_bool = isinstance(value, bool) and kind in ("NUMBER_INTEGER", "NUMBER_DOUBLE")
        if not isinstance(value, allowed) or wrong_bool:
            raise ValueError(f"parameter {name!r} is {kind} but got {type(value).__name__} {value!r}")
    for name, definition in declared.items():
        required = not definition.get("isOptional") and "defaultValue" not in definition
        if required and name not in values:
            raise ValueError(f"required parameter {name!r} is missing")


# ---- cron as the KFP backend (robfig/cron, seconds first) parses it -------------------------

_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_CRON6 = [("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}),
          ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _DAYS)]
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def check_kfp_cron(expression: str) -> None:
    """Raise ValueError unless ``expression`` is a 6-field robfig/cron expression (or a descriptor)."""
    text = expression.strip()
    if text in _DESCRIPTORS or re.fullmatch(r"@every \d+[smh]", text):
        return
    fields = text.split()
    if len(fields) != 6:
        raise ValueError(f"expected exactly 6 fields, found {len(fields)}: {expression!r}")
    for token, (name, low, high, names) in zip(fields, _CRON6):
        for part in token.split(","):
            _check_cron_part(part, name, low, high, names, allow_question=name.startswith("day of"))


def _check_cron_part(part: str, name: str, low: int, high: int, names: dict, allow_question: bool) -> None:
    base, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise ValueError(f"{name}: bad step {step!r}")
    if base in ("*",) or (allow_question and base == "?"):
        return
    bounds = base.split("-")
    if len(bounds) > 2 or not all(bounds):
        raise ValueError(f"{name}: cannot parse {part!r}")
    values = []
    for bound in bounds:
        value = int(bound) if bound.isdigit() else names.get(bound.upper())
        if value is None:
            raise ValueError(f"{name}: failed to parse int from {bound!r}")
        if not low <= value <= high:
            raise ValueError(f"{name}: value ({value}) out of range [{low}, {high}]")
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        raise ValueError(f"{name}: beginning of range ({values[0]}) beyond end of range ({values[1]})")


# ---- the server -----------------------------------------------------------------------------

class FakeKfpServer(JsonApiFake):
    """The fake server; a context manager that starts and stops it on a background thread."""

    def __init__(self, token: Optional[str] = None, max_page_size: int = 200) -> None:
        super().__init__(token, max_page_size)
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}

    def start(self) -> "FakeKfpServer":
        return self._start(_Handler)

    # routing -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: Any) -> tuple[int, dict]:
        routes = [
            ("GET", r"/apis/v2beta1/healthz", self._healthz),
            ("GET", r"/apis/v2beta1/experiments", self._list_experiments),
            ("POST", r"/apis/v2beta1/experiments", self._create_experiment),
            ("GET", r"/apis/v2beta1/experiments/([^/:]+)", self._get_experiment),
            ("POST", r"/apis/v2beta1/runs", self._create_run),
            ("GET", r"/apis/v2beta1/runs", self._list_runs),
            ("GET", r"/apis/v2beta1/runs/([^/:]+)", self._get_run),
            ("POST", r"/apis/v2beta1/runs/([^/:]+):terminate", self._terminate_run),
            ("POST", r"/apis/v2beta1/recurringruns", self._create_recurring_run),
            ("GET", r"/apis/v2beta1/recurringruns", self._list_recurring_runs),
            ("GET", r"/apis/v2beta1/recurringruns/([^/:]+)", self._get_recurring_run),
            ("DELETE", r"/apis/v2beta1/recurringruns/([^/:]+)", self._delete_recurring_run),
            ("POST", r"/apis/v2beta1/recurringruns/([^/:]+):enable", self._enable_recurring_run),
            ("POST", r"/apis/v2beta1/recurringruns/([^/:]+):disable", self._disable_recurring_run),
        ]
        return 200, self._route(routes, method, path, query, body, ApiError(NOT_FOUND, f"Not Found: {method} {path}"))

    # healthz / experiments -----------------------------------------------------------------

    def _healthz(self, query, body) -> dict:
        return {"multi_user": False, "pipeline_store": "database"}

    def _create_experiment(self, query, body) -> dict:
        name = (body or {}).get("display_name") or ""
        if not name.strip():
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: Experiment display name is empty")
        if any(e["display_name"] == name for e in self.experiments.values()):
            raise ApiError(ALREADY_EXISTS, f"Already exist error: experiment {name!r} already exists")
        experiment_id = str(uuid.uuid4())
        experiment = {"experiment_id": experiment_id, "display_name": name, "created_at": now_rfc3339(),
                      "namespace": body.get("namespace") or "", "storage_state": "AVAILABLE"}
        if body.get("description"):
            experiment["description"] = body["description"]
        self.experiments[experiment_id] = experiment
        return experiment

    def _get_experiment(self, query, body, experiment_id) -> dict:
        return self._known(self.experiments, experiment_id, "experiment")

    def _list_experiments(self, query, body) -> dict:
        items = _apply_filter(list(self.experiments.values()), query.get("filter", [""])[0])
        return self._page(items, query, "experiments")

    # runs ----------------------------------------------------------------------------------

    def _create_run(self, query, body) -> dict:
        run = self._checked_run_body(body, kind="run")
        run.update({"run_id": str(uuid.uuid4()), "state": "PENDING", "storage_state": "AVAILABLE",
                    "created_at": now_rfc3339(), "scheduled_at": now_rfc3339()})
        self.runs[run["run_id"]] = run
        return run

    def set_run_state(self, run_id: str, state: str) -> None:
        """Move a run to ``state``, as the cluster does while it executes."""
        if state not in RUNTIME_STATES:
            raise ValueError(f"unknown V2beta1RuntimeState {state!r}")
        with self._lock:
            self._known(self.runs, run_id, "run")["state"] = state

    def _get_run(self, query, body, run_id) -> dict:
        run = self._known(self.runs, run_id, "run")
        if run["state"] == "CANCELING":  # the cancellation has gone through since
            run["state"] = "CANCELED"
        return run

    def _terminate_run(self, query, body, run_id) -> dict:
        run = self._known(self.runs, run_id, "run")
        if run["state"] not in ("PENDING", "RUNNING"):
            raise ApiError(INVALID_ARGUMENT, f"Failed to terminate run {run_id}. Row not found.")
        run["state"] = "CANCELING"
        return {}

    def _list_runs(self, query, body) -> dict:
        return self._list_in_experiment(self.runs, query, "runs")

    # recurring runs ------------------------------------------------------------------------

    def _create_recurring_run(self, query, body) -> dict:
        recurring = self._checked_run_body(body, kind="recurring run")
        trigger = body.get("trigger") or {}
        cron, periodic = trigger.get("cron_schedule"), trigger.get("periodic_schedule")
        if bool(cron) == bool(periodic):
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: a recurring run needs exactly one of "
                                             "trigger.cron_schedule or trigger.periodic_schedule")
        if cron:
            try:
                check_kfp_cron(cron.get("cron") or "")
            except ValueError as exc:
                raise ApiError(INVALID_ARGUMENT, f"Invalid input error: invalid cron schedule: {exc}") from None
        elif int(periodic.get("interval_second") or 0) < 1:
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: interval_second must be >= 1")
        try:
            concurrency = int(body.get("max_concurrency"))
        except (TypeError, ValueError):
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: max_concurrency must be an integer") from None
        if not 1 <= concurrency <= 10:
            raise ApiError(INVALID_ARGUMENT,
                           f"Invalid input error: max concurrency must be in [1, 10], got {concurrency}")
        mode = body.get("mode") or "MODE_UNSPECIFIED"
        if mode not in ("ENABLE", "DISABLE"):
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: mode must be ENABLE or DISABLE, got {mode}")
        recurring.update({
            "recurring_run_id": str(uuid.uuid4()), "trigger": trigger, "mode": mode,
            "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
            "max_concurrency": str(concurrency),  # int64 travels as a JSON string
            "no_catchup": bool(body.get("no_catchup")),
            "created_at": now_rfc3339(), "updated_at": now_rfc3339(),
        })
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return recurring

    def _get_recurring_run(self, query, body, rid) -> dict:
        return self._known(self.recurring_runs, rid, "recurring run")

    def _list_recurring_runs(self, query, body) -> dict:
        # The client's list model maps this field from camelCase "recurringRuns".
        return self._list_in_experiment(self.recurring_runs, query, "recurringRuns")

    def _delete_recurring_run(self, query, body, rid) -> dict:
        self._known(self.recurring_runs, rid, "recurring run")
        del self.recurring_runs[rid]
        return {}

    def _enable_recurring_run(self, query, body, rid) -> dict:
        return self._set_mode(rid, "ENABLE", "ENABLED")

    def _disable_recurring_run(self, query, body, rid) -> dict:
        return self._set_mode(rid, "DISABLE", "DISABLED")

    def _set_mode(self, rid: str, mode: str, status: str) -> dict:
        recurring = self._known(self.recurring_runs, rid, "recurring run")
        recurring.update({"mode": mode, "status": status, "updated_at": now_rfc3339()})
        return {}

    # shared checks ---------------------------------------------------------------------------

    def _checked_run_body(self, body: Any, kind: str) -> dict:
        if not isinstance(body, dict):
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: {kind} body must be an object")
        if not (body.get("display_name") or "").strip():
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: {kind} display name is empty")
        experiment_id = body.get("experiment_id") or ""
        if experiment_id and experiment_id not in self.experiments:
            raise ApiError(NOT_FOUND, f"Failed to get experiment: experiment {experiment_id} not found")
        spec = body.get("pipeline_spec")
        if spec is None:
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: {kind} has no pipeline_spec "
                                             "(pipeline_version_reference is not supported by this fake)")
        if isinstance(spec, dict) and "pipeline_spec" in spec and "root" not in spec:
            spec = spec["pipeline_spec"]  # {pipeline_spec, platform_spec} form
        try:
            declared = check_pipeline_spec(spec)
            check_parameters(declared, (body.get("runtime_config") or {}).get("parameters") or {})
        except ValueError as exc:
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: {exc}") from None
        keep = ("display_name", "description", "experiment_id", "pipeline_spec", "runtime_config",
                "service_account")
        record = {k: body[k] for k in keep if body.get(k) is not None}
        record.setdefault("experiment_id", experiment_id)
        return record

    @staticmethod
    def _known(table: dict, key: str, kind: str) -> dict:
        if key not in table:
            raise ApiError(NOT_FOUND, f"NotFoundError: {kind} {key!r} not found")
        return table[key]

    def _list_in_experiment(self, table: dict, query: dict, key: str) -> dict:
        """A page of ``table``'s records, narrowed by ``experiment_id`` and ``filter`` when given."""
        items = list(table.values())
        experiment = query.get("experiment_id", [""])[0]
        if experiment:
            items = [r for r in items if r.get("experiment_id") == experiment]
        return self._page(_apply_filter(items, query.get("filter", [""])[0]), query, key)

    def _page(self, items: list, query: dict, key: str) -> dict:
        size = int(query.get("page_size", ["0"])[0] or 0)
        size = min(size if size > 0 else 20, self.max_page_size)
        token = query.get("page_token", [""])[0]
        start = 0
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(INVALID_ARGUMENT, f"Invalid input error: invalid page token {token!r}") from None
        page = items[start:start + size]
        answer: dict = {"total_size": len(items)}
        if page:
            answer[key] = page
        if start + size < len(items):
            answer["next_page_token"] = base64.urlsafe_b64encode(
                json.dumps({"offset": start + size}).encode()).decode()
        return answer


def _apply_filter(items: list[dict], text: str) -> list[dict]:
    """Only the EQUALS string predicates the client sends (by display name)."""
    if not text:
        return items
    try:
        predicates = json.loads(text).get("predicates", [])
    except (ValueError, AttributeError):
        raise ApiError(INVALID_ARGUMENT, f"Invalid input error: filter is not valid JSON: {text!r}") from None
    for predicate in predicates:
        if predicate.get("operation") not in (1, "EQUALS"):
            raise ApiError(INVALID_ARGUMENT, f"this fake supports only EQUALS filters, got {predicate}")
        key, value = predicate.get("key"), predicate.get("stringValue", predicate.get("string_value"))
        items = [i for i in items if i.get(key) == value]
    return items


class _Handler(JsonApiHandler):
    fake: FakeKfpServer

    def _answer(self, path: str, query: dict, body: Any, bad_json: bool) -> tuple[int, dict]:
        try:
            # healthz stays open, as on a real deployment (the client probes it before any call,
            # retrying for 25 s on errors): auth failures surface on the real calls instead.
            needs_auth = path != "/apis/v2beta1/healthz"
            if needs_auth and self.fake.token is not None and \
                    self.headers.get("Authorization") != f"Bearer {self.fake.token}":
                raise ApiError(UNAUTHENTICATED, "Unauthenticated: missing or wrong bearer token")
            if isinstance(body, str):  # not JSON, or a bare JSON string: neither is a request message
                raise ApiError(INVALID_ARGUMENT, "request body is not JSON")
            return self.fake.handle(self.command, path, query, body)
        except ApiError as exc:
            return _HTTP[exc.code], {"code": exc.code, "message": exc.message, "details": []}
