"""The one runner-agnostic pipeline definition used by local runs, compile and submit.

(No ``from __future__ import annotations`` here: KFP reads the parameter annotations.)
"""


from kfp import dsl

from components import build_components
from components.factory import as_vertex_custom_job
from components.runtime import beam_stage_config, is_dataflow, remote_beam_problems
from core.config import Config, ConfigError

PIPELINE_DESCRIPTION = ("Two-tower retrieval: ingest -> Beam transform -> TFRS training -> evaluation -> "
                        "item embeddings -> ScaNN index -> quality gate -> atomic publish")


def create_pipeline(config: Config, local: bool = False):
    """Build the KFP pipeline for ``config``.

    The config's JSON becomes the default of the ``config_json`` parameter, and its
    ``data.path`` / ``publish.store`` the defaults of ``data_path`` / ``store`` — the
    values a scheduled or one-off run most often overrides.

    Args:
        local: build for the kfp.local runner, which cannot resolve the schedule-time
            placeholder (it fails on it); local runs always pass an explicit ``data_date``.

    Returns:
        A ``@dsl.pipeline`` function with parameters ``(config_json, data_path, store,
        run_id, data_date, data_fingerprint)``, all strings. ``data_date`` (YYYY-MM-DD)
        picks the day's partition of a partitioned dataset; when empty, a scheduled run
        derives it from its schedule time. ``data_fingerprint`` (when not empty) must match
        the data the run reads. Both are pipeline inputs so that no cache key of one day's
        run can match another day's.

    Beyond one machine (each only when configured; docs/ORCHESTRATION.md): ``train.vertex``
    makes the train step a Vertex AI custom job, ``train.device=gpu`` requests
    ``train.accelerator_type`` for it, and a remote ``transform.runner`` (Dataflow) runs the
    Beam stages on workers of the component image (the default config below names it).

    Raises:
        ConfigError: a setting this kind of run cannot honour (:func:`cluster_problems`).
    """
    problems = cluster_problems(config, local)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    ops = build_components(config.pipeline.image)
    train_op = ops.train
    if config.train.vertex.enabled:
        train_op = as_vertex_custom_job(ops.train, config.train, display_name=f"{config.pipeline.name}-train")
    default_config = beam_stage_config(config).to_json()
    default_data = config.data.path
    default_store = config.publish.store
    schedule_time = "" if local else dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER

    @dsl.pipeline(name=config.pipeline.name, description=PIPELINE_DESCRIPTION)
    def twotower_pipeline(config_json: str = default_config, data_path: str = default_data,
                          store: str = default_store, run_id: str = "", data_date: str = "",
                          data_fingerprint: str = ""):
        # The exit handler records every run's outcome in <store>/runs/ — a failed run
        # included — and never touches CURRENT.
        record = ops.record_run(config_json=config_json, store=store, run_id=run_id,
                                job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, data_date=data_date,
                                schedule_time=schedule_time).set_display_name("record-run")
        record.set_caching_options(False)
        record.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
        with dsl.ExitHandler(record, name="twotower-run"):
            _stages(ops, train_op, config, config_json, data_path, store, run_id, data_date, data_fingerprint,
                    schedule_time)

    return twotower_pipeline


def cluster_problems(config: Config, local: bool) -> list[str]:
    """One sentence per setting that this kind of run (``local``: kfp.local) cannot honour."""
    t, vertex = config.train, config.train.vertex
    out = []
    if local and vertex.enabled:
        out.append("train.vertex.enabled: a Vertex AI custom job runs only on Vertex AI Pipelines "
                   "(twotower submit --vertex); set it false for a local run")
    if local and is_dataflow(config.transform.runner):
        out.append(f"transform.runner: {config.transform.runner} workers read and write the run's artifacts on "
                   f"gs://, and a local run keeps them in local folders; use transform.runner=direct locally")
    if vertex.replica_count > 1 and t.distribute != "multi_worker":
        out.append(f"train.vertex.replica_count: {vertex.replica_count} machines need "
                   f"train.distribute=multi_worker (with {t.distribute!r} each would train alone)")
    if not local and t.distribute == "multi_worker" and not vertex.enabled:
        out.append("train.distribute: multi_worker needs train.vertex.enabled (a pipeline task is one "
                   "machine and nothing sets TF_CONFIG for it)")
    out.extend(remote_beam_problems(config))
    return out


def _stages(ops, train_op, config, config_json, data_path, store, run_id, data_date, data_fingerprint,
            schedule_time) -> None:
    """The stage tasks, wired artifact to artifact (inside the exit handler's group)."""
    ingest = ops.ingest(config_json=config_json, data_path=data_path, data_date=data_date,
                        data_fingerprint=data_fingerprint, schedule_time=schedule_time).set_display_name("ingest")
    # Ingest reads data from outside the artifact store: a cache hit could replay an
    # earlier day's input. Every later step keys on ingest's fresh output artifact.
    ingest.set_caching_options(False)
    transform = ops.transform(config_json=config_json,
                              ingested=ingest.outputs["ingested"]).set_display_name("transform")
    transformed = transform.outputs["transformed"]
    train = train_op(config_json=config_json, store=store, transformed=transformed).set_display_name("train")
    if config.train.warm_start:
        # It reads the store's live version, which changes outside the artifact store: a
        # cached model could have started from a version that is no longer live.
        train.set_caching_options(False)
    if config.train.device == "gpu" and not config.train.vertex.enabled:
        # A Vertex AI custom job carries its accelerator in its worker pool spec instead.
        train.set_accelerator_type(config.train.accelerator_type)
        train.set_accelerator_limit(config.train.accelerator_count)
    evaluate = ops.evaluate(config_json=config_json, store=store, transformed=transformed,
                            model=train.outputs["model"]).set_display_name("evaluate")
    # evaluate also scores the store's live version, which changes outside the artifact
    # store: a cached result could compare against a version that is no longer live.
    evaluate.set_caching_options(False)
    embed = ops.embed(config_json=config_json, transformed=transformed,
                      model=train.outputs["model"]).set_display_name("embed")
    index = ops.index(config_json=config_json,
                      embeddings=embed.outputs["embeddings"]).set_display_name("index")
    publish = ops.publish(
        config_json=config_json, store=store, run_id=run_id,
        job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        ingested=ingest.outputs["ingested"], transformed=transformed, model=train.outputs["model"],
        evaluation=evaluate.outputs["evaluation"], embeddings=embed.outputs["embeddings"],
        index=index.outputs["index"],
    ).set_display_name("gate-and-publish")
    # Publishing has a side effect outside the artifact store: never serve it from cache,
    # and retry transient storage failures (the store's CAS makes a retry safe).
    publish.set_caching_options(False)
    publish.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
