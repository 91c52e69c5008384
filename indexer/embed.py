"""Embed stage: Beam batch inference of the item tower over the whole catalog.

Flow: ``items-*.tfrecord`` -> ParseItemExample -> BatchElements -> EmbedItemBatch
(the item tower loaded once per worker in ``setup``) -> collect -> one sorted
``item_embeddings.parquet``. The catalog's embeddings fit in memory at the sizes
this project targets (1M items x 64 float32 = 256 MB); collecting them into one
sorted file keeps the output deterministic and trivially loadable by the index build.

With ``index.query_vectors`` the same pipeline also reads ``query_table.jsonl`` -> BatchElements
-> EmbedQueryRows (the query tower, each row built by the query service's own rules) ->
``query_vectors.parquet``: every known key's vector, which the version carries so a request by key
is answered without running the tower.

After the catalog, a seeded sample of real queries (distinct keys of the valid split, else
test, else train; :mod:`core.queries`) goes through ``model_dir/query_tower`` into
``query_embeddings.parquet``: ``index.tune_queries`` rows for the index tuner and a disjoint
``index.eval_queries`` for the recall the index stage reports. The index must be tuned on the
distribution it will serve, and only this stage has both the transformed data and the model
(so the index stage needs no new pipeline input). A few thousand queries at most: one
in-process pass, no Beam.
"""

from __future__ import annotations

import json
import time
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np

from core import storage
from core.beam import make_pipeline
from core.config import Config
from core.contracts import files as names
from core.queries import first_split_with_queries
from core.records import ITEM_KEY, decode_example, item_specs
from core.sampling import ranked_order
from indexer.embeddings import EVAL, TUNE, load_embeddings, write_embeddings, write_query_embeddings

ITEMS_PATTERN = names.split_pattern(names.ITEMS_SPLIT)
#: Upper bound on items per tower call: large enough to amortise TF dispatch overhead,
#: small enough that one batch of raw features stays a few MB.
MAX_BATCH = 1024
#: Seed of the query sample: fixed, so reruns on the same data tune on the same queries.
QUERY_SAMPLE_SEED = 0


class EmbedError(RuntimeError):
    """The catalog could not be embedded (empty catalog, duplicate ids, bad tower output)."""


def item_tower_path(model_dir: str) -> str:
    return storage.join(model_dir, names.ITEM_TOWER_DIR)


def query_tower_path(model_dir: str) -> str:
    return storage.join(model_dir, names.QUERY_TOWER_DIR)


class ParseItemExample(beam.DoFn):
    """Serialized catalog tf.train.Example -> {feature name: raw value}."""

    def __init__(self, specs):
        self._specs = specs

    def process(self, data: bytes) -> Iterator[dict]:
        yield decode_example(data, self._specs)


class EmbedItemBatch(beam.DoFn):
    """A list of item rows -> (item_id, float32 [D] vector) per row."""

    def __init__(self, tower_path: str):
        self._tower_path = tower_path
        self._tower = None
        self._items = beam.metrics.Metrics.counter("embed", "items")

    def setup(self) -> None:
        # Once per worker, not per bundle: loading a SavedModel takes seconds.
        from core.towers import Tower

        self._tower = Tower(self._tower_path)

    def process(self, rows: list[dict]) -> Iterator[tuple[str, np.ndarray]]:
        # The tower takes only the inputs it was trained on (a subset of the catalog columns).
        features = {name: [row[name] for row in rows] for name in self._tower.input_names}
        vectors = self._tower.embed(features)
        if vectors.shape[0] != len(rows):
            raise EmbedError(f"item tower returned {vectors.shape[0]} rows for a batch of {len(rows)}")
        self._items.inc(len(rows))
        for row, vec in zip(rows, vectors):
            yield str(row[ITEM_KEY]), vec


