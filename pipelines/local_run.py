"""Run the pipeline on this machine with the KFP local SubprocessRunner (no Docker, no cluster)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import warnings

from core import storage
from core.config import Config
from core.summary import dumps

SUMMARY_FILE = "summary.json"


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


def run_local(config: Config, run_id: str | None = None, verbose: bool = False) -> dict:
    """Execute the whole pipeline locally and return its summary.json content.

    Run folder: ``<pipeline.runs_dir>/<run_id>/`` holding ``kfp/`` (every task's
    artifacts), ``pipeline.log`` (the runner's full output) and ``summary.json``.
    The console shows concise progress unless ``verbose``.

    Raises:
        RuntimeError: a task failed (the KFP runner's message names it).
    """
    from kfp import local

    from pipelines.pipeline import create_pipeline

    config = absolutize(config)
    run_id = run_id or new_run_id()
    run_dir = os.path.join(config.pipeline.runs_dir, run_id)
    os.makedirs(run_dir, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(run_dir, "kfp"),
               raise_on_error=True)
    pipeline = create_pipeline(config)
    with open(os.path.join(run_dir, "pipeline.log"), "w") as log, _console(log, verbose), \
            warnings.catch_warnings():
        # Cluster-only task settings (display names) and the image-name heuristic are noise locally.
        warnings.filterwarnings("ignore", message=r".*(have no effect|custom or non-Python base image).*")
        task = pipeline(config_json=config.to_json(), data_path=config.data.path,
                        store=config.publish.store, run_id=run_id)
    with open(os.path.join(task.output.path, SUMMARY_FILE)) as fh:
        summary = json.load(fh)
    summary["run_dir"] = run_dir
    with open(os.path.join(run_dir, SUMMARY_FILE), "w") as fh:
        fh.write(dumps(summary))
    return summary


def _console(log, verbose: bool):
    """Send the runner's stdout to ``log`` and a progress view (or everything) to the console."""
    from pipelines.progress import ProgressStream

    if verbose:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(ProgressStream(log))
