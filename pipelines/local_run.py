"""Run the pipeline on this machine with kfp.local: every step as a subprocess of this Python
(``runner="subprocess"``, the default: no Docker, no cluster), or every step in the component
image (``runner="docker"``: kfp.local's DockerRunner, the same command line as the compiled spec).

In the image, steps see the data folder (read-only), the store and the run's KFP folder at
the same absolute paths as on the host (bind mounts), run as the host user (so what they write
belongs to whoever started the run) and use the host network (no bridge on these machines).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import sys
import time
import warnings

from core import storage
from core.config import Config
from core.partitions import partition_path, resolve_data_date
from run_records.records import close_dead_runs, process_identity, update_run_file
from core.contracts.files import PIPELINE_LOG, RUN_FILE, SUMMARY_FILE
from core.contracts.records import read_summary, write_summary

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


#: The kfp.local runners ``run_local`` offers.
RUNNERS = ("subprocess", "docker")


class ImageMissingError(RuntimeError):
    """``runner="docker"`` and the configured image is not in the engine's store."""


def run_local(config: Config, run_id: str | None = None, verbose: bool = False,
              data_date: str | None = None, runner: str = "subprocess") -> dict:
    """Execute the whole pipeline locally and return its summary.json content.

    Run folder: ``<pipeline.runs_dir>/<run_id>/`` holding ``run.json`` (status, written at
    start and at the end: run_id, status running|succeeded|failed, started_at, finished_at,
    data_date, data_fingerprint, error, failed_step, published, version, store, and owner:
    the pid / host / start time of this process, see :mod:`run_records.records`), ``kfp/``
    (every task's artifacts), ``pipeline.log`` (the runner's full output) and, when the run
    finished, ``summary.json``. The console shows concise progress unless ``verbose``.

    First, runs in the same runs folder that still say running but whose process is gone
    (killed with SIGKILL: neither run.json nor the exit handler's store record was written)
    are marked failed, and their store records written (:func:`close_abandoned_runs`).
    After a failed step, the store's record of this run carries that step's own error.

    Args:
        data_date: YYYY-MM-DD partition of a ``data.partitioned`` dataset (required there).
        runner: ``subprocess`` or ``docker`` (every step in ``pipeline.image``; see the module
            docstring).

    Raises:
        ImageMissingError, components.image.engine.EngineUnavailable: ``runner="docker"`` without
            the image or an engine (checked before the run starts).
        RunFailedError: a task failed (its step and error are in the exception and run.json).
        PartitionError: ``data_date`` is malformed, missing or not applicable.
    """
    from kfp import local

    from pipelines.pipeline import create_pipeline

    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    config = absolutize(config)
    kfp_runner = docker_runner(config) if runner == "docker" else local.SubprocessRunner(use_venv=False)
    date = resolve_data_date(config.data.partitioned, data_date or "", "", config.data.partition_lag_days)
    run_id = run_id or new_run_id()
    close_abandoned_runs(config.pipeline.runs_dir)
    run_dir = os.path.join(config.pipeline.runs_dir, run_id)
    os.makedirs(run_dir, exist_ok=True)
    record = new_run_record(run_id, config.publish.store, date, _fingerprint(config, date))
    write_run_record(run_dir, record)
    pipeline_root = os.path.join(run_dir, "kfp")
    local.init(runner=kfp_runner, pipeline_root=pipeline_root, raise_on_error=True)
    pipeline = create_pipeline(config, local=True)
    try:
        with open(os.path.join(run_dir, PIPELINE_LOG), "w") as log, _console(log, verbose), \
                warnings.catch_warnings():
            # Cluster-only task settings (display names) and the image-name heuristic are noise locally.
            warnings.filterwarnings("ignore", message=r".*(have no effect|custom or non-Python base image).*")
            pipeline(config_json=config.to_json(), data_path=config.data.path, store=config.publish.store,
                     run_id=run_id, data_date=date or "", data_fingerprint=record["data_fingerprint"] or "")
    except BaseException as exc:  # noqa: BLE001 - recorded, then raised again
        # Whatever ends the run here (a failed task, Ctrl-C, a bug) is written down before it
        # propagates; only a process killed outright leaves "running", for close_abandoned_runs.
        step, error, store_error = _failure(pipeline_root, exc)
        record.update(status="failed", finished_at=_now(), failed_step=step, error=error, published=False)
        _record_failure_in_store(config, run_id, date, store_error, exc)
        write_run_record(run_dir, record)
        if isinstance(exc, RuntimeError):
            raise RunFailedError(record) from exc
        raise
    # "summary" is the publish task's output artifact (its name in the pipeline).
    summary = read_summary(_find_one(pipeline_root, os.path.join("summary", SUMMARY_FILE))).to_dict()
    summary["run_dir"] = run_dir
    write_summary(os.path.join(run_dir, SUMMARY_FILE), summary)
    record.update(status="succeeded", finished_at=_now(), published=summary["published"], version=summary["version"])
    write_run_record(run_dir, record)
    return summary


