"""Read local run folders (what ``pipelines/local_run.py`` writes) into plain dicts for the UI.

Run folder contract::

    <runs>/<run_id>/pipeline.log     the KFP runner's full output
    <runs>/<run_id>/run.json         {"run_id", "status": running|succeeded|failed, "started_at",
                                      "finished_at", "data_date", "data_fingerprint", "error",
                                      "failed_step", "published", "version", "store", "owner"}
                                     (absent in older runs; store and owner in newer ones)
    <runs>/<run_id>/summary.json     only once the run finished (core/summary.py)
    <runs>/<run_id>/kfp/<pipeline>-<ts>/<task>/<output>/stage.json   {"stage", "seconds", "result"}
                                     with report.html / report.md beside it when rendered

Runs without run.json succeeded iff summary.json exists. A run.json that says running
while the process named in its ``owner`` is gone (killed with SIGKILL) is closed when it is
read: marked failed, with the store's run record written if the exit handler never did
(:func:`run_records.records.close_dead_run`, safe when several UIs and runs do it at once).
Stage folders are found by
scanning for stage.json (keyed by its "stage" field), never by guessing KFP's folder
names, which differ between KFP versions and component names (``train`` / ``train-op``).

Nothing here raises on a damaged file: one half-written JSON must not take the whole
page down, so such a file is reported in the run's ``problems`` list instead.
All paths handed out are relative to the runs folder, with ``/`` separators.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from typing import Optional

from run_records.records import close_dead_run, owner_alive
from core.contracts.files import KFP_DIR, PIPELINE_LOG
from core.contracts.files import REPORT_HTML_FILE as REPORT_HTML
from core.contracts.files import REPORT_MARKDOWN_FILE as REPORT_MD
from core.contracts.files import RUN_FILE as RUN_JSON
from core.contracts.files import STAGE_ERROR_FILE as STAGE_ERROR_JSON  # a stage that raised leaves this instead
from core.contracts.files import STAGE_FILE as STAGE_JSON
from core.contracts.files import SUMMARY_FILE as SUMMARY_JSON

#: (display name, stage key) in pipeline order; the key is stage.json's "stage" field.
STEPS = (("ingest", "ingest"), ("transform", "transform"), ("train", "train"),
         ("evaluate", "evaluate"), ("embed", "embed"), ("index", "index"),
         ("gate-and-publish", "publish"))
STEP_KEYS = tuple(key for _, key in STEPS)
RUN_STATUSES = ("running", "succeeded", "failed")
#: Files listed per step; a SavedModel's variables are not worth more on a page.
MAX_FILES_PER_STEP = 200

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_RUN_ID_TIME_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")


class RunNotFoundError(LookupError):
    """No such run folder (or an id that could not name one)."""


class FileAccessError(LookupError):
    """A requested file is outside the runs folder, missing, or not a plain file."""


# -- small helpers ------------------------------------------------------------------------------
def normalize_step(name: Optional[str]) -> Optional[str]:
    """A KFP task or display name -> stage key: ``gate-and-publish`` / ``publish-op`` -> ``publish``."""
    if not name:
        return None
    key = str(name).strip().lower()
    if key.endswith("-op"):
        key = key[:-3]
    return "publish" if key in ("gate-and-publish", "gate_and_publish") else key


def _read_json(path: str, problems: list[str], label: str) -> Optional[dict]:
    """The JSON object in ``path``; None when absent, or damaged (noted in ``problems``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # half-written while the run is going, or damaged
        problems.append(f"{label} could not be read: {exc}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{label} is not a JSON object")
        return None
    return data


def _parse_time(text) -> Optional[_dt.datetime]:
    """An ISO-8601 string -> aware UTC datetime (naive means UTC); None if unparseable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value.astimezone(_dt.timezone.utc)


def _iso(value: _dt.datetime) -> str:
    return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_from_run_id(run_id: str) -> Optional[str]:
    """Run ids start with their UTC start time (``20261121T223022Z-...``)."""
    m = _RUN_ID_TIME_RE.match(run_id)
    if not m:
        return None
    try:
        return _iso(_dt.datetime(*map(int, m.groups()), tzinfo=_dt.timezone.utc))
    except ValueError:
        return None


def _rel(runs_dir: str, path: str) -> str:
    return os.path.relpath(path, runs_dir).replace(os.sep, "/")


def _get(mapping, *keys):
    """mapping[k1][k2]... or None when any level is missing or not a dict."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- run folders --------------------------------------------------------------------------------
def is_run_folder(path: str) -> bool:
    """A run folder holds at least one of run.json, summary.json, pipeline.log, kfp/."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in (RUN_JSON, SUMMARY_JSON, PIPELINE_LOG, KFP_DIR))


def run_dir(runs_dir: str, run_id: str) -> str:
    """The folder of ``run_id``; RunNotFoundError for a missing run or an id with path syntax."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or run_id in (".", ".."):
        raise RunNotFoundError(f"invalid run id {run_id!r}")
    path = os.path.join(runs_dir, run_id)
    if not is_run_folder(path):
        raise RunNotFoundError(f"no run {run_id!r} in {runs_dir}")
    return path


def _scan_stage_files(run_path: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(stages, errors) under ``kfp/``: stage key -> {"record", "artifact_dir", "task_dir"}.

    ``stages`` come from stage.json, ``errors`` from stage_error.json ({"stage", "error",
    "seconds"}, left by a stage that raised). When a stage left several such files (a
    retried task), the newest one wins.
    """
    found: dict[str, dict[str, tuple[float, dict]]] = {STAGE_JSON: {}, STAGE_ERROR_JSON: {}}
    problems: list[str] = []
    for folder, _dirs, files in os.walk(os.path.join(run_path, KFP_DIR)):
        for fname in (STAGE_JSON, STAGE_ERROR_JSON):
            if fname not in files:
                continue
            path = os.path.join(folder, fname)
            record = _read_json(path, problems, fname)
            if record is None or not isinstance(record.get("stage"), str):
                continue
            key = normalize_step(record["stage"])
            mtime = os.path.getmtime(path)
            if key not in found[fname] or mtime > found[fname][key][0]:
                found[fname][key] = (mtime, {"record": record, "artifact_dir": folder,
                                             "task_dir": os.path.dirname(folder)})
    stages, errors = ({key: info for key, (_, info) in found[f].items()} for f in (STAGE_JSON, STAGE_ERROR_JSON))
    return stages, errors


def find_stages(run_path: str) -> dict[str, dict]:
    """stage key -> {"record": stage.json content, "artifact_dir", "task_dir"} under ``kfp/``."""
    return _scan_stage_files(run_path)[0]


def find_task_dirs(run_path: str) -> dict[str, str]:
    """stage key -> task folder ``kfp/<pipeline>-<ts>/<task>/`` (also for tasks that wrote no stage.json)."""
    root = os.path.join(run_path, KFP_DIR)
    out: dict[str, str] = {}
    if not os.path.isdir(root):
        return out
    # Pipeline-run folders sort by their timestamp suffix; a later one wins for the same task.
    for pipeline_run in sorted(os.listdir(root)):
        base = os.path.join(root, pipeline_run)
        if not os.path.isdir(base):
            continue
        for task in sorted(os.listdir(base)):
            if os.path.isdir(os.path.join(base, task)):
                out[normalize_step(task)] = os.path.join(base, task)
    return out


def run_overview(runs_dir: str, run_id: str, stages: Optional[dict] = None) -> dict:
    """One run's headline: status, times, data date, key metrics, publish decision.

    Keys: run_id, status, started_at, finished_at, data_date, data_fingerprint, error,
    failed_step, published, version, reasons, metrics {recall_at_10, popularity_recall_at_10,
    ndcg_at_10, index_recall_at_10_vs_exact}, has_summary, has_run_json, log (relative path
    or None), problems (list of strings).
    """
    path = run_dir(runs_dir, run_id)
    problems: list[str] = []
    info = _read_json(os.path.join(path, RUN_JSON), problems, RUN_JSON)
    if info is not None and info.get("status") == "running" and owner_alive(info.get("owner")) is False:
        try:
            # None: another UI or run closed it first; read what it wrote.
            info = close_dead_run(path) or _read_json(os.path.join(path, RUN_JSON), problems, RUN_JSON)
        except (OSError, RuntimeError, ValueError) as exc:  # StoreError is a RuntimeError
            problems.append(f"its process is gone but the run could not be closed: {type(exc).__name__}: {exc}")
    summary = _read_json(os.path.join(path, SUMMARY_JSON), problems, SUMMARY_JSON)
    rj = info or {}
    sm = summary or {}

    status = rj.get("status")
    if status not in RUN_STATUSES:
        if info is not None and status is not None:
            problems.append(f"{RUN_JSON} has an unknown status {status!r}")
        # Older runs (no run.json): the runner writes summary.json only when every step finished.
        status = "succeeded" if summary is not None else "failed"
    error = rj.get("error")
    if info is None and summary is None:
        error = f"the run did not finish (no {SUMMARY_JSON}) and left no {RUN_JSON} saying why"

    started = _parse_time(rj.get("started_at"))
    started_at = _iso(started) if started else _time_from_run_id(run_id)
    finished = _parse_time(rj.get("finished_at")) or _parse_time(sm.get("finished_at"))

    metrics = {
        "recall_at_10": _number(_get(sm, "metrics", "recall_at_10")),
        "popularity_recall_at_10": _number(_get(sm, "metrics", "popularity_recall_at_10")),
        "ndcg_at_10": _number(_get(sm, "metrics", "ndcg_at_10")),
        "index_recall_at_10_vs_exact": _number(_get(sm, "index", "recall_at_10_vs_exact")),
    }
    if summary is None and any(v is None for v in metrics.values()):
        # A run that failed after evaluate/index still measured something worth showing.
        stages = find_stages(path) if stages is None else stages
        ev = _get(stages.get("evaluate"), "record", "result")
        ix = _get(stages.get("index"), "record", "result")
        fallback = {"recall_at_10": _number(_get(ev, "recall_at_10")),
                    "popularity_recall_at_10": _number(_get(ev, "popularity", "recall_at_10")),
                    "ndcg_at_10": _number(_get(ev, "ndcg_at_10")),
                    "index_recall_at_10_vs_exact": _number(_get(ix, "recall_at_10_vs_exact"))}
        metrics = {k: fallback[k] if v is None else v for k, v in metrics.items()}

    published = rj.get("published") if isinstance(rj.get("published"), bool) else None
    if published is None and summary is not None:
        published = bool(sm.get("published"))
    version = rj.get("version") or sm.get("version")
    reasons = sm.get("reasons") if isinstance(sm.get("reasons"), list) else []
    log = os.path.join(path, PIPELINE_LOG)
    return {
        "run_id": run_id,
        "status": status,
        "started_at": started_at,
        "finished_at": _iso(finished) if finished else None,
        "data_date": rj.get("data_date"),
        "data_fingerprint": rj.get("data_fingerprint"),
        "error": error,
        "failed_step": rj.get("failed_step"),
        "published": published,
        "version": version if isinstance(version, str) else None,
        "reasons": [str(r) for r in reasons],
        "metrics": metrics,
        "has_summary": summary is not None,
        "has_run_json": info is not None,
        "log": _rel(runs_dir, log) if os.path.isfile(log) else None,
        "problems": problems,
    }


def _sort_key(run: dict, runs_dir: str) -> tuple:
    started = _parse_time(run["started_at"])
    when = started.timestamp() if started else os.path.getmtime(os.path.join(runs_dir, run["run_id"]))
    return when, run["run_id"]


def list_runs(runs_dir: str) -> list[dict]:
    """:func:`run_overview` of every run folder under ``runs_dir``, newest first.

    Other folders there (the default store ``runs/store``, stray files) are skipped.
    """
    if not os.path.isdir(runs_dir):
        return []
    runs = []
    for name in os.listdir(runs_dir):
        if _RUN_ID_RE.match(name) and is_run_folder(os.path.join(runs_dir, name)):
            try:
                runs.append(run_overview(runs_dir, name))
            except RunNotFoundError:  # removed while we listed
                continue
    return sorted(runs, key=lambda r: _sort_key(r, runs_dir), reverse=True)


def _list_files(runs_dir: str, folder: Optional[str]) -> tuple[list[dict], bool]:
    """[{"path" (relative to runs_dir), "size" (bytes)}] under ``folder``, capped; (files, truncated)."""
    if not folder or not os.path.isdir(folder):
        return [], False
    out = []
    for base, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if len(out) >= MAX_FILES_PER_STEP:
                return out, True
            path = os.path.join(base, name)
            if os.path.isfile(path):
                out.append({"path": _rel(runs_dir, path), "size": os.path.getsize(path)})
    return out, False


def _step_status(key: str, has_stage: bool, has_error: bool, has_task_dir: bool, run: dict) -> str:
    if normalize_step(run.get("failed_step")) == key:
        return "failed"
    if has_stage:
        return "succeeded"
    if has_error:
        return "failed"
    if run["status"] == "running":
        return "running" if has_task_dir else "pending"
    return "not run"


def read_run(runs_dir: str, run_id: str) -> dict:
    """:func:`run_overview` plus ``steps``: one dict per pipeline step, in order.

    Step keys: name (display), key (stage), status (succeeded / failed / running / pending /
    not run), seconds (float or None), result (stage.json's result or None), error (why a
    failed step failed, from its stage_error.json or run.json; else None), report_html and
    report_md (relative paths or None), files [{"path", "size"}], files_truncated, folder.
    """
    path = run_dir(runs_dir, run_id)
    stages, errors = _scan_stage_files(path)
    tasks = find_task_dirs(path)
    run = run_overview(runs_dir, run_id, stages)
    if not run["data_fingerprint"]:  # older runs: ingest's result names it
        fingerprint = _get(stages.get("ingest"), "record", "result", "fingerprint")
        run["data_fingerprint"] = fingerprint if isinstance(fingerprint, str) else None
    steps = []
    for name, key in STEPS:
        stage = stages.get(key)
        failure = errors.get(key)
        artifact_dir = stage["artifact_dir"] if stage else None
        task_dir = (stage or failure or {}).get("task_dir") or tasks.get(key)
        files, truncated = _list_files(runs_dir, task_dir)
        record = stage["record"] if stage else (failure["record"] if failure else {})
        status = _step_status(key, stage is not None, failure is not None, task_dir is not None, run)
        error = failure["record"].get("error") if failure and status == "failed" else None
        if status == "failed" and error is None and normalize_step(run.get("failed_step")) == key:
            error = run.get("error")
        reports = {}
        for label, fname in (("report_html", REPORT_HTML), ("report_md", REPORT_MD)):
            candidate = os.path.join(artifact_dir, fname) if artifact_dir else None
            reports[label] = _rel(runs_dir, candidate) if candidate and os.path.isfile(candidate) else None
        steps.append({
            "name": name,
            "key": key,
            "status": status,
            "seconds": _number(record.get("seconds")),
            "result": record.get("result") if isinstance(record.get("result"), dict) else None,
            "error": str(error) if error is not None else None,
            **reports,
            "files": files,
            "files_truncated": truncated,
            "folder": _rel(runs_dir, task_dir) if task_dir else None,
        })
    run["steps"] = steps
    run["total_seconds"] = round(sum(s["seconds"] for s in steps if s["seconds"] is not None), 3)
    return run


def resolve_file(runs_dir: str, rel_path: str) -> str:
    """The absolute path of a plain file under ``runs_dir``.

    Raises:
        FileAccessError: the path is absolute, climbs out (``..`` or a symlink leading
          outside), or names no plain file.
    """
    if not isinstance(rel_path, str) or not rel_path or "\x00" in rel_path:
        raise FileAccessError("no file named")
    parts = rel_path.replace("\\", "/").split("/")
    if rel_path.startswith("/") or any(p in ("..",) for p in parts) or re.match(r"^[A-Za-z]:", rel_path):
        raise FileAccessError(f"path {rel_path!r} leaves the runs folder")
    root = os.path.realpath(runs_dir)
    full = os.path.realpath(os.path.join(root, *[p for p in parts if p not in ("", ".")]))
    # realpath resolves symlinks, so a link pointing outside is caught here too.
    if os.path.commonpath([root, full]) != root or full == root:
        raise FileAccessError(f"path {rel_path!r} leaves the runs folder")
    if not os.path.isfile(full):
        raise FileAccessError(f"no file {rel_path!r} in the runs folder")
    return full