class EmbedQueryRows(beam.DoFn):
    """A list of query-table rows -> (key, float32 [D] vector) per row (``index.query_vectors``).

    Each row becomes the tower's inputs by :class:`serving.query_inputs.TowerInputs`, the rules
    the query service applies to a request by key, so the vector is the one serving would
    compute. A row serving could not embed either (a feature missing or malformed) is skipped
    and counted (``embed/query_rows_skipped``); serving answers that key through the tower and
    reports the problem there.
    """

    def __init__(self, tower_path: str, serving: dict, key: str):
        self._tower_path, self._serving, self._key = tower_path, serving, key
        self._tower = None
        self._inputs = None
        self._embedded = beam.metrics.Metrics.counter("embed", "query_rows")
        self._skipped = beam.metrics.Metrics.counter("embed", "query_rows_skipped")

    def setup(self) -> None:
        from core.towers import Tower

        self._tower = Tower(self._tower_path)

    def process(self, rows: list[dict], catalog: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        from serving.query_inputs import RequestError, TowerInputs

        if self._inputs is None:  # the catalog side input is the same for every bundle
            self._inputs = TowerInputs.of(self._serving, self._tower.input_names, frozenset(catalog))
        keys, built = [], []
        for row in rows:
            try:
                if any(row.get(n) is None for n in self._inputs.input_names):
                    raise RequestError("a feature is missing")
                built.append(self._inputs.build({n: row[n] for n in self._inputs.input_names})[0])
                keys.append(str(row[self._key]))
            except RequestError:
                self._skipped.inc()
        if not built:
            return
        vectors = self._tower.embed({n: [b[n] for b in built] for n in self._inputs.input_names})
        if vectors.shape[0] != len(built):
            raise EmbedError(f"query tower returned {vectors.shape[0]} rows for a batch of {len(built)}")
        self._embedded.inc(len(built))
        yield from zip(keys, vectors)


def embed_items(config: Config, transformed_dir: str, model_dir: str, out_dir: str) -> dict:
    """Embed every catalog item with ``model_dir/item_tower``.

    Args:
        transformed_dir: transform output holding ``items-*.tfrecord``.
        model_dir: trainer output holding ``item_tower/``.
        out_dir: where ``item_embeddings.parquet`` (and, when the transform output has
            interaction splits, ``query_embeddings.parquet``; with ``index.query_vectors``,
            ``query_vectors.parquet``) is written (local or gs://); with a
            pre-ranker (``model_dir/prerank/item_tower``, train.cascade) also
            ``prerank/item_embeddings.parquet``, its item vectors flattened [M * d], from the same
            parsed catalog batches.
    Returns:
        {"n_items", "dims", "seconds" (wall clock, catalog), "items_per_second", and from
        :func:`embed_queries`: "query_split", "n_tune_queries", "n_eval_queries", "query_seconds";
        "n_query_vectors" with ``index.query_vectors``}.
    Raises:
        EmbedError: empty catalog, duplicate item ids, or query vectors of another width.
    """
    start = time.perf_counter()
    specs = item_specs(config.schema)
    prerank_tower = storage.join(model_dir, names.prerank_path(names.ITEM_TOWER_DIR))
    with_prerank = storage.exists(storage.join(prerank_tower, names.SAVED_MODEL_FILE))
    with make_pipeline(config.transform, job_name=f"{config.pipeline.name}-embed") as p:
        batches = (p
                   | "ReadCatalog" >> beam.io.ReadFromTFRecord(storage.join(transformed_dir, ITEMS_PATTERN))
                   | "Parse" >> beam.ParDo(ParseItemExample(specs))
                   | "Batch" >> beam.BatchElements(min_batch_size=32, max_batch_size=MAX_BATCH))
        (batches
         | "EmbedItemBatch" >> beam.ParDo(EmbedItemBatch(item_tower_path(model_dir)))
         | "Collect" >> beam.combiners.ToList()
         | "WriteParquet" >> beam.Map(_write_embeddings_sink, out_dir))
        if config.index.query_vectors:  # both towers frozen: every known key's vector, served by key
            catalog = (batches | "ItemIds" >> beam.FlatMap(lambda rows: [str(r[ITEM_KEY]) for r in rows])
                       | "CollectItemIds" >> beam.combiners.ToList())
            (p
             | "ReadQueryTable" >> beam.io.ReadFromText(storage.join(transformed_dir, names.QUERY_TABLE_FILE))
             | "ParseQueryRow" >> beam.Map(json.loads)
             | "BatchQueryRows" >> beam.BatchElements(min_batch_size=32, max_batch_size=MAX_BATCH)
             | "EmbedQueryRows" >> beam.ParDo(EmbedQueryRows(query_tower_path(model_dir), _serving_inputs(config, transformed_dir),
                                                              config.schema.query_key),
                                              beam.pvalue.AsSingleton(catalog))
             | "CollectQueryVectors" >> beam.combiners.ToList()
             | "WriteQueryVectors" >> beam.Map(_write_query_vectors_sink, out_dir))
        if with_prerank:  # train.cascade: the pre-ranker's item side, precomputed like the embeddings
            (batches
             | "EmbedPreRankBatch" >> beam.ParDo(EmbedItemBatch(prerank_tower))
             | "CollectPreRank" >> beam.combiners.ToList()
             | "WritePreRankParquet" >> beam.Map(_write_embeddings_sink, storage.join(out_dir, names.PRERANK_DIR)))
    seconds = time.perf_counter() - start

    ids, matrix = load_embeddings(out_dir)
    n, d = matrix.shape
    queries = embed_queries(config, transformed_dir, model_dir, out_dir)
    if queries["dims"] not in (None, d):
        raise EmbedError(f"query tower emits {queries['dims']}-d vectors but the item tower {d}-d")
    del queries["dims"]
    write_embedding_map(config, transformed_dir, ids, matrix, out_dir)
    out = {"n_items": int(n), "dims": int(d), "seconds": round(seconds, 3),
           "items_per_second": round(n / seconds, 1) if seconds > 0 else None, **queries}
    if config.index.query_vectors:
        from indexer.embeddings import KEY_COLUMN

        keys, vectors = load_embeddings(out_dir, names.QUERY_VECTORS_FILE, KEY_COLUMN)
        if len(keys) and vectors.shape[1] != d:
            raise EmbedError(f"query tower emits {vectors.shape[1]}-d vectors but the item tower {d}-d")
        out["n_query_vectors"] = len(keys)
    return out


def split_sample_sizes(available: int, n_tune: int, n_eval: int) -> tuple[int, int]:
    """(tune, eval) sample sizes out of ``available`` distinct queries, disjoint.

    When fewer than ``n_tune + n_eval`` exist both shrink in proportion (each keeps at least
    one while two or more queries exist), so a small split still gives the tuner most rows.
    """
    if available >= n_tune + n_eval:
        return n_tune, n_eval
    if available < 2:
        return available, 0
    tune = min(available - 1, max(1, int(round(available * n_tune / (n_tune + n_eval)))))
    return tune, available - tune


def embed_queries(config: Config, transformed_dir: str, model_dir: str, out_dir: str) -> dict:
    """Sample real queries, embed them with ``model_dir/query_tower``, write ``query_embeddings.parquet``.

    The sample is seeded (:data:`QUERY_SAMPLE_SEED`, :func:`core.sampling.ranked_order`, the sampler
    evaluation uses): ``index.tune_queries`` rows with purpose
    "tune" and a disjoint ``index.eval_queries`` with purpose "eval", each in first-seen order.
    Returns:
        {"query_split" (the split read, or None), "n_tune_queries", "n_eval_queries",
        "query_seconds", "dims" (query vector width, None without queries)}. Without any
        interaction split nothing is written and the index stage uses stand-in queries.
    """
    start = time.perf_counter()
    split, keys, features = first_split_with_queries(config.schema, transformed_dir)
    if not keys:
        return {"query_split": None, "n_tune_queries": 0, "n_eval_queries": 0, "query_seconds": 0.0,
                "dims": None}
    n_tune, n_eval = split_sample_sizes(len(keys), config.index.tune_queries, config.index.eval_queries)
    order = ranked_order(keys, QUERY_SAMPLE_SEED)  # evaluation's sampler (core.sampling)
    tune_rows, eval_rows = np.sort(order[:n_tune]), np.sort(order[n_tune:n_tune + n_eval])
    rows = np.concatenate([tune_rows, eval_rows])

    from core.towers import Tower

    tower = Tower(query_tower_path(model_dir))
    # The tower takes a subset of the query features; an input outside them is an export bug.
    missing = [name for name in tower.input_names if name not in features]
    if missing:
        raise EmbedError(f"query tower inputs {missing} are not query features of the schema")
    parts = [tower.embed({name: features[name][rows[s:s + MAX_BATCH]] for name in tower.input_names})
             for s in range(0, len(rows), MAX_BATCH)]
    vectors = np.concatenate(parts).astype(np.float32)
    if vectors.shape[0] != len(rows):
        raise EmbedError(f"query tower returned {vectors.shape[0]} rows for {len(rows)} queries")
    write_query_embeddings(out_dir, [keys[i] for i in rows], [split] * len(rows),
                           [TUNE] * len(tune_rows) + [EVAL] * len(eval_rows), vectors)
    return {"query_split": split, "n_tune_queries": int(len(tune_rows)), "n_eval_queries": int(len(eval_rows)),
            "query_seconds": round(time.perf_counter() - start, 3), "dims": int(vectors.shape[1])}


def write_embedding_map(config: Config, transformed_dir: str, ids: list[str], matrix: np.ndarray,
                        out_dir: str) -> None:
    """``embedding_map.json`` (indexer/embedding_map.py) of the catalog and the "eval" queries
    written beside them, for the index stage to draw."""
    from indexer.embedding_map import MAP_FILE, embedding_map
    from indexer.embeddings import load_query_embeddings

    queries = load_query_embeddings(out_dir)
    keys, vectors, split = [], np.zeros((0, matrix.shape[1]), np.float32), None
    if queries is not None:
        rows = [i for i, p in enumerate(queries.purpose) if p == EVAL]
        keys, vectors = [queries.keys[i] for i in rows], queries.matrix[rows]
        split = queries.split[rows[0]] if rows else None
    doc = embedding_map(config, transformed_dir, ids, matrix, keys, vectors, split)
    storage.write_text(storage.join(out_dir, MAP_FILE), json.dumps(doc))


def _serving_inputs(config: Config, transformed_dir: str) -> dict:
    """The serving section's query-feature part (publishing/publish.py writes the same into the
    manifest): feature types, history length and numeric defaults, for :class:`EmbedQueryRows`."""
    from trainer.artifacts import query_inputs

    stats = json.loads(storage.read_text(storage.join(transformed_dir, names.TRANSFORM_STATS_FILE)))
    section = query_inputs(config.schema, stats)
    return {"query_features": section["query_features"], "defaults": section["defaults"]}


def _write_query_vectors_sink(pairs: Iterable[tuple[str, np.ndarray]], out_dir: str) -> None:
    """``query_vectors.parquet``: one sorted file (an empty query table writes an empty one)."""
    from indexer.embeddings import KEY_COLUMN

    pairs = list(pairs)
    matrix = np.stack([p[1] for p in pairs]).astype(np.float32) if pairs else np.zeros((0, 0), np.float32)
    write_embeddings(out_dir, [p[0] for p in pairs], matrix, names.QUERY_VECTORS_FILE, KEY_COLUMN)


def _write_embeddings_sink(pairs: Iterable[tuple[str, np.ndarray]], out_dir: str) -> None:
    """The pipeline's single output edge: one sorted parquet file."""
    from collections import Counter

    pairs = list(pairs)
    if not pairs:
        raise EmbedError(f"the catalog is empty: no {ITEMS_PATTERN} rows to embed")
    ids = [p[0] for p in pairs]
    dupes = sorted(i for i, c in Counter(ids).items() if c > 1)
    if dupes:
        raise EmbedError(f"duplicate item ids in the catalog TFRecords, e.g. {dupes[:5]}")
    write_embeddings(out_dir, ids, np.stack([p[1] for p in pairs]).astype(np.float32))
