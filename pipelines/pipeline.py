"""The one runner-agnostic pipeline definition used by local runs, compile and submit.

(No ``from __future__ import annotations`` here: KFP reads the parameter annotations.)
"""


from kfp import dsl
from kfp.dsl import Artifact

from components import build_components
from core.config import Config

PIPELINE_DESCRIPTION = ("Two-tower retrieval: ingest -> Beam transform -> TFRS training -> evaluation -> "
                        "item embeddings -> ScaNN index -> quality gate -> atomic publish")


def create_pipeline(config: Config):
    """Build the KFP pipeline for ``config``.

    The config's JSON becomes the default of the ``config_json`` parameter, and its
    ``data.path`` / ``publish.store`` the defaults of ``data_path`` / ``store`` — the
    two values a scheduled or one-off run most often overrides.

    Returns:
        A ``@dsl.pipeline`` function with parameters
        ``(config_json: str, data_path: str, store: str, run_id: str)``.
    """
    ops = build_components(config.pipeline.image)
    default_config = config.to_json()
    default_data = config.data.path
    default_store = config.publish.store

    @dsl.pipeline(name=config.pipeline.name, description=PIPELINE_DESCRIPTION)
    def twotower_pipeline(config_json: str = default_config, data_path: str = default_data,
                          store: str = default_store, run_id: str = "") -> Artifact:
        ingest = ops.ingest(config_json=config_json, data_path=data_path).set_display_name("ingest")
        transform = ops.transform(config_json=config_json,
                                  ingested=ingest.outputs["ingested"]).set_display_name("transform")
        transformed = transform.outputs["transformed"]
        train = ops.train(config_json=config_json, transformed=transformed).set_display_name("train")
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
        return publish.outputs["summary"]

    return twotower_pipeline
