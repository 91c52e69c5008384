"""Gate + publish stage: assemble a servable version and make it live if the gate passes.

A version folder (see :mod:`indexer.store`) holds::

    query_tower/         copy of the trainer's query tower SavedModel
    index/scann/         serialized ScaNN searcher;  index/item_ids.txt (row i = position i)
    items.parquet        item_id, config.schema.display_fields, embedding (list<float32>)
    prerank/             train.cascade's pre-ranker, when the gate kept it: query_tower/,
                         item_embeddings.parquet (its item vectors), prerank.json
    query_table.jsonl    key -> raw query features (from transform)
    seen.jsonl           key -> train/valid/test item ids (from transform)
    manifest.json        files + sha256, metrics, index metrics, gate decision, lineage,
                         and a "serving" section (below)

The manifest's "serving" section records what the query service needs to interpret
requests without the run config: the query key's name and type and the query
features' names and types (a history's ``max_length`` too), and ``defaults``: the value each
query feature takes when a request does not give it (a history-only request from a
user the query table does not know): the train mean for a numeric, "" otherwise, as the
transform fills a user missing from users.*. We store it rather than infer it from the tower's
inputs, because only the config knows which input is the key and whether it is free text.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from core import storage
from core.config import Config
from core.contracts import files as names
from core.contracts.records import EvalMetrics
from core.records import ITEM_KEY
from indexer.build import ITEM_IDS, METRICS, SCANN_DIR
from indexer.embeddings import load_embeddings
from publishing.gate import decide
from trainer.artifacts import query_inputs
from trainer.warm_start import WARM_DIR
from indexer.store import StoreError, VersionStore, utc_now

log = logging.getLogger(__name__)

# The version layout is core.contracts' (serving reads it with the same names).
QUERY_TOWER = names.QUERY_TOWER_DIR
INDEX = names.VERSION_INDEX_DIR
ITEMS = names.VERSION_ITEMS_FILE
QUERY_TABLE = names.QUERY_TABLE_FILE
SEEN = names.SEEN_FILE
ITEMS_DISPLAY = names.ITEMS_DISPLAY_FILE  # written by the transform


def _copy_tree(src: str, dest: str) -> None:
    """Copy a local or gs:// folder to a new local folder."""
    if not storage.exists(src):
        raise FileNotFoundError(f"publish: {src} does not exist")
    if storage.is_gcs(src):
        os.makedirs(dest, exist_ok=True)
        storage.download_tree(src, dest)
    else:
        shutil.copytree(src, dest)


def _copy_file(src: str, dest: str) -> None:
    data = storage.read_bytes(src)
    with open(dest, "wb") as fh:
        fh.write(data)


