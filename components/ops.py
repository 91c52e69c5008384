"""Component bodies. KFP serialises each function's source into the component, so each
one imports what it needs inside its body and does nothing but plumbing: parse the
config, call the stage's pure function, record timings and metrics.

Every function takes ``config_json`` (the validated :class:`core.config.Config` as JSON),
so the pipeline and every stage share one configuration.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output, PipelineTaskFinalStatus


def ingest_op(config_json: str, data_path: str, data_date: str, data_fingerprint: str, schedule_time: str,
              ingested: Output[Dataset], metrics: Output[Metrics],
              report: Output[HTML], report_markdown: Output[Markdown]):
    """Validate the run's raw data (``data_path``, or its ``date=`` partition); bad rows to a
    dead-letter file. ``data_fingerprint`` (may be empty) must match the data actually read."""
    from components.runtime import load_stage_config, run_stage
    from core.partitions import partition_path, resolve_data_date
    from features.ingest import ingest

    def body(cfg, out):
        date = resolve_data_date(cfg.data.partitioned, data_date, schedule_time, cfg.data.partition_lag_days)
        return ingest(cfg.with_overrides({"data.path": partition_path(cfg.data.path, date)}), out,
                      data_date=date, expected_fingerprint=data_fingerprint)

    config = load_stage_config(config_json, {"data.path": data_path})
    run_stage("ingest", config, ingested, metrics, body, (report, report_markdown))


def transform_op(config_json: str, ingested: Input[Dataset], transformed: Output[Dataset],
                 metrics: Output[Metrics],
                 report: Output[HTML], report_markdown: Output[Markdown]):
    """Beam: normalise, vocabularies, statistics, split, TFRecords."""
    from components.runtime import beam_location, beam_stage_config, load_stage_config, run_stage
    from features.transform import run_transform

    config = beam_stage_config(load_stage_config(config_json))
    run_stage("transform", config, transformed, metrics,
              lambda cfg, out: run_transform(cfg, beam_location(ingested, cfg), beam_location(transformed, cfg)),
              (report, report_markdown))


def train_op(config_json: str, store: str, transformed: Input[Dataset], model: Output[Model],
             metrics: Output[Metrics], report: Output[HTML], report_markdown: Output[Markdown]):
    """TFRS two-tower training with in-batch negatives; exports both towers. With
    train.warm_start it starts from the weights of ``store``'s live version."""
    from components.runtime import load_stage_config, run_stage
    from trainer.train import train_model

    config = load_stage_config(config_json, {"publish.store": store})
    run_stage("train", config, model, metrics, lambda cfg, out: train_model(cfg, transformed.path, out),
              (report, report_markdown))


def evaluate_op(config_json: str, store: str, transformed: Input[Dataset], model: Input[Model],
                evaluation: Output[Artifact], metrics: Output[Metrics],
                report: Output[HTML], report_markdown: Output[Markdown]):
    """Recall@K / nDCG@10 on the held-out split against the catalog, vs popularity and
    vs the live version of ``store`` (the same store publish writes to) on the same split."""
    from components.runtime import load_stage_config, run_stage
    from evaluation.evaluate import evaluate_model

    config = load_stage_config(config_json, {"publish.store": store})
    run_stage("evaluate", config, evaluation, metrics,
              lambda cfg, out: evaluate_model(cfg, transformed.path, model.path, out,
                                              live_store=cfg.publish.store), (report, report_markdown))


def embed_op(config_json: str, transformed: Input[Dataset], model: Input[Model],
             embeddings: Output[Dataset], metrics: Output[Metrics],
             report: Output[HTML], report_markdown: Output[Markdown]):
    """Beam batch inference of the item tower over the whole catalog."""
    from components.runtime import beam_location, beam_stage_config, load_stage_config, run_stage
    from indexer.embed import embed_items

    config = beam_stage_config(load_stage_config(config_json))
    run_stage("embed", config, embeddings, metrics,
              lambda cfg, out: embed_items(cfg, beam_location(transformed, cfg), beam_location(model, cfg),
                                           beam_location(embeddings, cfg)), (report, report_markdown))


def index_op(config_json: str, embeddings: Input[Dataset], index: Output[Artifact], metrics: Output[Metrics],
             report: Output[HTML], report_markdown: Output[Markdown]):
    """ScaNN index (exact below the size threshold), recall vs exact and queries/s."""
    from components.runtime import load_stage_config, run_stage
    from indexer.build import build_index_stage

    config = load_stage_config(config_json)
    run_stage("index", config, index, metrics, lambda cfg, out: build_index_stage(cfg, embeddings.path, out),
              (report, report_markdown))


def publish_op(config_json: str, store: str, run_id: str, job_name: str, ingested: Input[Dataset],
               transformed: Input[Dataset], model: Input[Model], evaluation: Input[Artifact],
               embeddings: Input[Dataset], index: Input[Artifact], summary: Output[Artifact],
               metrics: Output[Metrics],
               report: Output[HTML], report_markdown: Output[Markdown]):
    """Quality gate, then an immutable version and an atomic CURRENT pointer; writes summary.json.

    ``run_id`` may be empty (scheduled / submitted runs): the pipeline job's name is used.
    """
    import os

    from components.runtime import emit_report, load_stage_config, read_json, read_stage_record, run_stage
    from core import contracts
    from core.lineage import lineage_for
    from core.summary import build_summary
    from publishing.publish import gate_and_publish

    config = load_stage_config(config_json, {"publish.store": store})
    run_id = run_id or job_name  # cluster runs without an explicit id use the job's own name
    # Validated on read: a malformed metrics.json fails here, naming the file and the field.
    eval_metrics = contracts.read_metrics(os.path.join(evaluation.path, contracts.METRICS_FILE))
    ingest_stats = read_json(ingested.path, contracts.INGEST_STATS_FILE)
    lineage = lineage_for(config, run_id, ingest_stats.get("fingerprint"), ingest_stats.get("data_date"))

    def body(cfg, out):
        return gate_and_publish(cfg, transformed.path, model.path, embeddings.path, index.path,
                                eval_metrics, run_id, lineage)

    result = run_stage("publish", config, summary, metrics, body)
    stages = [read_stage_record(a.path) for a in (ingested, transformed, model, evaluation, embeddings, index)]
    stages.append(read_stage_record(summary.path))
    doc = build_summary(run_id, stages, eval_metrics.to_dict(), read_json(index.path, contracts.INDEX_METRICS_FILE),
                        result)
    contracts.write_summary(os.path.join(summary.path, contracts.SUMMARY_FILE), doc)
    emit_report("publish", summary.path, (report, report_markdown))  # after summary.json: it shows it too


def record_run_op(config_json: str, store: str, run_id: str, job_name: str, data_date: str, schedule_time: str,
                  status: PipelineTaskFinalStatus):
    """Exit handler: record the run's outcome in ``<store>/runs/``, whatever it was.

    It never touches CURRENT, so a failed run leaves the live version as it was.
    """
    from components.runtime import load_stage_config
    from core.partitions import PartitionError, resolve_data_date
    from run_records.exit_handler import record_final_status

    config = load_stage_config(config_json, {"publish.store": store})
    try:
        date = resolve_data_date(config.data.partitioned, data_date, schedule_time, config.data.partition_lag_days)
    except PartitionError:
        date = data_date or None  # the run failed on it; record what it was asked for
    record = record_final_status(config.publish.store, run_id or job_name, status.state, status.error_message,
                                 date, job_name)
    print(f"[twotower] run {record['run_id']}: {record['state']}, live version {record['live_version']}",
          flush=True)
