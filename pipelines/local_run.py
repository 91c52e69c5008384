"""Run the pipeline on this machine with the KFP local SubprocessRunner (no Docker, no cluster)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import time
import warnings

from core import storage
from core.config import Config
from core.partitions import partition_path, resolve_data_date
from core.summary import PIPELINE_LOG, RUN_FILE, STAGE_ERROR_FILE, SUMMARY_FILE, dumps

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def new_run_id() -> str:
    """Sortable, unique run id: ``20261121T223000Z-1a2b3c``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def absolutize(config: Config) -> Config:
    """Resolve relative local paths against the working directory, once, at the boundary.

    Component subprocesses and the manifest's lineage then see the same absolute paths.
    """
    overrides = {}
    for key, value in (("data.path", config.data.path), ("publish.store", config.publish.store),
                       ("pipeline.runs_dir", config.pipeline.runs_dir)):
        if not storage.is_gcs(value) and not os.path.isabs(value):
            overrides[key] = os.path.abspath(value)
    return config.with_overrides(overrides) if overrides else config


class RunFailedError(RuntimeError):
    """A local run failed; ``record`` is its run.json content (failed_step, error)."""

    def __init__(self, record: dict):
        where = f" at step {record['failed_step']}" if record.get("failed_step") else ""
        super().__init__(f"run {record['run_id']} failed{where}: {record['error']}")
        self.record = record


def run_local(config: Config, run_id: str | None = None, verbose: bool = False,
              data_date: str | None = None) -> dict:
    """Execute the whole pipeline locally and return its summary.json content.

    Run folder: ``<pipeline.runs_dir>/<run_id>/`` holding ``run.json`` (status, written at
    start and at the end: run_id, status running|succeeded|failed, started_at, finished_at,
    data_date, data_fingerprint, error, failed_step, published, version), ``kfp/`` (every
    task's artifacts), ``pipeline.log`` (the runner's full output) and, when the run
    finished, ``summary.json``. The console shows concise progress unless ``verbose``.

    Args:
        data_date: YYYY-MM-DD partition of a ``data.partitioned`` dataset (required there).

    Raises:
        RunFailedError: a task failed (its step and error are in the exception and run.json).
        PartitionError: ``data_date`` is malformed, missing or not applicable.
    """
    from kfp import local

    from pipelines.pipeline import create_pipeline

    config = absolutize(config)
    date = resolve_data_date(config.data.partitioned, data_date or "", "", config.data.partition_lag_days)
    run_id = run_id or new_run_id()
    run_dir = os.path.join(config.pipeline.runs_dir, run_id)
    os.makedirs(run_dir, exist_ok=True)
    record = {"run_id": run_id, "status": "running", "started_at": _now(), "finished_at": None,
              "data_date": date, "data_fingerprint": _fingerprint(config, date), "error": None,
              "failed_step": None, "published": None, "version": None}
    _write_record(run_dir, record)
    pipeline_root = os.path.join(run_dir, "kfp")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    pipeline = create_pipeline(config, local=True)
    try:
        with open(os.path.join(run_dir, PIPELINE_LOG), "w") as log, _console(log, verbose), \
                warnings.catch_warnings():
            # Cluster-only task settings (display names) and the image-name heuristic are noise locally.
            warnings.filterwarnings("ignore", message=r".*(have no effect|custom or non-Python base image).*")
            pipeline(config_json=config.to_json(), data_path=config.data.path, store=config.publish.store,
                     run_id=run_id, data_date=date or "", data_fingerprint=record["data_fingerprint"] or "")
    except (RuntimeError, KeyboardInterrupt) as exc:
        step, error = _failure(pipeline_root, exc)
        record.update(status="failed", finished_at=_now(), failed_step=step, error=error, published=False)
        _write_record(run_dir, record)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise RunFailedError(record) from exc
    with open(_find_one(pipeline_root, os.path.join("summary", SUMMARY_FILE))) as fh:
        summary = json.load(fh)
    summary["run_dir"] = run_dir
    with open(os.path.join(run_dir, SUMMARY_FILE), "w") as fh:
        fh.write(dumps(summary))
    record.update(status="succeeded", finished_at=_now(), published=summary["published"], version=summary["version"])
    _write_record(run_dir, record)
    return summary


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_record(run_dir: str, record: dict) -> None:
    storage.write_text(os.path.join(run_dir, RUN_FILE), dumps(record))


def _fingerprint(config: Config, date: str | None) -> str | None:
    """The input's fingerprint, passed to the run so it reads exactly this data.

    None when the input cannot be read yet (e.g. a missing partition): the run's ingest
    step then fails on it with the precise error, and the run is recorded as failed.
    """
    from features.ingest import IngestError, fingerprint_input

    try:
        return fingerprint_input(partition_path(config.data.path, date), config.data.format)
    except (IngestError, OSError):
        return None


def _find_one(root: str, suffix: str) -> str:
    """The one file under ``root`` whose path ends with ``suffix`` (KFP picks the folder names)."""
    found = sorted(glob.glob(os.path.join(root, "**", suffix), recursive=True))
    if len(found) != 1:
        raise RuntimeError(f"expected one {suffix} under {root}, found {len(found)}")
    return found[0]


def _failure(pipeline_root: str, exc: BaseException) -> tuple[str | None, str]:
    """(failed stage, error) from the stage_error.json a failed stage left, else the runner's message.

    Stage names are the pipeline's (ingest, transform, ...); KFP's task names add "-op".
    """
    errors = glob.glob(os.path.join(pipeline_root, "**", STAGE_ERROR_FILE), recursive=True)
    if errors:
        path = max(errors, key=os.path.getmtime)
        with open(path) as fh:
            error = json.load(fh)
        return error["stage"], error["error"]
    message = _ANSI.sub("", str(exc)) or type(exc).__name__
    inner = re.search(r"Inner task failed: '([^']+?)(?:-op)?'", message)
    return (inner.group(1) if inner else None), message


def _console(log, verbose: bool):
    """Send the runner's stdout to ``log`` and a progress view (or everything) to the console."""
    from pipelines.progress import ProgressStream

    if verbose:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(ProgressStream(log))
