"""Component bodies. KFP serialises each function's source into the component, so each
one imports what it needs inside its body and does nothing but plumbing: parse the
config, call the stage's pure function, record timings and metrics.

Every function takes ``config_json`` (the validated :class:`core.config.Config` as JSON),
so the pipeline and every stage share one configuration.
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def ingest_op(config_json: str, data_path: str, ingested: Output[Dataset], metrics: Output[Metrics]):
    """Validate the raw dataset at ``data_path``; bad rows to a dead-letter file."""
    from components.runtime import load_stage_config, run_stage
    from features.ingest import ingest

    config = load_stage_config(config_json, {"data.path": data_path})
    run_stage("ingest", config, ingested, metrics, ingest)


def transform_op(config_json: str, ingested: Input[Dataset], transformed: Output[Dataset],
                 metrics: Output[Metrics]):
    """Beam: normalise, vocabularies, statistics, split, TFRecords."""
    from components.runtime import load_stage_config, run_stage
    from features.transform import run_transform

    config = load_stage_config(config_json)
    run_stage("transform", config, transformed, metrics,
              lambda cfg, out: run_transform(cfg, ingested.path, out))


def train_op(config_json: str, transformed: Input[Dataset], model: Output[Model], metrics: Output[Metrics]):
    """TFRS two-tower training with in-batch negatives; exports both towers."""
    from components.runtime import load_stage_config, run_stage
    from trainer.train import train_model

    config = load_stage_config(config_json)
    run_stage("train", config, model, metrics, lambda cfg, out: train_model(cfg, transformed.path, out))


def evaluate_op(config_json: str, store: str, transformed: Input[Dataset], model: Input[Model],
                evaluation: Output[Artifact], metrics: Output[Metrics]):
    """Recall@K / nDCG@10 on the held-out split against the catalog, vs popularity and
    vs the live version of ``store`` (the same store publish writes to) on the same split."""
    from components.runtime import load_stage_config, run_stage
    from trainer.evaluate import evaluate_model

    config = load_stage_config(config_json, {"publish.store": store})
    run_stage("evaluate", config, evaluation, metrics,
              lambda cfg, out: evaluate_model(cfg, transformed.path, model.path, out,
                                              live_store=cfg.publish.store))


def embed_op(config_json: str, transformed: Input[Dataset], model: Input[Model],
             embeddings: Output[Dataset], metrics: Output[Metrics]):
    """Beam batch inference of the item tower over the whole catalog."""
    from components.runtime import load_stage_config, run_stage
    from indexer.embed import embed_items

    config = load_stage_config(config_json)
    run_stage("embed", config, embeddings, metrics,
              lambda cfg, out: embed_items(cfg, transformed.path, model.path, out))


def index_op(config_json: str, embeddings: Input[Dataset], index: Output[Artifact], metrics: Output[Metrics]):
    """ScaNN index (exact below the size threshold), recall vs exact and queries/s."""
    from components.runtime import load_stage_config, run_stage
    from indexer.build import build_index_stage

    config = load_stage_config(config_json)
    run_stage("index", config, index, metrics, lambda cfg, out: build_index_stage(cfg, embeddings.path, out))


def publish_op(config_json: str, store: str, run_id: str, job_name: str, ingested: Input[Dataset],
               transformed: Input[Dataset], model: Input[Model], evaluation: Input[Artifact],
               embeddings: Input[Dataset], index: Input[Artifact], summary: Output[Artifact],
               metrics: Output[Metrics]):
    """Quality gate, then an immutable version and an atomic CURRENT pointer; writes summary.json.

    ``run_id`` may be empty (scheduled / submitted runs): the pipeline job's name is used.
    """
    import os

    from components.runtime import load_stage_config, read_json, read_stage_record, run_stage
    from core.lineage import lineage_for
    from core.summary import build_summary, dumps
    from indexer.publish import gate_and_publish

    config = load_stage_config(config_json, {"publish.store": store})
    run_id = run_id or job_name  # cluster runs without an explicit id use the job's own name
    eval_metrics = read_json(evaluation.path, "metrics.json")
    fingerprint = read_json(ingested.path, "ingest_stats.json").get("fingerprint")

    def body(cfg, out):
        return gate_and_publish(cfg, transformed.path, model.path, embeddings.path, index.path,
                                eval_metrics, run_id, lineage_for(cfg, run_id, fingerprint))

    result = run_stage("publish", config, summary, metrics, body)
    stages = [read_stage_record(a.path) for a in (ingested, transformed, model, evaluation, embeddings, index)]
    stages.append(read_stage_record(summary.path))
    doc = build_summary(run_id, stages, eval_metrics, read_json(index.path, "index_metrics.json"), result)
    with open(os.path.join(summary.path, "summary.json"), "w") as fh:
        fh.write(dumps(doc))
