"""Argument plumbing shared by the component bodies (runs inside the component container).

Each stage writes its outputs into its artifact folder, plus ``stage.json``
(name, seconds, cpu_seconds, peak_rss_mb, result) that the publish step gathers for summary.json — or, when it
fails, ``stage_error.json`` (name, error, seconds) — and logs
its scalar results as KFP Metrics so the pipeline UI shows them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Callable, Mapping, Optional

from core.beam import IN_PROCESS
from core.config import Config, ConfigError, config_from_json
from core.contracts import files as names
from core.contracts import records
from core.summary import cpu_seconds_now, stage_record, stage_resources

GCS = "gs://"
#: The Beam worker image option: Dataflow workers run this image (default: pipeline.image).
SDK_CONTAINER_IMAGE = "sdk_container_image"
#: What a Dataflow job cannot start without (transform.pipeline_options keys).
DATAFLOW_REQUIRED = ("project", "region", "temp_location")


def load_stage_config(config_json: str, overrides: Optional[Mapping[str, object]] = None) -> Config:
    config = config_from_json(config_json)
    return config.with_overrides(dict(overrides)) if overrides else config


def run_stage(stage: str, config: Config, artifact, metrics, body: Callable[[Config, str], Mapping],
              report_outputs: Optional[tuple] = None) -> dict:
    """Run ``body(config, out_dir)`` into the artifact's folder and record it.

    On a non-chief replica of a multi-worker cluster (:func:`is_chief_replica`) the body runs
    into a temporary folder and no report is rendered: every replica of a Vertex AI custom job
    runs the same component in lockstep with the chief, and the artifact folders (shared, on
    gs://) are the chief's to write.

    Args:
        artifact: the stage's main KFP output artifact (its ``path`` becomes a folder).
        metrics: a KFP ``Metrics`` output or None.
        report_outputs: the stage's (``HTML``, ``Markdown``) KFP outputs, or None; when
            given, the stage's report is rendered (see :func:`emit_report`).
    Returns:
        The body's result dict.
    """
    out_dir = artifact.path
    if not is_chief_replica():
        out_dir, report_outputs = tempfile.mkdtemp(prefix=f"twotower-{stage}-replica-"), None
        print(f"[twotower] {stage}: non-chief replica, writing to {out_dir} (the chief writes the outputs)",
              flush=True)
    os.makedirs(out_dir, exist_ok=True)
    started, cpu_started = time.perf_counter(), cpu_seconds_now()
    try:
        result = dict(body(config, out_dir))
    except Exception as exc:
        # Leave the reason beside the stage's outputs (run browsers show it), then fail the task.
        records.write_stage_error(os.path.join(out_dir, names.STAGE_ERROR_FILE),
                                  {"stage": stage, "error": f"{type(exc).__name__}: {exc}",
                                   "seconds": round(time.perf_counter() - started, 3)})
        raise
    seconds = time.perf_counter() - started
    record = stage_record(stage, seconds, result, stage_resources(cpu_started))
    records.write_stage_record(os.path.join(out_dir, names.STAGE_FILE), record)
    # A retry that succeeded in the same folder: the earlier attempt's error no longer says
    # why anything failed (run records and run browsers read it as the step's failure).
    stale = os.path.join(out_dir, names.STAGE_ERROR_FILE)
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


def is_chief_replica(environ: Optional[Mapping[str, str]] = None) -> bool:
    """False on a non-chief replica of a multi-worker training cluster, else True.

    Every replica of a Vertex AI custom job runs the whole train component; only the chief's
    files and report are the run's. The rule is :func:`trainer.strategy.is_chief`'s (task type
    chief, or worker 0 of a cluster without a chief), read from ``TF_CONFIG`` so that the
    component needs no strategy (nor TensorFlow) to know it. No ``TF_CONFIG``: one machine, the chief.
    """
    env = os.environ if environ is None else environ
    text = env.get("TF_CONFIG")
    if not text:
        return True
    doc = json.loads(text)
    task = doc.get("task") or {}
    task_type = task.get("type")
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in (doc.get("cluster") or {})
    return task_type == "worker" and int(task.get("index", 0)) == 0 and not has_chief


# ---- Beam stages on a remote runner (Dataflow) ------------------------------------------------


def is_remote_beam(config: Config) -> bool:
    """Whether the Beam stages (transform, embed) run on a remote runner, not in-process."""
    return config.transform.runner != IN_PROCESS


def is_dataflow(runner: str) -> bool:
    """``DataflowRunner``, or Beam's short name for it (``dataflow``)."""
    return runner.lower() in ("dataflowrunner", "dataflow")


def remote_beam_problems(config: Config) -> list[str]:
    """One sentence per setting a Dataflow run of the Beam stages lacks or has wrong (empty: fine).

    Dataflow needs ``project``, ``region`` and a gs:// ``temp_location`` in
    ``transform.pipeline_options``, and a worker image it can pull from a registry
    (``sdk_container_image``, by default ``pipeline.image``).
    """
    t = config.transform
    if not is_dataflow(t.runner):
        return []
    opts = t.pipeline_options
    out = []
    for key in DATAFLOW_REQUIRED:
        if not str(opts.get(key) or "").strip():
            out.append(f"transform.pipeline_options.{key}: required with transform.runner={t.runner}")
    for key in ("temp_location", "staging_location"):
        value = opts.get(key)
        if value and not str(value).startswith(GCS):
            out.append(f"transform.pipeline_options.{key}: {value!r} must be a gs:// prefix "
                       f"(Dataflow workers read and write it)")
    own_image = opts.get(SDK_CONTAINER_IMAGE)
    image = str(own_image or config.pipeline.image)
    if "/" not in image:
        field = f"transform.pipeline_options.{SDK_CONTAINER_IMAGE}" if own_image else "pipeline.image"
        out.append(f"{field}: {image!r} names no registry, and Dataflow workers pull their image "
                   f"(transform.pipeline_options.{SDK_CONTAINER_IMAGE}, default pipeline.image) from one: "
                   f"set pipeline.image to the pushed name, e.g. REGION-docker.pkg.dev/PROJECT/REPO/twotower:TAG")
    return out


def beam_stage_config(config: Config) -> Config:
    """The config a Beam stage (transform, embed) runs with.

    In-process runner: ``config`` itself. A remote runner's workers run the one component
    image, which holds the project's code and its pinned dependencies, so the DoFns they
    unpickle import exactly as they do here: ``transform.pipeline_options.sdk_container_image``
    defaults to ``pipeline.image`` (a value set there is kept).

    Raises:
        ConfigError: naming every setting a Dataflow run lacks (:func:`remote_beam_problems`).
    """
    if not is_remote_beam(config):
        return config
    problems = remote_beam_problems(config)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    if config.transform.pipeline_options.get(SDK_CONTAINER_IMAGE):
        return config
    return config.with_overrides({f"transform.pipeline_options.{SDK_CONTAINER_IMAGE}": config.pipeline.image})


def beam_location(artifact, config: Config) -> str:
    """Where a Beam stage reads or writes ``artifact``'s folder.

    A KFP artifact has a ``uri`` (gs://... on Vertex AI or under a gs:// pipeline root) and a
    ``path``, this container's view of it (``/gcs/...``; the local folder on kfp.local). The
    in-process runner reads the path. A remote runner's workers do not see this container's
    mounts: they get the gs:// uri.

    Raises:
        ConfigError: Dataflow, and the artifact is not on gs:// (the workers could not reach it).
    """
    uri = str(getattr(artifact, "uri", "") or "")
    if not is_remote_beam(config):
        return artifact.path
    if uri.startswith(GCS):
        return uri.rstrip("/")
    if is_dataflow(config.transform.runner):
        raise ConfigError(f"transform.runner={config.transform.runner}: the workers cannot reach the artifact "
                          f"{uri or artifact.path!r}; run the pipeline with a gs:// pipeline root")
    return artifact.path


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
    """The folder's stage.json, validated (:class:`core.contracts.records.StageRecord`), as a dict."""
    return records.read_stage_record(os.path.join(artifact_dir, names.STAGE_FILE)).to_dict()


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
