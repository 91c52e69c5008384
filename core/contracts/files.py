"""The names of every file and folder one stage writes and another reads, defined once.

Stages never import each other; they meet on disk (a local folder or a gs:// prefix). This
module is the one place those on-disk names live, so a producer and its consumers cannot drift
apart (tests/unit/core/contracts/test_contracts.py fails on a name retyped elsewhere in production code).
The typed JSON documents (metrics.json, stage.json, summary.json, manifest.json) are in
:mod:`core.contracts.records`; the transform output's reader handle is
:class:`trainer.artifacts.TransformedData`.

====================================  =============  =========================  ==============================
file (in the stage's folder)          written by     read by                    format
====================================  =============  =========================  ==============================
**ingest** (``ingested``)
``interactions.parquet``              ingest         transform                  one row per valid interaction
``items.parquet``, ``users.parquet``  ingest         transform                  one row per item / user
``ingest_stats.json``                 ingest         publish, reports           fingerprint, data_date, rows
``dead_letter.jsonl``                 ingest         reports                    a rejected row + reason a line
**transform** (``transformed``)
``<split>-*.tfrecord``                transform      train, evaluate, embed     Examples; ``RECORD_SPLITS``
``vocab/<feature>.tsv``               transform      train, evaluate, reports   token<TAB>count, count desc
``stats.json``                        transform      train, evaluate, publish   numeric, counts, split, vocab
``seen.jsonl``                        transform      evaluate, publish, serve   key + train/valid/test ids
``query_table.jsonl``                 transform      publish, serving           key -> raw query features
``items_display.jsonl``               transform      publish, reports           item_id + raw display fields
``cold_items.txt``                    transform      reports                    held-out item ids, sorted
**train** (``model``)
``query_tower/``, ``item_tower/``     train          evaluate, embed, publish   SavedModels
``heldout/<side>_tower/``             train (refit)  evaluate                   the early-stopped towers
``training.json``                     train          publish, reports           history, published_weights
``prerank/``                          train          evaluate, embed, publish   the cascade's pre-ranker
**evaluate** (``evaluation``)
``metrics.json``                      evaluate       publish, summary, reports  :class:`EvalMetrics`
**embed** (``embeddings``)
``item_embeddings.parquet``           embed          index, publish, reports    item_id, float32 [D]
``query_embeddings.parquet``          embed          index (tuning)             sampled query embeddings
``prerank/item_embeddings.parquet``   embed          publish                    pre-ranker item vectors
``query_vectors.parquet``             embed          publish, serving           every query-table key's vector
**index** (``index``)
``scann/``                            index          publish                    a serialized ScaNN searcher
``item_ids.txt``                      index          publish, serving           row i: id at position i
``index_metrics.json``                index          publish, summary, reports  kind, n_items, dims, params
``tuning.json`` / ``.md`` / ``.svg``  index          reports                    the leaves / reorder sweep
**every stage**
``stage.json``                        each stage     publish, UI, reports       :class:`StageRecord`
``stage_error.json``                  failed stage   UI, run records            :class:`StageError`
``report.html``, ``report.md``        each stage     UI, KFP                    the rendered report
**publish**, a local run
``summary.json``                      publish        local runner, UI, reports  :class:`RunSummary`
``run.json``, ``pipeline.log``        local runner   UI                         run status; runner output
**version store** (``<store>/``)
``versions/<id>/``                    publish        serving, evaluate (live)   see ``VERSION_*`` below
``versions/<id>/manifest.json``       publish        serving, UI, evaluate      :class:`VersionManifest`
``CURRENT``, ``store.lock``           publish, CLI   everyone                   the live id; the lock
``runs/<run_id>.json``                exit handler   UI, CLI                    one record per run
====================================  =============  =========================  ==============================

The classes named in the last column are :mod:`core.contracts.records`'. All relative paths use
``/``: join them with :func:`core.storage.join` (local and gs://).
"""

from __future__ import annotations

# -- ingest ------------------------------------------------------------------------------------
INTERACTIONS_TABLE, ITEMS_TABLE, USERS_TABLE = "interactions", "items", "users"
#: The ingested tables, in the order ingest validates them.
TABLES = (ITEMS_TABLE, USERS_TABLE, INTERACTIONS_TABLE)
PARQUET_SUFFIX = ".parquet"
INGEST_STATS_FILE = "ingest_stats.json"
DEAD_LETTER_FILE = "dead_letter.jsonl"

# -- transform ---------------------------------------------------------------------------------
#: The positive splits (every interaction lands in exactly one), in seen.jsonl's order.
SPLITS = ("train", "valid", "test")
TRAIN, VALID, TEST = SPLITS
#: Label-0 rows of the train split (never evaluated).
NEGATIVES_SPLIT = "train_negatives"
#: The catalog: one Example per item, beside the interaction splits.
ITEMS_SPLIT = "items"
#: Every TFRecord family the transform writes (``<name>-*.tfrecord``).
RECORD_SPLITS = (*SPLITS, NEGATIVES_SPLIT, ITEMS_SPLIT)
TFRECORD_SUFFIX = ".tfrecord"
VOCAB_DIR = "vocab"
VOCAB_SUFFIX = ".tsv"
TRANSFORM_STATS_FILE = "stats.json"
SEEN_FILE = "seen.jsonl"
QUERY_TABLE_FILE = "query_table.jsonl"
ITEMS_DISPLAY_FILE = "items_display.jsonl"
COLD_ITEMS_FILE = "cold_items.txt"