def docker_runner(config: Config):
    """kfp.local's DockerRunner for ``config``: its image, its local folders mounted in place.

    Raises:
        EngineUnavailable: no Docker engine (components.image.engine says why).
        ImageMissingError: ``pipeline.image`` is not built here.
    """
    from docker.types import Mount
    from kfp import local

    from components.image.base import image_present
    from components.image.engine import ensure_engine

    client = ensure_engine()
    if not image_present(client, config.pipeline.image):
        raise ImageMissingError(f"image {config.pipeline.image!r} is not in the Docker engine: build it with "
                                f"`twotower image build --tag {config.pipeline.image}` (make image)")
    mounts = []
    for path, read_only in ((config.data.path, True), (config.publish.store, False)):
        if storage.is_gcs(path):
            continue  # reached over the network, as on a cluster
        if not read_only:
            os.makedirs(path, exist_ok=True)  # a bind mount needs its source to exist
        mounts.append(Mount(target=path, source=path, type="bind", read_only=read_only))
    return local.DockerRunner(network_mode="host", user=f"{os.getuid()}:{os.getgid()}", mounts=mounts,
                              environment={"HOME": "/tmp"})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_run_record(run_id: str, store: str, data_date: str | None, data_fingerprint: str | None) -> dict:
    """run.json of a run this process is starting: status running, owned by this process."""
    return {"run_id": run_id, "status": "running", "started_at": _now(), "finished_at": None,
            "data_date": data_date, "data_fingerprint": data_fingerprint, "error": None,
            "failed_step": None, "published": None, "version": None, "store": store,
            "owner": process_identity()}


def write_run_record(run_dir: str, record: dict) -> None:
    """Write run.json, under the lock that repairs of abandoned runs also take (so a repair
    that read an older record of the same run id can never overwrite this one)."""
    update_run_file(os.path.join(run_dir, RUN_FILE), lambda _current: record)


def close_abandoned_runs(runs_dir: str) -> list[dict]:
    """Mark failed the runs under ``runs_dir`` that say running but whose process is gone.

    See :func:`run_records.records.close_dead_runs`; a run that cannot be closed (its store
    unreachable) is reported on stderr and left for a later attempt, and this run goes on.
    Returns the runs closed (their new run.json content).
    """
    closed, problems = close_dead_runs(runs_dir)
    for run in closed:
        print(f"[twotower] run {run['run_id']} marked failed: {run['error']}", file=sys.stderr, flush=True)
    for problem in problems:
        print(f"[twotower] warning: {problem}", file=sys.stderr, flush=True)
    return closed


def _record_failure_in_store(config: Config, run_id: str, date: str | None, error: str,
                             exc: BaseException) -> None:
    """Give the store's record of this failed run the failing step's own error.

    The exit handler wrote the orchestrator's message (``Task exit-handler-1 failed.``), or
    nothing when the run was interrupted before it ran. A store that cannot be written is
    reported, not raised: the run's own failure is what the caller must see.
    """
    from core.store import StoreError
    from run_records.exit_handler import record_failure

    state = "FAILED" if isinstance(exc, Exception) else "CANCELLED"  # Ctrl-C, SystemExit
    try:
        record_failure(config.publish.store, run_id, error, date, state=state)
    except (OSError, StoreError, ValueError) as store_exc:
        print(f"[twotower] warning: run {run_id}: the store's run record could not be updated: "
              f"{type(store_exc).__name__}: {store_exc}", file=sys.stderr, flush=True)


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


def _failure(pipeline_root: str, exc: BaseException) -> tuple[str | None, str, str]:
    """(failed stage, its error for run.json, the error for the store's run record).

    From the stage_error.json a failed stage left (its own exception), else the runner's
    message; the store's record has no step field, so its error names the step
    (:func:`run_records.exit_handler.failure_message`). Stage names are the pipeline's (ingest,
    transform, ...); KFP's task names add "-op".
    """
    from run_records.exit_handler import failure_message, read_stage_errors

    message = _ANSI.sub("", str(exc)) or type(exc).__name__
    errors = [e for e in read_stage_errors(pipeline_root) if e.get("error")]
    store_error = failure_message(message, errors)
    if errors:  # the newest ended the run
        return errors[-1].get("stage"), str(errors[-1]["error"]), store_error
    inner = re.search(r"Inner task failed: '([^']+?)(?:-op)?'", message)
    return (inner.group(1) if inner else None), message, store_error


def _console(log, verbose: bool):
    """Send the runner's stdout to ``log`` and a progress view (or everything) to the console."""
    from pipelines.progress import ProgressStream

    if verbose:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(ProgressStream(log))