def read_display_rows(transformed_dir: str) -> dict[str, dict]:
    """item_id -> {item_id, display fields as ingested} from the transform's items_display.jsonl."""
    path = storage.join(transformed_dir, ITEMS_DISPLAY)
    rows = {}
    for line_no, line in enumerate(storage.iter_lines(path), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {line_no}: not valid JSON ({exc.msg})") from None
        rows[str(row[ITEM_KEY])] = row
    return rows


def write_items_table(config: Config, transformed_dir: str, embeddings_dir: str, dest: str) -> int:
    """Write items.parquet (item_id, display fields, embedding), sorted by item_id; returns N.

    Display values are the raw ingested ones (a person reads them), not the normalised
    text the towers see.

    Raises:
        ValueError: the display table and the embeddings disagree on which items exist.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_display_rows(transformed_dir)
    ids, matrix = load_embeddings(embeddings_dir)
    missing = sorted(set(rows) - set(ids))
    extra = sorted(set(ids) - set(rows))
    if missing or extra:
        raise ValueError(f"catalog and embeddings disagree: {len(missing)} items without embedding "
                         f"(e.g. {missing[:3]}), {len(extra)} embeddings without item (e.g. {extra[:3]})")
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    ids = [ids[i] for i in order]
    matrix = matrix[order]
    n, d = matrix.shape
    columns = {ITEM_KEY: pa.array(ids, type=pa.string())}
    for name in config.schema.display_fields:
        # pyarrow infers the column type (float64 for prices, string for titles; null stays null).
        columns[name] = pa.array([rows[i].get(name) for i in ids])
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    columns["embedding"] = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=pa.float32()))
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    with open(dest, "wb") as fh:
        fh.write(buf.getvalue())
    return n


def serving_section(config: Config, index_metrics: dict, stats: dict | None = None) -> dict:
    """What the query service needs to turn a request into tower inputs (``stats``: the
    transform's stats.json, for the numeric defaults)."""
    schema = config.schema
    return {
        **query_inputs(schema, stats),
        "display_fields": list(schema.display_fields),
        "index_kind": index_metrics.get("kind"),
        "reorder_k": (index_metrics.get("params") or {}).get("reorder_k"),
        "embedding_dims": index_metrics.get("dims"),
        "similarity": config.train.similarity,
        # index.query_vectors: the version's precomputed vector of every query-table key.
        "query_vectors": names.QUERY_VECTORS_FILE if config.index.query_vectors else None,
    }


def assemble_staging(config: Config, transformed_dir: str, model_dir: str, embeddings_dir: str,
                     index_dir: str, staging: str, with_prerank: bool = False) -> None:
    """Lay out every servable file of a version in the local folder ``staging`` (``with_prerank``:
    the cascade's pre-ranker too: its query tower, the embed stage's item vectors, prerank.json)."""
    if with_prerank:
        folder = os.path.join(staging, names.PRERANK_DIR)
        os.makedirs(folder)
        _copy_tree(storage.join(model_dir, names.prerank_path(QUERY_TOWER)), os.path.join(folder, QUERY_TOWER))
        _copy_file(storage.join(embeddings_dir, names.prerank_path(names.ITEM_EMBEDDINGS_FILE)),
                   os.path.join(folder, names.ITEM_EMBEDDINGS_FILE))
        _copy_file(storage.join(model_dir, names.prerank_path(names.PRERANK_FILE)),
                   os.path.join(folder, names.PRERANK_FILE))
    _copy_tree(storage.join(model_dir, QUERY_TOWER), os.path.join(staging, QUERY_TOWER))
    if config.train.warm_start:  # the weights the next warm-started run starts from
        _copy_tree(storage.join(model_dir, WARM_DIR), os.path.join(staging, WARM_DIR))
    os.makedirs(os.path.join(staging, INDEX))
    _copy_tree(storage.join(index_dir, SCANN_DIR), os.path.join(staging, INDEX, SCANN_DIR))
    _copy_file(storage.join(index_dir, ITEM_IDS), os.path.join(staging, INDEX, ITEM_IDS))
    write_items_table(config, transformed_dir, embeddings_dir, os.path.join(staging, ITEMS))
    _copy_file(storage.join(transformed_dir, QUERY_TABLE), os.path.join(staging, QUERY_TABLE))
    if config.index.query_vectors:  # the embed stage's vector of every query-table key
        _copy_file(storage.join(embeddings_dir, names.QUERY_VECTORS_FILE),
                   os.path.join(staging, names.QUERY_VECTORS_FILE))
    _copy_file(storage.join(transformed_dir, SEEN), os.path.join(staging, SEEN))


def gate_and_publish(config: Config, transformed_dir: str, model_dir: str, embeddings_dir: str,
                     index_dir: str, metrics: "dict | EvalMetrics", run_id: str, lineage: dict) -> dict:
    """Gate the run; when it passes publish a new live version and apply retention.

    Args:
        metrics: evaluate's metrics.json (:func:`core.contracts.records.read_metrics`), or its
            content as a dict (recall_at_10, popularity.recall_at_10, ...).
        lineage: data fingerprint, config JSON, code version, run id (stored verbatim).
    Returns:
        {"published": bool, "version": str | None, "reasons": [str], "store": str,
         "deleted": [str] (gc'd versions; empty when not published),
         "gc_error": str | None (why retention did not run after a publish)}.
        When the gate fails the store is not touched at all.
    """
    if isinstance(metrics, EvalMetrics):
        metrics = metrics.to_dict()  # the gate and the manifest take the document as written
    decision = decide(config, metrics)
    store_root = config.publish.store
    result = {"published": False, "version": None, "reasons": list(decision.reasons),
              "store": store_root, "deleted": [], "gc_error": None, "baseline": decision.baseline}
    if not decision.publish:
        return result

    store = VersionStore(store_root)
    stale = _stale_baseline(decision.baseline, store) if "live" in metrics else None
    if stale:
        result["reasons"].append(stale)
        return result
    index_metrics = json.loads(storage.read_text(storage.join(index_dir, METRICS)))
    stats = json.loads(storage.read_text(storage.join(transformed_dir, names.TRANSFORM_STATS_FILE)))
    version = store.new_version_id()
    with tempfile.TemporaryDirectory(prefix="twotower-publish-") as tmp:
        staging = os.path.join(tmp, version)
        os.makedirs(staging)
        assemble_staging(config, transformed_dir, model_dir, embeddings_dir, index_dir, staging,
                         with_prerank=bool(decision.cascade))
        manifest = {
            "run_id": run_id,
            "created": utc_now().isoformat(timespec="seconds"),
            "metrics": metrics,
            "index": index_metrics,
            "gate": decision.to_dict(),
            "lineage": lineage,
            # Which splits the published weights trained on (training.json): a refit version's
            # saw the test split, so the next run's live comparison leaves those keys out.
            "published_weights": _published_weights(model_dir),
            "serving": {**serving_section(config, index_metrics, stats),
                        "cascade": _cascade_section(model_dir) if decision.cascade else None},
        }
        store.publish(version, staging, manifest)
    deleted, gc_error = _retention(store, config.publish.keep_versions)
    result.update(published=True, version=version, deleted=deleted, gc_error=gc_error)
    return result


def _cascade_section(model_dir: str) -> dict:
    """The manifest's ``serving.cascade``: how many candidates the pre-ranker re-scores and its
    interaction block's shape, scale, bias and retrieval-score weight (core/prerank.py)."""
    from core.prerank import InteractionShape

    doc = json.loads(storage.read_text(storage.join(model_dir, names.prerank_path(names.PRERANK_FILE))))
    return {"top_n": int(doc["top_n"]), **InteractionShape.from_dict(doc).to_dict()}


def _published_weights(model_dir: str) -> dict:
    """training.json's ``published_weights`` (train only when absent: an older trainer)."""
    path = storage.join(model_dir, names.TRAINING_FILE)
    only_train = {"mode": "none", "splits": [names.TRAIN]}
    if not storage.exists(path):
        return only_train
    return json.loads(storage.read_text(path)).get("published_weights") or only_train


def _retention(store: VersionStore, keep: int) -> tuple[list[str], str | None]:
    """gc after a publish: (deleted ids, None), or ([], why) when gc could not run.

    The new version is live either way, so a gc that cannot run (the store lock held past
    its timeout by an operator, a damaged CURRENT) is reported, not raised: it must not
    turn a successful publish into a failed run. The next publish or ``index gc`` retries it.
    """
    try:
        return store.gc(keep), None
    except StoreError as exc:
        log.warning("published, but retention (gc keep=%d) did not run: %s", keep, exc)
        return [], f"retention (keep {keep}) did not run: {exc}"


def _stale_baseline(baseline: dict | None, store: VersionStore) -> str | None:
    """A reason to refuse when CURRENT moved after evaluation compared against it, else None.

    The gate judged the candidate against the version that was live at evaluate time; if
    another run published since, that judgement no longer holds.
    """
    evaluated_against = baseline["version"] if baseline else None
    live_now = store.current()
    if live_now == evaluated_against:
        return None
    return (f"the live version changed since evaluation (compared against {evaluated_against or 'none'}, "
            f"now {live_now}): not publishing on a stale comparison; rerun to compare against {live_now}")