# -- train -------------------------------------------------------------------------------------
QUERY_TOWER_DIR = "query_tower"
ITEM_TOWER_DIR = "item_tower"
#: With train.refit, the early-stopped towers (evaluate scores them, not the refit ones).
HELDOUT_DIR = "heldout"
#: What TensorFlow names a SavedModel's graph file: its presence marks a complete export.
SAVED_MODEL_FILE = "saved_model.pb"
TRAINING_FILE = "training.json"
#: train.cascade's pre-ranker (trainer/prerank.py): ``prerank/query_tower/``, ``prerank/item_tower/`` and
#: ``prerank/prerank.json`` in the model folder; the embed stage writes
#: ``prerank/item_embeddings.parquet`` (its item vectors, flattened) in its folder, and a version holds
#: ``prerank/query_tower/``, ``prerank/item_embeddings.parquet`` and ``prerank/prerank.json``.
PRERANK_DIR = "prerank"
PRERANK_FILE = "prerank.json"

# -- evaluate / embed / index ------------------------------------------------------------------
METRICS_FILE = "metrics.json"
ITEM_EMBEDDINGS_FILE = "item_embeddings.parquet"
QUERY_EMBEDDINGS_FILE = "query_embeddings.parquet"
#: index.query_vectors: every query-table key through the published query tower (key str,
#: embedding list<float32>), served by key without running the tower.
QUERY_VECTORS_FILE = "query_vectors.parquet"
QUERY_VECTORS_KEY_COLUMN = "key"
SCANN_DIR = "scann"
ITEM_IDS_FILE = "item_ids.txt"
INDEX_METRICS_FILE = "index_metrics.json"
TUNING_FILE = "tuning.json"
TUNING_MARKDOWN_FILE = "tuning.md"
TUNING_SVG_FILE = "tuning.svg"
#: The embed stage's 2-D map of the embeddings (indexer/embedding_map.py), drawn by the index stage.
EMBEDDING_MAP_FILE = "embedding_map.json"
EMBEDDING_MAP_SVG_FILE = "embedding_map.svg"

# -- every stage, the run ----------------------------------------------------------------------
STAGE_FILE = "stage.json"
STAGE_ERROR_FILE = "stage_error.json"  # written instead when a stage fails
SUMMARY_FILE = "summary.json"  # in the publish artifact and in a local run's folder
RUN_FILE = "run.json"  # a local run's status record (pipelines/local_run.py)
PIPELINE_LOG = "pipeline.log"  # a local run's full runner output
REPORT_HTML_FILE = "report.html"  # each stage's rendered report, beside stage.json
REPORT_MARKDOWN_FILE = "report.md"
#: A local run's KFP outputs: ``<run>/kfp/<pipeline>-<ts>/<task>/<output>/``.
KFP_DIR = "kfp"
#: The scheduler's state, in the runs folder.
SCHEDULER_STATE_FILE = "scheduler.json"

# -- the version store -------------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
RUNS_DIR = "runs"
STORE_LOCK_FILE = "store.lock"
#: Inside a version: the index stage's searcher and ids under ``index/``.
VERSION_INDEX_DIR = "index"
VERSION_SCANN_DIR = f"{VERSION_INDEX_DIR}/{SCANN_DIR}"
VERSION_ITEM_IDS_FILE = f"{VERSION_INDEX_DIR}/{ITEM_IDS_FILE}"
#: item_id, display fields, embedding list<float32> [D], sorted by item_id.
VERSION_ITEMS_FILE = "items.parquet"
JSON_SUFFIX = ".json"


def table_file(table: str) -> str:
    """An ingested table's file name: ``<table>.parquet``."""
    return f"{table}{PARQUET_SUFFIX}"


def split_pattern(split: str) -> str:
    """The glob of a TFRecord family's shards, relative to the transform folder: ``<split>-*.tfrecord``.

    Raises:
        ValueError: ``split`` is not one of :data:`RECORD_SPLITS`.
    """
    check_split(split)
    return f"{split}-*{TFRECORD_SUFFIX}"


def check_split(split: str) -> str:
    """``split`` itself when it names a TFRecord family, else ValueError naming the known ones."""
    if split not in RECORD_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {RECORD_SPLITS}")
    return split


def vocab_file(feature: str) -> str:
    """A feature's vocabulary, relative to the transform folder: ``vocab/<feature>.tsv``."""
    return f"{VOCAB_DIR}/{feature}{VOCAB_SUFFIX}"


def tower_dir(side: str) -> str:
    """``query_tower`` or ``item_tower`` for ``side`` in {"query", "item"}."""
    towers = {"query": QUERY_TOWER_DIR, "item": ITEM_TOWER_DIR}
    if side not in towers:
        raise ValueError(f"unknown tower side {side!r}; expected 'query' or 'item'")
    return towers[side]


def prerank_path(*parts: str) -> str:
    """A path under the pre-ranker's folder: ``prerank/<parts...>`` (model, embeddings or version)."""
    return "/".join((PRERANK_DIR, *parts))


def heldout_tower_dir(side: str) -> str:
    """A refit run's early-stopped tower, relative to the model folder: ``heldout/<side>_tower``."""
    return f"{HELDOUT_DIR}/{tower_dir(side)}"


def run_record_file(run_id: str) -> str:
    """A run's record, relative to the store root: ``runs/<run_id>.json`` (the id is not checked here)."""
    return f"{RUNS_DIR}/{run_id}{JSON_SUFFIX}"


#: Every file / folder name above (for the guard test that no module retypes one).
ALL_NAMES = tuple(sorted({value for name, value in dict(globals()).items()
                          if name.isupper() and isinstance(value, str)}))
