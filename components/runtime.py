"""Argument plumbing shared by the component bodies (runs inside the component container).

Each stage writes its outputs into its artifact folder, plus ``stage.json``
(name, seconds, result) that the publish step gathers for summary.json — or, when it
fails, ``stage_error.json`` (name, error, seconds) — and logs
its scalar results as KFP Metrics so the pipeline UI shows them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Mapping, Optional

from core.config import Config, config_from_json
from core.summary import STAGE_ERROR_FILE, STAGE_FILE, stage_record


def load_stage_config(config_json: str, overrides: Optional[Mapping[str, object]] = None) -> Config:
    config = config_from_json(config_json)
    return config.with_overrides(dict(overrides)) if overrides else config


def run_stage(stage: str, config: Config, artifact, metrics, body: Callable[[Config, str], Mapping],
              report_outputs: Optional[tuple] = None) -> dict:
    """Run ``body(config, out_dir)`` into the artifact's folder and record it.

    Args:
        artifact: the stage's main KFP output artifact (its ``path`` becomes a folder).
        metrics: a KFP ``Metrics`` output or None.
        report_outputs: the stage's (``HTML``, ``Markdown``) KFP outputs, or None; when
            given, the stage's report is rendered (see :func:`emit_report`).
    Returns:
        The body's result dict.
    """
    out_dir = artifact.path
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    try:
        result = dict(body(config, out_dir))
    except Exception as exc:
        # Leave the reason beside the stage's outputs (run browsers show it), then fail the task.
        with open(os.path.join(out_dir, STAGE_ERROR_FILE), "w") as fh:
            json.dump({"stage": stage, "error": f"{type(exc).__name__}: {exc}",
                       "seconds": round(time.perf_counter() - started, 3)}, fh, indent=2)
        raise
    seconds = time.perf_counter() - started
    record = stage_record(stage, seconds, result)
    with open(os.path.join(out_dir, STAGE_FILE), "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True, default=str)
    # A retry that succeeded in the same folder: the earlier attempt's error no longer says
    # why anything failed (run records and run browsers read it as the step's failure).
    stale = os.path.join(out_dir, STAGE_ERROR_FILE)
    if os.path.exists(stale):
        os.remove(stale)
    artifact.metadata["seconds"] = record["seconds"]
    if metrics is not None:
        metrics.log_metric("seconds", record["seconds"])
        for key, value in _scalars(result).items():
            metrics.log_metric(key, value)
    if report_outputs is not None:
        emit_report(stage, out_dir, report_outputs)
    print(f"[twotower] {stage}: done in {seconds:.1f}s", flush=True)
    return result


def emit_report(stage: str, out_dir: str, report_outputs: tuple) -> None:
    """Render the stage's report beside its outputs and copy it into the KFP HTML and
    Markdown output artifacts (files, which the KFP / Vertex AI UIs display)."""
    import shutil

    from reports import write_stage_report

    html_out, markdown_out = report_outputs
    written = write_stage_report(stage, out_dir)
    for source, target in ((written["html"], html_out), (written["markdown"], markdown_out)):
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        shutil.copyfile(source, target.path)


def read_stage_record(artifact_dir: str) -> dict:
    with open(os.path.join(artifact_dir, STAGE_FILE)) as fh:
        return json.load(fh)


def read_json(artifact_dir: str, name: str) -> dict:
    with open(os.path.join(artifact_dir, name)) as fh:
        return json.load(fh)


def _scalars(result: Mapping, prefix: str = "") -> dict:
    """Flatten numeric leaves of a result dict into metric names (``popularity.recall_at_10``)."""
    out = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(_scalars(value, prefix=f"{name}."))
    return out
