"""Embed stage: Beam batch inference of the item tower over the whole catalog.

Flow: ``items-*.tfrecord`` -> ParseItemExample -> BatchElements -> EmbedItemBatch
(the item tower loaded once per worker in ``setup``) -> collect -> one sorted
``item_embeddings.parquet``. The catalog's embeddings fit in memory at the sizes
this project targets (1M items x 64 float32 = 256 MB); collecting them into one
sorted file keeps the output deterministic and trivially loadable by the index build.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np

from core import storage
from core.beam import make_pipeline
from core.config import Config
from core.records import ITEM_KEY, decode_example, item_specs
from indexer.embeddings import load_embeddings, write_embeddings

ITEMS_PATTERN = "items-*.tfrecord"
#: Upper bound on items per tower call: large enough to amortise TF dispatch overhead,
#: small enough that one batch of raw features stays a few MB.
MAX_BATCH = 1024


class EmbedError(RuntimeError):
    """The catalog could not be embedded (empty catalog, duplicate ids, bad tower output)."""


def item_tower_path(model_dir: str) -> str:
    return storage.join(model_dir, "item_tower")


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
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
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


def embed_items(config: Config, transformed_dir: str, model_dir: str, out_dir: str) -> dict:
    """Embed every catalog item with ``model_dir/item_tower``.

    Args:
        transformed_dir: transform output holding ``items-*.tfrecord``.
        model_dir: trainer output holding ``item_tower/``.
        out_dir: where ``item_embeddings.parquet`` is written (local or gs://).
    Returns:
        {"n_items", "dims", "seconds" (wall clock), "items_per_second"}.
    Raises:
        EmbedError: empty catalog or duplicate item ids.
    """
    start = time.perf_counter()
    specs = item_specs(config.schema)
    with make_pipeline(config.transform, job_name=f"{config.pipeline.name}-embed") as p:
        (p
         | "ReadCatalog" >> beam.io.ReadFromTFRecord(storage.join(transformed_dir, ITEMS_PATTERN))
         | "Parse" >> beam.ParDo(ParseItemExample(specs))
         | "Batch" >> beam.BatchElements(min_batch_size=32, max_batch_size=MAX_BATCH)
         | "EmbedItemBatch" >> beam.ParDo(EmbedItemBatch(item_tower_path(model_dir)))
         | "Collect" >> beam.combiners.ToList()
         | "WriteParquet" >> beam.Map(_write_embeddings_sink, out_dir))
    seconds = time.perf_counter() - start

    ids, matrix = load_embeddings(out_dir)
    n, d = matrix.shape
    return {"n_items": int(n), "dims": int(d), "seconds": round(seconds, 3),
            "items_per_second": round(n / seconds, 1) if seconds > 0 else None}


def _write_embeddings_sink(pairs: Iterable[tuple[str, np.ndarray]], out_dir: str) -> None:
    """The pipeline's single output edge: one sorted parquet file."""
    from collections import Counter

    pairs = list(pairs)
    if not pairs:
        raise EmbedError("the catalog is empty: no items-*.tfrecord rows to embed")
    ids = [p[0] for p in pairs]
    dupes = sorted(i for i, c in Counter(ids).items() if c > 1)
    if dupes:
        raise EmbedError(f"duplicate item ids in the catalog TFRecords, e.g. {dupes[:5]}")
    write_embeddings(out_dir, ids, np.stack([p[1] for p in pairs]).astype(np.float32))
