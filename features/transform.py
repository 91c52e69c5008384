"""Transform: the Apache Beam pipeline from ingested tables to training TFRecords.

Input (``ingested_dir``, the ingest stage's folder): ``interactions.parquet``,
``items.parquet`` and, for user-keyed data with user features, ``users.parquet``.

Output (``out_dir``, see docs/ARCHITECTURE.md "transform"):

- ``train-*.tfrecord``, ``valid-*.tfrecord``, ``test-*.tfrecord`` (positives only) and
  ``train_negatives-*.tfrecord`` (label-0 rows), one ``core.records.interaction_specs``
  Example per interaction (a weighted schema's carry the ingested ``weight``);
- ``items-*.tfrecord``: one ``core.records.item_specs`` Example per catalog item;
- ``query_table.jsonl``, ``seen.jsonl``, ``items_display.jsonl``, ``vocab/<feature>.tsv``,
  ``cold_items.txt``, ``stats.json``.

Graph (I/O only at the edges)::

    items ─ NormalizeFeatures ─ ComputeNumericStats(catalog) ─ FillNumerics ─┬─ items TFRecords
                                                                              ├─ item vocabularies
    interactions ─ NormalizeFeatures ─ ClassifyLabels ─ SplitInteractions     │
         (label-0 rows -> train_negatives; cold items: positives -> test,     │
          label-0 rows dropped; one collection, no Flatten)                   │
         ─ JoinUserFeatures(users) ─ JoinItemFeatures ◄──────────────────────┘
         ─ ComputeNumericStats(train rows) ─ FillNumerics ─ EncodeBySplit ─ split TFRecords
    BuildVocabulary + seen + query table + stats ─ WriteTextFiles (one sink, one element per file)

Feature cleaning is core/cleaning.py's, the rules the query service applies to requests:
text -> ``normalize_text``; id / categorical -> NFC, trimmed string ("" when missing);
multi-categorical -> values split on ``|``, each cleaned, empties dropped, re-joined; numeric
-> float, missing filled with the mean of the train split (query side) or of the catalog
(item side).

Vocabularies (token<TAB>count, count desc then token asc): query features counted over
train-split rows, item features over the catalog (one count per item), ``item_id`` =
every catalog item with its train frequency (0 allowed; the file is never cut, it is the
popularity table). Cuts (:func:`vocab_policy`): categorical / multi-categorical / text
keep ``vocab_min_count`` and ``max_vocab_size``; id features (type ``id``) keep every id
seen, whatever its count, unless ``max_id_vocab_size`` caps them (item_id: the cap bounds
the items that get an id row, the file still lists the catalog). Per feature,
``stats.json`` ``vocab_coverage`` records distinct values, kept, folded and, for ids, the
train interactions the fold affects; a fold is logged (:func:`warn_folded_ids`).
``seen.jsonl`` lists each key's positives per split (unique, sorted).

Keys: the query key is cleaned like any other feature of its type, so the ``key`` in
``seen.jsonl``, the key in ``query_table.jsonl`` and the value in the TFRecords agree
(for a text key that is the normalised query).

Cold items (``transform.cold_item_fraction`` > 0): a stable hashed fraction of the
catalog (``item_bucket(item_id, seed) < fraction``, md5 like the hashed split) is held
out of training entirely: every positive of a cold item goes to test, its label-0 rows
are dropped (never in train_negatives), and the split (leave-last-out ordering or hash)
runs on the remaining positives only. Cold items stay in the catalog
(``items-*.tfrecord``, item feature vocabularies) with train count 0 in
``vocab/item_id.tsv``; ``cold_items.txt`` lists them (one id per line, sorted; empty
when the fraction is 0) and ``stats.json`` counts them in ``counts.cold_items``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import time
import uuid
from typing import Iterable, Optional

import numpy as np

from core import cleaning, history, storage
from core.config import USER_KEY, Config, FeatureSpec, SchemaConfig
from core.contracts import files as contract
from core.records import ITEM_KEY, WEIGHT_KEY, encode_example, interaction_specs, is_float, item_specs
from core.text import tokenize
from features.errors import TransformError

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.options.value_provider import StaticValueProvider

log = logging.getLogger(__name__)

KEY = "_key"  # cleaned query key carried on every interaction row
SPLIT = "_split"  # split name carried on every interaction row
# The output's names are core.contracts' (the trainer, evaluate, embed and publish read them).
SPLITS = contract.SPLITS
NEGATIVES = contract.NEGATIVES_SPLIT
#: An id cap folding more than this share of a feature's train interactions is a log warning.
FOLDED_WARN_SHARE = 0.01
STATS_FILE, SEEN_FILE, QUERY_TABLE_FILE = contract.TRANSFORM_STATS_FILE, contract.SEEN_FILE, contract.QUERY_TABLE_FILE
COLD_ITEMS_FILE = contract.COLD_ITEMS_FILE
#: Raw (un-normalised) display fields per item, for people reading query results.
ITEMS_DISPLAY_FILE = contract.ITEMS_DISPLAY_FILE
_NUMERIC_EMPTY = {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "count": 0}


# --------------------------------------------------------------------------- entry point


def run_transform(config: Config, ingested_dir: str, out_dir: str) -> dict:
    """Run the Beam transform and return ``stats.json`` plus ``seconds``.

    Returns:
        ``{"numeric": {name: {"mean","std","min","max","count"}}, "counts": {"train",
        "valid", "test", "train_negatives", "items", "queries", "cold_items"}, "split": str,
        "vocab_sizes": {feature: int}, "vocab_coverage": {feature: {...}} (see
        :func:`plan_vocab`), "seconds": float, "beam_workers": int (in-process runner only:
        ``transform.direct_num_workers``)}``. An id cap that folded ids is logged
        (a warning above :data:`FOLDED_WARN_SHARE` of the feature's train interactions).

    Raises:
        TransformError: ``leave_last_out`` requested without a timestamp column, or an
            input table is missing.
    """
    started = time.time()
    inputs = _input_paths(config.schema, ingested_dir)
    split = resolve_split(config.transform.split, inputs[contract.INTERACTIONS_TABLE])
    history = config.schema.history_feature
    if history is not None and "timestamp" not in _parquet_columns(inputs[contract.INTERACTIONS_TABLE]):
        raise TransformError(f"{inputs['interactions']}: the history feature {history.name!r} needs a "
                             f"timestamp column (a history is the items before each interaction)")
    if config.schema.weighted and WEIGHT_KEY not in _parquet_columns(inputs[contract.INTERACTIONS_TABLE]):
        raise TransformError(f"{inputs['interactions']}: the schema is weighted (schema.weight_column / "
                             f"schema.action_weights) but the ingested interactions have no {WEIGHT_KEY!r} "
                             f"column: ingest again with this config")
    if not storage.is_gcs(out_dir):
        # Local renames do not create parent folders.
        os.makedirs(os.path.join(out_dir, contract.VOCAB_DIR), exist_ok=True)
    temp_dir = storage.join(out_dir, f".beam-temp-{uuid.uuid4().hex}")
    rows = _parquet_rows(inputs[contract.INTERACTIONS_TABLE])
    encoders = describe_encoders(config.schema)
    try:
        with make_transform_pipeline(config) as pipeline:
            build_pipeline(pipeline, config, inputs, out_dir, split, temp_dir, encoders)
    finally:
        if storage.exists(temp_dir):
            storage.delete_tree(temp_dir)
    stats = json.loads(storage.read_text(storage.join(out_dir, STATS_FILE)))
    check_rows_conserved(config, inputs[contract.INTERACTIONS_TABLE], rows, stats["counts"])
    warn_folded_ids(stats["vocab_coverage"])
    stats["seconds"] = round(time.time() - started, 3)
    from core.beam import IN_PROCESS

    if config.transform.runner == IN_PROCESS:
        stats["beam_workers"] = config.transform.direct_num_workers
    return stats


def check_rows_conserved(config: Config, path: str, rows: int, counts: dict) -> None:
    """Every interaction read must land in exactly one output: train, valid, test or
    train_negatives. The only rows the transform may drop are label-1 rows under
    ``data.min_rating`` and label-0 rows of cold items (``transform.cold_item_fraction``),
    so with neither set the outputs must add up to the input exactly, and never exceed it.

    Raises:
        TransformError: rows were lost or duplicated (a runner fault: a Beam runner must not
            drop data silently; the outputs are not to be used).
    """
    written = sum(int(counts.get(name, 0)) for name in (*SPLITS, NEGATIVES))
    may_drop = config.data.min_rating is not None or config.transform.cold_item_fraction > 0.0
    if written > rows or (written < rows and not may_drop):
        raise TransformError(
            f"{path}: {rows:,} interactions read but {written:,} written to the splits "
            f"({', '.join(f'{n} {int(counts.get(n, 0)):,}' for n in (*SPLITS, NEGATIVES))}): "
            f"{'lost' if written < rows else 'duplicated'} {abs(rows - written):,} rows in the Beam runner "
            f"(transform.direct_num_workers={config.transform.direct_num_workers}, runner "
            f"{config.transform.runner}); nothing downstream may use these outputs")


def make_transform_pipeline(config: Config):
    from core.beam import make_pipeline

    return make_pipeline(config.transform, job_name="twotower-transform")


def _input_paths(schema: SchemaConfig, ingested_dir: str) -> dict[str, Optional[str]]:
    paths: dict[str, Optional[str]] = {}
    for table in (contract.INTERACTIONS_TABLE, contract.ITEMS_TABLE, contract.USERS_TABLE):
        path = storage.join(ingested_dir, contract.table_file(table))
        if storage.exists(path):
            paths[table] = path
        elif table == contract.USERS_TABLE:
            paths[table] = None
        else:
            raise TransformError(f"{path}: not found (run ingest first)")
    if uses_users_table(schema) and paths[contract.USERS_TABLE] is None:
        users = storage.join(ingested_dir, contract.table_file(contract.USERS_TABLE))
        raise TransformError(f"{users}: not found, but the schema "
                             f"declares user features {[f.name for f in schema.user_features]}")
    return paths


def uses_users_table(schema: SchemaConfig) -> bool:
    """User features are looked up in users.* only for user-keyed data."""
    return schema.query_key == USER_KEY and bool(schema.user_features)


def resolve_split(method: str, interactions_path: str) -> str:
    """``auto`` -> ``leave_last_out`` when the interactions carry a timestamp, else ``hashed``."""
    has_ts = "timestamp" in _parquet_columns(interactions_path)
    if method == "auto":
        return "leave_last_out" if has_ts else "hashed"
    if method == "leave_last_out" and not has_ts:
        raise TransformError(f"{interactions_path}: transform.split=leave_last_out needs a timestamp column")
    return method


def _parquet_rows(path: str) -> int:
    """Rows of a parquet file, from its footer."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as fh:
        return int(pq.ParquetFile(fh).metadata.num_rows)


def _parquet_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as fh:
        return list(pq.read_schema(fh).names)


# --------------------------------------------------------------------------- feature cleaning


def clean_value(spec: FeatureSpec, value: object):
    """One raw cell -> its cleaned form (core/cleaning.py: str, or float with NaN for a
    missing numeric)."""
    return cleaning.clean_value(spec.type, value, spec.dims)


def feature_tokens(spec: FeatureSpec, value: object, max_tokens: int) -> list[str]:
    """Vocabulary entries of one cleaned value ([] for numerics, embeddings and empties)."""
    if is_float(spec) or not value:
        return []
    if spec.type == "text":
        return tokenize(value, max_tokens)
    if spec.type == "multi_categorical":
        return cleaning.multi_values(str(value))
    return [str(value)]


class NormalizeRowFn(beam.DoFn):
    """Clean the declared features of a row; ``keep`` columns pass through unchanged."""

    def __init__(self, specs: list[FeatureSpec], keep: Iterable[str] = ()):
        self._specs = list(specs)
        self._keep = tuple(keep)

    def process(self, row: dict):
        out = {name: row.get(name) for name in self._keep if name in row}
        for spec in self._specs:
            out[spec.name] = clean_value(spec, row.get(spec.name))
        yield out


class NormalizeFeatures(beam.PTransform):
    """Rows (dicts) -> rows with every feature in ``specs`` cleaned (numerics not yet filled)."""

    def __init__(self, specs: list[FeatureSpec], keep: Iterable[str] = ()):
        super().__init__()
        self._specs, self._keep = list(specs), tuple(keep)

    def expand(self, rows):
        return rows | "Clean" >> beam.ParDo(NormalizeRowFn(self._specs, self._keep))


# --------------------------------------------------------------------------- computed embeddings


def _vectors_by_text(model, texts: Iterable[str]) -> dict[str, np.ndarray]:
    """``{text: its float32 [dims] vector}`` for the distinct ``texts``, each encoded once.

    A row carries a computed vector as one float32 array, not a list of Python floats: 384 dims
    are ~1.6 KB that way against ~12 KB as a list, and every stage boundary of the in-process
    runner holds each row's vectors decoded (2 per shop row: the query's and its item's).
    :func:`core.records.encode_example` writes either form."""
    distinct = sorted(set(texts))
    vectors = model.encode(distinct)
    return {t: vectors[i].copy() for i, t in enumerate(distinct)}


def _source_texts(row: dict, specs: list[FeatureSpec]) -> tuple[str, ...]:
    """One :func:`core.sentence_encoder.source_text` per spec, from the row's cleaned values."""
    from core.sentence_encoder import source_text

    return tuple(source_text([row.get(name) for name in spec.source]) for spec in specs)


def _with_word_counts(row: dict, specs: list[FeatureSpec]) -> dict:
    """``row`` with every computed numeric in ``specs`` set to its source text's word count."""
    from core.sentence_encoder import word_count

    texts = _source_texts(row, specs)
    return {**row, **{spec.name: word_count(text) for spec, text in zip(specs, texts)}}


class _EncoderDoFn(beam.DoFn):
    """Loads each embedding spec's sentence encoder once per worker (``setup``) and counts the
    texts it encodes (``transform/encoded_texts``)."""

    def __init__(self, specs: list[FeatureSpec]):
        self._specs = [s for s in specs if s.type == "embedding"]
        self._models = None
        self._encoded = beam.metrics.Metrics.counter("transform", "encoded_texts")

    def setup(self):
        from core.sentence_encoder import load_encoder

        self._models = {s.name: load_encoder(s.encoder) for s in self._specs}

    def _encode(self, spec: FeatureSpec, texts: Iterable[str]) -> dict[str, np.ndarray]:
        by_text = _vectors_by_text(self._models[spec.name], texts)
        self._encoded.inc(len(by_text))
        return by_text


class EncodeSourcesFn(_EncoderDoFn):
    """A batch of cleaned rows -> the same rows with every computed feature (``specs``: an
    embedding or numeric with a ``source``) set from the row's source text: an embedding to its
    sentence encoder's vector, a numeric to the text's word count. Texts repeated within a batch
    are encoded once: for the catalog, where every row is its own item."""

    def __init__(self, specs: list[FeatureSpec]):
        super().__init__(specs)
        self._numerics = [s for s in specs if s.type == "numeric"]

    def process(self, batch: list):
        rows = [_with_word_counts(r, self._numerics) for r in batch]
        for spec, column in zip(self._specs, zip(*(_source_texts(r, self._specs) for r in rows))):
            by_text = self._encode(spec, column)
            for row, text in zip(rows, column):
                row[spec.name] = by_text[text]
        yield from rows


class EncodeDistinctTextsFn(_EncoderDoFn):
    """A batch of distinct source keys (one text per embedding spec) -> ``(key, [vector per
    spec])``."""

    def process(self, keys: list):
        columns = list(zip(*keys))
        by_text = [self._encode(spec, column) for spec, column in zip(self._specs, columns)]
        for key in keys:
            yield key, [table[text] for table, text in zip(by_text, key)]


class AttachVectorsFn(beam.DoFn):
    """``(key, {"rows", "vectors"})`` -> the key's rows with its vectors, one per embedding spec."""

    def __init__(self, specs: list[FeatureSpec]):
        self._names = [s.name for s in specs if s.type == "embedding"]

    def process(self, joined):
        _, groups = joined
        vectors = next(iter(groups["vectors"]))
        for packed in groups["rows"]:
            yield {**unpack_row(packed), **dict(zip(self._names, vectors))}


class EncodeDistinctSources(beam.PTransform):
    """Interaction rows -> the same rows with their computed features, each distinct source
    text encoded once however many rows share it.

    A query's text repeats on every interaction of that query (the shop: 21,875 rows, 3,000
    distinct queries), so encoding per row would cost 7x the model time. The distinct keys
    (a shuffle of strings) are encoded in batches of 16-256 and joined back to the rows by
    text (one CoGroupByKey of packed rows, like the item join). Word counts stay per row: they
    cost nothing.
    """

    def __init__(self, specs: list[FeatureSpec]):
        super().__init__()
        self._specs = list(specs)

    def expand(self, rows):
        numerics = [s for s in self._specs if s.type == "numeric"]
        embeddings = [s for s in self._specs if s.type == "embedding"]
        if numerics:
            rows = rows | "WordCounts" >> beam.Map(_with_word_counts, numerics)
        if not embeddings:
            return rows
        keyed = rows | "RowsByText" >> beam.Map(lambda r: (_source_texts(r, embeddings), pack_row(r)))
        vectors = (keyed
                   | "Texts" >> beam.Keys()
                   | "DistinctTexts" >> beam.Distinct()
                   | "BatchTexts" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
                   | "Encode" >> beam.ParDo(EncodeDistinctTextsFn(embeddings)))
        return ({"rows": keyed, "vectors": vectors}
                | "CoGroup" >> beam.CoGroupByKey()
                | "Attach" >> beam.ParDo(AttachVectorsFn(embeddings)))


def encode_sources(rows, label: str, specs: list[FeatureSpec]):
    """The catalog's ``rows`` with their computed features (:class:`EncodeSourcesFn`, batches
    of 16-256 rows), or ``rows`` as is when ``specs`` is empty."""
    if not specs:
        return rows
    return (rows
            | f"{label}Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
            | label >> beam.ParDo(EncodeSourcesFn(specs)))


def describe_encoders(schema: SchemaConfig) -> dict:
    """``{feature: {"encoder", "folder", "checksum", "dims", "source"}}`` of every computed
    embedding (stats.json ``encoders``: which model folder encoded the data; a computed numeric
    has no model).

    Raises:
        TransformError: a feature's dims is not its encoder's output width.
    """
    from core.sentence_encoder import describe

    out = {}
    for spec in (*schema.query_features, *schema.item_features):
        if spec.computed and spec.type == "embedding":
            record = describe(spec.encoder)
            if record["dims"] != spec.dims:
                raise TransformError(f"feature {spec.name!r}: dims {spec.dims}, but its encoder "
                                     f"{spec.encoder!r} ({record['folder']}) outputs {record['dims']}")
            out[spec.name] = {**record, "source": list(spec.source)}
    return out


# --------------------------------------------------------------------------- numeric stats


class NumericStatsFn(beam.CombineFn):
    """Mean / population std / min / max per numeric feature, ignoring missing values.

    Accumulator: ``{name: [count, sum, sum_of_squares, min, max]}``.
    """

    def __init__(self, names: list[str]):
        self._names = list(names)

    def create_accumulator(self):
        return {n: [0, 0.0, 0.0, math.inf, -math.inf] for n in self._names}

    def add_input(self, acc, row):
        for name in self._names:
            value = row.get(name)
            if cleaning.is_missing(value):
                continue
            a = acc[name]
            a[0] += 1
            a[1] += value
            a[2] += value * value
            a[3] = min(a[3], value)
            a[4] = max(a[4], value)
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            for name, (n, s, sq, lo, hi) in acc.items():
                o = out[name]
                o[0] += n
                o[1] += s
                o[2] += sq
                o[3] = min(o[3], lo)
                o[4] = max(o[4], hi)
        return out

    def extract_output(self, acc):
        out = {}
        for name, (n, s, sq, lo, hi) in acc.items():
            if n == 0:
                out[name] = dict(_NUMERIC_EMPTY)
                continue
            mean = s / n
            out[name] = {"mean": mean, "std": math.sqrt(max(sq / n - mean * mean, 0.0)),
                         "min": lo, "max": hi, "count": n}
        return out


class ComputeNumericStats(beam.PTransform):
    """Rows -> a singleton ``{name: {"mean","std","min","max","count"}}``."""

    def __init__(self, names: list[str]):
        super().__init__()
        self._names = list(names)

    def expand(self, rows):
        return rows | "Combine" >> beam.CombineGlobally(NumericStatsFn(self._names))


class FillNumericsFn(beam.DoFn):
    """Replace missing numerics with the mean from the ``stats`` side input."""

    def __init__(self, names: list[str]):
        self._names = list(names)

    def process(self, row: dict, stats: dict):
        out = dict(row)
        for name in self._names:
            if cleaning.is_missing(out.get(name)):
                out[name] = stats[name]["mean"]
        yield out


def fill_numerics(rows, label: str, names: list[str], stats):
    """``rows | label >> FillNumerics`` when there is a numeric to fill, else ``rows`` as is.

    Skipping matters at scale: a side input makes the in-process runner hold the whole main
    input (10M rows) in memory until the side input is computed.
    """
    if not names:
        return rows
    return rows | label >> beam.ParDo(FillNumericsFn(names), stats=pvalue.AsSingleton(stats))


# --------------------------------------------------------------------------- grouping


def pack_row(row: dict) -> bytes:
    """A row as grouped by a GroupByKey: one pickled bytes object.

    Beam's in-process runner holds every value of a GroupByKey decoded until the group is
    read: a 6-field interaction row costs ~480 B as a dict, ~150 B as its pickle (tracemalloc,
    synthetic rows; 10M rows: 8.3 -> 7.4 GB peak, docs/BENCHMARKS.md). :func:`unpack_row` is its
    inverse.
    """
    return pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_row(packed: bytes) -> dict:
    return pickle.loads(packed)


def seen_value(split: str, item_id: str) -> str:
    """(split, item) as one short string for the seen grouping (the split's index, then the id)."""
    return f"{SPLITS.index(split)}{item_id}"


def parse_seen_value(value: str) -> tuple[str, str]:
    return SPLITS[int(value[0])], value[1:]


# --------------------------------------------------------------------------- labels and splits


class ClassifyLabelsFn(beam.DoFn):
    """Positives (label 1 and rating >= min_rating when set) as they are, label-0 rows with
    ``_split`` = ``train_negatives``, on one output; label-1 rows under ``min_rating`` are
    dropped (counted). One output, not two to flatten later: the in-process runner holds a
    multi-input Flatten's whole result in memory."""

    def __init__(self, min_rating: Optional[float]):
        self._min_rating = min_rating
        self._below = beam.metrics.Metrics.counter("transform", "below_min_rating")

    def process(self, row: dict):
        if int(row.get("label", 1)) == 0:
            yield {**row, SPLIT: NEGATIVES}
            return
        rating = row.get("rating")
        if self._min_rating is not None and (cleaning.is_missing(rating) or rating < self._min_rating):
            self._below.inc()
            return
        yield row


def hashed_bucket(key: str, item_id: str, seed: int) -> float:
    """Stable uniform value in [0, 1) for a (key, item) pair (md5; never Python's hash())."""
    return _unit_hash(f"{seed}\x1f{key}\x1f{item_id}")


def item_bucket(item_id: str, seed: int) -> float:
    """Stable uniform value in [0, 1) for an item alone (md5 of seed + item id).

    Two fields instead of :func:`hashed_bucket`'s three, so the cold-item draw is not the
    (key, item) split draw.
    """
    return _unit_hash(f"{seed}\x1f{item_id}")


def _unit_hash(text: str) -> float:
    """md5 of ``text`` as a uniform value in [0, 1) (60 bits; stable across processes)."""
    digest = hashlib.md5(text.encode("utf-8")).hexdigest()
    return int(digest[:15], 16) / float(16 ** 15)


def is_cold_item(item_id: str, fraction: float, seed: int) -> bool:
    """Whether ``item_id`` is held out of train/valid (``transform.cold_item_fraction``)."""
    return fraction > 0.0 and item_bucket(item_id, seed) < fraction


class ColdItemsFn(beam.DoFn):
    """Rows of cold items (:func:`is_cold_item`): positives get ``_split`` = test, label-0 rows
    are dropped (counted); every other row passes unchanged."""

    def __init__(self, fraction: float, seed: int):
        self._fraction, self._seed = fraction, seed
        self._dropped = beam.metrics.Metrics.counter("transform", "cold_item_negatives_dropped")

    def process(self, row: dict):
        if not is_cold_item(row[ITEM_KEY], self._fraction, self._seed):
            yield row
        elif row.get(SPLIT) == NEGATIVES:
            self._dropped.inc()
        else:
            yield {**row, SPLIT: contract.TEST}


class HashSplitFn(beam.DoFn):
    """hashed split: test when bucket < test_fraction, then valid, else train.

    The same (key, item) pair always lands in the same split, so repeats cannot leak.
    """

    def __init__(self, valid_fraction: float, test_fraction: float, seed: int):
        self._valid, self._test, self._seed = valid_fraction, test_fraction, seed

    def process(self, row: dict):
        if SPLIT in row:  # assigned already (label-0 rows, cold items)
            yield row
            return
        u = hashed_bucket(row[KEY], row[ITEM_KEY], self._seed)
        split = (contract.TEST if u < self._test
                 else contract.VALID if u < self._test + self._valid else contract.TRAIN)
        yield {**row, SPLIT: split}


#: A row's history may hold earlier positives of these splits (see :class:`KeyTimelineFn`).
VISIBLE_SPLITS = {contract.TRAIN: (contract.TRAIN,), NEGATIVES: (contract.TRAIN,),
                  contract.VALID: (contract.TRAIN,), contract.TEST: (contract.TRAIN, contract.VALID)}


@dataclasses.dataclass(frozen=True)
class HistoryOptions:
    """The history feature the transform builds: its column ``name`` and ``max_length``."""

    name: str
    max_length: int


class KeyTimelineFn(beam.DoFn):
    """One key's rows -> the same rows with ``_split`` set and, with ``history``, the history
    column (core/history.py); plus, on the ``latest`` output, (key, its latest items).

    Split (``method``): ``leave_last_out`` orders the key's positives by (timestamp, item_id):
    last -> test, second last -> valid (keys with fewer than 3 positives keep everything in
    train); ``hashed`` = :class:`HashSplitFn`. Rows that already carry a split (label-0 rows,
    cold items' rows) keep it and count for neither the order nor the threshold.

    History of a row: the key's positives strictly before its timestamp, of the splits
    :data:`VISIBLE_SPLITS` allows it (a train row sees train positives, a test row train and
    valid ones), so no held-out item is ever a training input and no row sees its own split's
    targets. The ``latest`` output is every positive, whatever its split: the query table's
    history, what serving starts from after the run's data date.
    """

    LATEST = "latest"

    def __init__(self, method: str, valid_fraction: float, test_fraction: float, seed: int,
                 history: Optional[HistoryOptions] = None):
        self._method = method
        self._hashed = HashSplitFn(valid_fraction, test_fraction, seed)
        self._history = history

    def process(self, keyed):
        key, packed = keyed
        fixed, to_split = [], []
        for row in map(unpack_row, packed):
            (fixed if SPLIT in row else to_split).append(row)
        split_rows = fixed + self._split(to_split)
        if self._history is None:
            yield from split_rows
            return
        name, n = self._history.name, self._history.max_length
        positives = [r for r in split_rows if r[SPLIT] != NEGATIVES]
        timelines = {visible: history.Timeline((r["timestamp"], r[ITEM_KEY]) for r in positives
                                               if r[SPLIT] in visible)
                     for visible in set(VISIBLE_SPLITS.values())}
        for row in split_rows:
            before = timelines[VISIBLE_SPLITS[row[SPLIT]]].before(row["timestamp"], n)
            yield {**row, name: history.join(before)}
        latest = history.Timeline((r["timestamp"], r[ITEM_KEY]) for r in positives).latest(n)
        yield pvalue.TaggedOutput(self.LATEST, (key, latest))

    def _split(self, rows: list[dict]) -> list[dict]:
        if self._method == "hashed":
            return [out for row in rows for out in self._hashed.process(row)]
        ordered = sorted(rows, key=lambda r: (int(r["timestamp"]), str(r[ITEM_KEY])))
        n = len(ordered)
        out = []
        for i, row in enumerate(ordered):
            split = contract.TRAIN
            if n >= 3:
                split = contract.TEST if i == n - 1 else contract.VALID if i == n - 2 else contract.TRAIN
            out.append({**row, SPLIT: split})
        return out


class SplitInteractions(beam.PTransform):
    """Rows -> the same rows with ``_split`` in {"train", "valid", "test"}; rows that already
    carry a ``_split`` (label-0 rows: ``train_negatives``) keep it.

    With ``cold_item_fraction`` > 0, positives of cold items (:func:`is_cold_item`) skip the
    split and all go to test, their label-0 rows are dropped; the split sees only the other
    positives (so a key's leave-last-out order and its 3-positive threshold ignore its cold
    items and its label-0 rows).

    Everything leaves in one collection, with no Flatten on the way: Beam's in-process runner
    materialises every multi-input Flatten, which at 10M rows held them all in memory.

    With ``history`` every row also gets its history column (:class:`KeyTimelineFn`) and the
    result is ``(rows, latest)``, ``latest`` = (key, the key's latest items); else just rows.
    """

    def __init__(self, method: str, valid_fraction: float, test_fraction: float, seed: int,
                 cold_item_fraction: float = 0.0, history: Optional[HistoryOptions] = None):
        super().__init__()
        self._method = method
        self._valid, self._test, self._seed = valid_fraction, test_fraction, seed
        self._cold = cold_item_fraction
        self._history = history

    def expand(self, rows):
        if self._cold > 0.0:
            rows = rows | "ColdItems" >> beam.ParDo(ColdItemsFn(self._cold, self._seed))
        if self._method == "hashed" and self._history is None:
            return rows | "Hash" >> beam.ParDo(HashSplitFn(self._valid, self._test, self._seed))
        timeline = KeyTimelineFn(self._method, self._valid, self._test, self._seed, self._history)
        grouped = (rows
                   | "ByKey" >> beam.Map(lambda r: (r[KEY], pack_row(r)))
                   | "Group" >> beam.GroupByKey())
        if self._history is None:
            return grouped | "LeaveLastOut" >> beam.ParDo(timeline)
        out = grouped | "Timeline" >> beam.ParDo(timeline).with_outputs(KeyTimelineFn.LATEST, main="rows")
        return out.rows, out[KeyTimelineFn.LATEST]


# --------------------------------------------------------------------------- joins


class MergeUserFn(beam.DoFn):
    """(user_id, {"rows", "user"}) -> rows with the user's features (missing when unknown)."""

    def __init__(self, user_specs: list[FeatureSpec]):
        self._specs = list(user_specs)

    def process(self, joined):
        _, groups = joined
        users = list(groups["user"])
        user = users[0] if users else {s.name: clean_value(s, None) for s in self._specs}
        features = {s.name: user[s.name] for s in self._specs}
        for packed in groups["rows"]:
            yield {**unpack_row(packed), **features}


class JoinUserFeatures(beam.PTransform):
    """Interaction rows + cleaned users -> rows carrying the user features (CoGroupByKey)."""

    def __init__(self, users, user_specs: list[FeatureSpec]):
        super().__init__()
        self._users, self._specs = users, list(user_specs)

    def expand(self, rows):
        keyed_rows = rows | "RowsByUser" >> beam.Map(lambda r: (r[KEY], pack_row(r)))
        keyed_users = self._users | "UsersById" >> beam.Map(lambda u: (u[USER_KEY], u))
        return ({"rows": keyed_rows, "user": keyed_users}
                | "CoGroup" >> beam.CoGroupByKey()
                | "Merge" >> beam.ParDo(MergeUserFn(self._specs)))


class MergeItemFn(beam.DoFn):
    """(item_id, {"rows", "item"}) -> rows with the item's features; rows of unknown items
    are dropped and counted (ingest already rejects them, so this only guards reuse)."""

    def __init__(self, item_specs_: list[FeatureSpec]):
        self._specs = list(item_specs_)
        self._unknown = beam.metrics.Metrics.counter("transform", "unknown_item_rows")

    def process(self, joined):
        _, groups = joined
        items = list(groups["item"])
        rows = groups["rows"]
        if not items:
            for _ in rows:
                self._unknown.inc()
            return
        features = {s.name: items[0][s.name] for s in self._specs}
        for packed in rows:
            yield {**unpack_row(packed), **features}


class JoinItemFeatures(beam.PTransform):
    """Interaction rows + filled catalog rows -> rows carrying the item features."""

    def __init__(self, items, item_specs_: list[FeatureSpec]):
        super().__init__()
        self._items, self._specs = items, list(item_specs_)

    def expand(self, rows):
        keyed_rows = rows | "RowsByItem" >> beam.Map(lambda r: (r[ITEM_KEY], pack_row(r)))
        keyed_items = self._items | "ItemsById" >> beam.Map(lambda i: (i[ITEM_KEY], i))
        return ({"rows": keyed_rows, "item": keyed_items}
                | "CoGroup" >> beam.CoGroupByKey()
                | "Merge" >> beam.ParDo(MergeItemFn(self._specs)))


# --------------------------------------------------------------------------- encoding


class EncodeBySplitFn(beam.DoFn):
    """Filled interaction rows -> serialized Examples on the output named by ``_split``."""

    def __init__(self, specs: list[FeatureSpec]):
        self._specs = list(specs)

    def process(self, row: dict):
        yield pvalue.TaggedOutput(row[SPLIT], encode_example(row, self._specs))


class EncodeFn(beam.DoFn):
    def __init__(self, specs: list[FeatureSpec]):
        self._specs = list(specs)

    def process(self, row: dict):
        yield encode_example(row, self._specs)


# --------------------------------------------------------------------------- vocabularies


class FeatureTokensFn(beam.DoFn):
    """Row -> ((feature, token), (count, interactions)) for every vocabulary feature of the row.

    ``weight`` is the (count, interactions) pair each token adds: ``count`` orders and caps
    the vocabulary, ``interactions`` counts train rows for the coverage record.
    """

    def __init__(self, specs: list[FeatureSpec], max_tokens: int, weight: tuple[int, int] = (1, 1)):
        self._specs = [s for s in specs if not is_float(s)]
        self._max_tokens, self._weight = max_tokens, tuple(weight)

    def process(self, row: dict):
        for spec in self._specs:
            for token in feature_tokens(spec, row.get(spec.name), self._max_tokens):
                yield (spec.name, token), self._weight


def _sum_pairs(pairs) -> tuple[int, int]:
    """Element-wise sum of (count, interactions) pairs (associative: usable as a combiner)."""
    count = interactions = 0
    for c, n in pairs:
        count += c
        interactions += n
    return count, interactions


@dataclasses.dataclass(frozen=True)
class VocabPolicy:
    """How one feature's vocabulary is cut (see :func:`vocab_policy`).

    ``max_size`` None = no cap. ``whole_catalog`` (item_id only): the file lists every
    catalog item, count 0 included, and the cap bounds only the items that get an id row.
    ``oov_rows``: rows the folded values share (1 OOV row, ``id_hash_buckets`` hashed
    rows, or 0 for item_id, whose folded ids embed from content like cold items).
    """

    type: str
    max_size: Optional[int]
    min_count: int = 1
    whole_catalog: bool = False
    oov_rows: int = 1


def vocab_policy(name: str, feature_type: str, tcfg) -> VocabPolicy:
    """The vocabulary rule of one feature under ``config.transform``.

    id features (and ``item_id``): every id seen, whatever its count, unless
    ``max_id_vocab_size`` caps them. categorical / multi_categorical / text:
    ``vocab_min_count`` and ``max_vocab_size``.
    """
    if name == ITEM_KEY:
        return VocabPolicy("id", tcfg.max_id_vocab_size, whole_catalog=True, oov_rows=0)
    if feature_type == "id":
        return VocabPolicy("id", tcfg.max_id_vocab_size, oov_rows=max(tcfg.id_hash_buckets, 1))
    return VocabPolicy(feature_type, tcfg.max_vocab_size, tcfg.vocab_min_count)


def plan_vocab(entries: list, policy: VocabPolicy) -> tuple[list[tuple[str, int]], dict]:
    """[(token, count, interactions)] -> (the file's (token, count) entries, coverage record).

    File order: count desc then token asc. The coverage record (``stats.json``
    ``vocab_coverage[feature]``)::

        {"type", "distinct", "kept", "folded", "max_size", "min_count", "oov_rows",
         "interactions", "folded_interactions"}

    ``distinct`` values seen (item_id: items with train positives, the ones that can get
    an id row), ``kept`` of them have their own row, ``folded`` = distinct - kept share
    ``oov_rows``. ``interactions`` / ``folded_interactions`` (id features only, else None):
    train positives carrying the feature / carrying a folded value.
    """
    ordered = sorted((e for e in entries if e[1] > 0 or policy.whole_catalog), key=lambda e: (-e[1], e[0]))
    is_id = policy.type == "id"
    if is_id:
        candidates = [e for e in ordered if e[1] > 0]  # ids are never dropped by count
    else:
        candidates = [e for e in ordered if e[1] >= policy.min_count]
    kept = candidates if policy.max_size is None else candidates[:policy.max_size]
    folded_ids = candidates[len(kept):]
    file_entries = ordered if policy.whole_catalog else kept
    coverage = {
        "type": policy.type, "distinct": len(ordered if not is_id else candidates), "kept": len(kept),
        "max_size": policy.max_size, "min_count": 1 if is_id else policy.min_count,
        "oov_rows": policy.oov_rows,
        "interactions": sum(e[2] for e in candidates) if is_id else None,
        "folded_interactions": sum(e[2] for e in folded_ids) if is_id else None,
    }
    coverage["folded"] = coverage["distinct"] - coverage["kept"]
    return [(t, c) for t, c, _ in file_entries], coverage


def format_vocab(entries: list[tuple[str, int]]) -> str:
    """[(token, count)] in file order -> "token\\tcount\\n" lines."""
    return "".join(f"{token}\t{count}\n" for token, count in entries)


class BuildVocabulary(beam.PTransform):
    """((feature, token), (count, interactions)), one collection or a tuple of them -> (files, coverage).

    ``files``: ``("vocab/<feature>.tsv", text)`` per feature, cut by its
    :class:`VocabPolicy`; ``coverage``: ``(feature, {"entries": file lines, **the coverage
    record of :func:`plan_vocab`})``. Count-0 entries put a token in the vocabulary only
    under ``whole_catalog`` (the catalog in ``item_id.tsv``). Every feature gets a file,
    empty when it has no tokens.
    """

    def __init__(self, policies: dict[str, VocabPolicy]):
        super().__init__()
        self._policies = dict(policies)

    def expand(self, weighted):
        # Counted per source first, then the (much smaller) partial counts together: a Flatten of
        # sources from several stages makes the in-process runner hold all their elements.
        sources = weighted if isinstance(weighted, tuple) else (weighted,)
        partial = [src | f"Count[{i}]" >> beam.CombinePerKey(_sum_pairs) for i, src in enumerate(sources)]
        counts = (tuple(partial)
                  | "AllCounts" >> beam.Flatten()
                  | "Count" >> beam.CombinePerKey(_sum_pairs)
                  | "ByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], *kv[1]))))
        # One marker per feature so a feature without any token still gets its (empty) file.
        markers = sources[0].pipeline | "Features" >> beam.Create([(f, None) for f in self._policies])
        planned = ((counts, markers)
                   | "WithMarkers" >> beam.Flatten()
                   | "GroupByFeature" >> beam.GroupByKey()
                   | "Plan" >> beam.Map(self._plan))
        files = planned | "Format" >> beam.Map(lambda p: (vocab_path(p[0]), format_vocab(p[1])))
        coverage = planned | "Coverage" >> beam.Map(lambda p: (p[0], {"entries": len(p[1]), **p[2]}))
        return files, coverage

    def _plan(self, grouped) -> tuple[str, list, dict]:
        feature, entries = grouped
        file_entries, coverage = plan_vocab([e for e in entries if e is not None], self._policies[feature])
        return feature, file_entries, coverage


def vocab_path(feature: str) -> str:
    """Path of a feature's vocabulary relative to the transform output folder."""
    return contract.vocab_file(feature)


def warn_folded_ids(coverage: dict) -> list[str]:
    """Log (and return) one sentence per id feature whose cap folded ids: a warning when
    more than :data:`FOLDED_WARN_SHARE` of its train interactions are affected, else info."""
    lines = []
    for feature, cov in sorted(coverage.items()):
        if cov.get("type") != "id" or not cov.get("folded"):
            continue
        share = cov["folded_interactions"] / cov["interactions"] if cov.get("interactions") else 0.0
        line = folded_ids_sentence(feature, cov)
        log.log(logging.WARNING if share > FOLDED_WARN_SHARE else logging.INFO, "%s", line)
        lines.append(line)
    return lines


def folded_ids_sentence(feature: str, cov: dict) -> str:
    """'user_id: 3 of 5 ids (past transform.max_id_vocab_size=2) share one OOV row; 3 of 7
    train interactions (42.9%) are affected' (the log line and the report's warning)."""
    interactions, folded_n = cov.get("interactions") or 0, cov.get("folded_interactions") or 0
    share = f" ({100.0 * folded_n / interactions:.1f}%)" if interactions else ""
    rows = cov.get("oov_rows")
    where = ("embed from content only (no id row, like cold items)" if rows == 0 else
             "share one OOV row" if rows == 1 else f"hash into {rows} shared rows (transform.id_hash_buckets)")
    return (f"{feature}: {cov['folded']:,} of {cov['distinct']:,} ids (past transform.max_id_vocab_size="
            f"{cov.get('max_size')}) {where}; {folded_n:,} of {interactions:,} train interactions{share} "
            f"are affected")


# --------------------------------------------------------------------------- small files


def _join_sorted(pairs: list) -> str:
    """[(sort_key, line)] -> the lines in sort-key order, newline-terminated."""
    return "".join(line + "\n" for _, line in sorted(pairs))


class _WholeFileSink(fileio.FileSink):
    """Writes ``(relative_path, text)`` elements: the text is the whole file, as is."""

    def open(self, fh):
        self._fh = fh

    def write(self, record):
        self._fh.write(record[1].encode("utf-8"))

    def flush(self):
        self._fh.flush()


def _destination(record) -> str:
    return record[0]


def _name_is_destination(window, pane, shard_index, total_shards, compression, destination) -> str:
    return destination


class WriteTextFiles(beam.PTransform):
    """``(relative_path, text)`` elements -> exactly ``<out_dir>/<relative_path>`` each.

    Every small output (vocabularies, seen, query table, stats) goes through this one
    sink: one file = one element, so file content is deterministic whatever the runner
    does with ordering, and one sink instead of one per file keeps the graph (and the
    in-process start-up cost) small. ``temp_dir`` is removed by the caller after the run.
    """

    def __init__(self, out_dir: str, temp_dir: str):
        super().__init__()
        self._out_dir, self._temp_dir = out_dir, temp_dir

    def expand(self, files):
        return files | "WriteFiles" >> fileio.WriteToFiles(
            path=self._out_dir, destination=_destination, sink=lambda _: _WholeFileSink(),
            file_naming=_name_is_destination, shards=1,
            # WriteToFiles wants a ValueProvider here (a plain str fails at run time).
            temp_directory=StaticValueProvider(str, self._temp_dir))


class SortedFile(beam.PTransform):
    """(sort_key, line) pairs -> one ``(relative_path, text)`` with the lines in key order."""

    def __init__(self, relative_path: str):
        super().__init__()
        self._path = relative_path

    def expand(self, pairs):
        return (pairs
                | "ToList" >> beam.combiners.ToList()
                | "Join" >> beam.Map(lambda pairs_, path=self._path: (path, _join_sorted(pairs_))))


def seen_line(keyed) -> tuple[str, str]:
    """(key, [seen_value(split, item_id)]) -> (key, JSON line with sorted unique items per split)."""
    key, values = keyed
    per_split: dict[str, set] = {s: set() for s in SPLITS}
    for value in values:
        split, item = parse_seen_value(value)
        per_split[split].add(item)
    return key, json.dumps({"key": key, **{s: sorted(per_split[s]) for s in SPLITS}})


def display_line(row: dict, fields: list[str]) -> tuple[str, str]:
    """Raw item row -> (item_id, JSON line of item_id + display fields as ingested).

    Missing values (None, NaN) become null so the line stays valid JSON.
    """
    def clean(value):
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    values = {ITEM_KEY: str(row[ITEM_KEY]), **{f: clean(row.get(f)) for f in fields}}
    return values[ITEM_KEY], json.dumps(values)


def with_key_counts(row: dict, names: list[str], key_name: str, counts: dict) -> dict:
    """``row`` with each ``derive: key_count`` feature in ``names`` set to its key's popularity
    (:func:`core.sentence_encoder.key_popularity` of the key's train positives in ``counts``)."""
    from core.sentence_encoder import key_popularity

    value = key_popularity(counts.get(row[key_name], 0))
    return {**row, **{name: value for name in names}}


def query_line(row: dict, specs: list[FeatureSpec], key_name: str) -> tuple[str, str]:
    """Filled query row -> (key, JSON line of the query features in declaration order)."""
    values = {s.name: row[s.name] for s in specs}
    return str(values[key_name]), json.dumps(values)


class MergeQueryRowFn(beam.DoFn):
    """(user_id, {"user", "seen"}) -> the user's feature row (defaults when only in interactions)."""

    def __init__(self, query_specs: list[FeatureSpec]):
        self._specs = list(query_specs)

    def process(self, joined):
        key, groups = joined
        users = list(groups["user"])
        if users:
            yield {s.name: users[0].get(s.name) for s in self._specs}
        else:
            row = {s.name: clean_value(s, None) for s in self._specs}
            row[USER_KEY] = key
            yield row


class AddHistoryFn(beam.DoFn):
    """(key, {"line", "latest"}) -> (key, its query-table line with the history as a JSON list).

    A key with no positive (only label-0 rows, or a user only in users.*) gets [].
    """

    def __init__(self, name: str):
        self._name = name

    def process(self, joined):
        key, groups = joined
        lines, latest = list(groups["line"]), list(groups["latest"])
        for line in lines:
            row = json.loads(line)
            row[self._name] = latest[0] if latest else []
            yield key, json.dumps(row)


def assemble_stats(_, counts: dict, numeric_query: dict, numeric_items: dict, vocab_coverage: dict,
                   split: str, encoders: Optional[dict] = None) -> tuple[str, str]:
    """``("stats.json", text)`` (sorted keys so reruns are byte-identical).

    ``vocab_coverage``: ``{feature: {"entries", **plan_vocab's coverage record}}``; its
    ``entries`` become ``vocab_sizes`` (lines of ``vocab/<feature>.tsv``).
    """
    sizes = {f: cov["entries"] for f, cov in vocab_coverage.items()}
    coverage = {f: {k: v for k, v in cov.items() if k != "entries"} for f, cov in vocab_coverage.items()}
    doc = {"numeric": {**numeric_query, **numeric_items}, "counts": counts, "split": split,
           "vocab_sizes": sizes, "vocab_coverage": coverage}
    if encoders:
        doc["encoders"] = encoders
    return STATS_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- the pipeline


def build_pipeline(p, config: Config, inputs: dict, out_dir: str, split: str, temp_dir: str,
                   encoders: Optional[dict] = None) -> None:
    """Add the transform to pipeline ``p``: the I/O at the edges (reads ``inputs``, writes into
    ``out_dir``; ``temp_dir`` holds the small files' temporaries and is the caller's to remove),
    :class:`TransformFeatures` in between."""
    tables = {"items": p | "ReadItems" >> beam.io.ReadFromParquet(inputs[contract.ITEMS_TABLE]),
              "interactions": p | "ReadInteractions" >> beam.io.ReadFromParquet(inputs[contract.INTERACTIONS_TABLE])}
    if uses_users_table(config.schema):
        tables["users"] = p | "ReadUsers" >> beam.io.ReadFromParquet(inputs[contract.USERS_TABLE])
    outputs = tables | "Transform" >> TransformFeatures(config, split, encoders)
    for name in contract.RECORD_SPLITS:
        _ = outputs[name] | f"Write[{name}]" >> _tfrecord_sink(out_dir, name)
    _ = outputs[SMALL_FILES] | "WriteSmallFiles" >> WriteTextFiles(out_dir, temp_dir)


#: :class:`TransformFeatures`' output of the small files: (relative path, whole text) pairs.
SMALL_FILES = "files"


class TransformFeatures(beam.PTransform):
    """The whole feature transform, no I/O: raw table rows in, encoded records and small files out.

    Input: ``{"items": rows, "interactions": rows, "users": rows}`` (dicts as read from the
    ingested Parquet; ``users`` only when :func:`uses_users_table`). Output: a dict with one
    PCollection of serialised ``tf.train.Example`` bytes per record split
    (``contract.RECORD_SPLITS``: train, valid, test, train_negatives, items) and
    :data:`SMALL_FILES`: ``(relative path, text)`` for every vocabulary, seen.jsonl,
    query_table.jsonl, items_display.jsonl, cold_items.txt and stats.json.
    """

    def __init__(self, config: Config, split: str, encoders: Optional[dict] = None):
        super().__init__()
        #: ``encoders``: :func:`describe_encoders`'s record, written into stats.json.
        self._config, self._split, self._encoders = config, split, dict(encoders or {})

    def expand(self, tables):
        config, split = self._config, self._split
        p = tables["items"].pipeline
        schema, tcfg = config.schema, config.transform
        query_specs, item_feats = list(schema.query_features), list(schema.item_features)
        table_specs = schema.table_query_features  # the query features read from tables
        key_spec = next(s for s in query_specs if s.name == schema.query_key)
        user_side = uses_users_table(schema)
        query_numeric = [s.name for s in query_specs if s.type == "numeric"]
        item_numeric = [s.name for s in item_feats if s.type == "numeric"]
        catalog_specs = item_specs(schema)

        # ---- catalog: clean, catalog-mean fill, encode; raw display fields on the side
        raw_items = tables["items"]
        display_file = (raw_items
                        | "DisplayLine" >> beam.Map(display_line, list(schema.display_fields))
                        | "DisplayFile" >> SortedFile(ITEMS_DISPLAY_FILE))
        items = raw_items | "NormalizeItems" >> NormalizeFeatures(catalog_specs)
        items = encode_sources(items, "EncodeItemSources", [s for s in item_feats if s.computed])
        item_stats = items | "ItemNumericStats" >> ComputeNumericStats(item_numeric)
        items = fill_numerics(items, "FillItemNumerics", item_numeric, item_stats)
        items_written = items | "EncodeItems" >> beam.ParDo(EncodeFn(catalog_specs))
        # Cold items are drawn over the catalog, so one never interacted with is listed too.
        cold_items = (items
                      | "ColdItems" >> beam.Filter(lambda i, f=tcfg.cold_item_fraction, s=tcfg.seed:
                                                   is_cold_item(i[ITEM_KEY], f, s))
                      | "ColdItemIds" >> beam.Map(lambda i: i[ITEM_KEY]))
        cold_file = (cold_items
                     | "ColdLine" >> beam.Map(lambda item: (item, item))
                     | "ColdItemsFile" >> SortedFile(COLD_ITEMS_FILE))

        # ---- interactions: clean, classify, split
        extra_query = [] if user_side or schema.query_key == USER_KEY else [
            s for s in table_specs if s.name != schema.query_key]
        passthrough = [ITEM_KEY, "label", "rating", "timestamp"]
        if schema.weighted:
            # Graded actions: the row weight rides along to the TFRecords (weight-0 rows are already
            # label 0, so ClassifyLabels routes them to train_negatives). Vocabulary counts, logQ's
            # train frequencies and seen.jsonl stay unweighted: one count per train positive.
            passthrough.append(WEIGHT_KEY)
        interactions = (tables["interactions"]
                        | "NormalizeInteractions" >> NormalizeFeatures([key_spec, *extra_query], passthrough)
                        | "AttachKey" >> beam.Map(lambda r, k=schema.query_key: {**r, KEY: r[k]}))
        history_spec = schema.history_feature
        history_options = (None if history_spec is None
                           else HistoryOptions(history_spec.name, history_spec.max_length))
        rows = (interactions
                | "ClassifyLabels" >> beam.ParDo(ClassifyLabelsFn(config.data.min_rating))
                | "SplitInteractions" >> SplitInteractions(split, tcfg.valid_fraction, tcfg.test_fraction,
                                                           tcfg.seed, tcfg.cold_item_fraction, history_options))
        latest = None
        if history_options is not None:
            rows, latest = rows
        positives = rows | "Positives" >> beam.Filter(lambda r: r[SPLIT] != NEGATIVES)

        # ---- joins: user features (user keys), then item features
        users = None
        if user_side:
            users = (tables["users"]
                     | "NormalizeUsers" >> NormalizeFeatures(table_specs))
            rows = rows | "JoinUserFeatures" >> JoinUserFeatures(users, schema.user_features)
        # Before the item join, so that this join shuffles rows without the item features.
        query_encoded = [s for s in query_specs if s.computed and not s.key_count]
        if query_encoded:
            rows = rows | "EncodeQuerySources" >> EncodeDistinctSources(query_encoded)
        # Ids only (no item features): nothing to attach, so no 10M-row CoGroupByKey to hold in
        # memory (ingest has already refused interactions of unknown items).
        if item_feats:
            rows = rows | "JoinItemFeatures" >> JoinItemFeatures(items, item_feats)
        # Popularity features (derive: key_count): each key's train positives, on every row and
        # in the query table (what serving looks a free-text query up in).
        key_count_specs = [s.name for s in query_specs if s.key_count]
        key_counts = None
        if key_count_specs:
            key_counts = beam.pvalue.AsDict(
                positives
                | "TrainPositives" >> beam.Filter(lambda r: r[SPLIT] == contract.TRAIN)
                | "KeyOnes" >> beam.Map(lambda r: (r[KEY], 1))
                | "KeyTrainCounts" >> beam.CombinePerKey(sum))
            rows = rows | "RowKeyCounts" >> beam.Map(with_key_counts, key_count_specs, schema.query_key, key_counts)

        # ---- query-side numerics: train-split mean, then fill and encode by split
        train_rows = rows | "TrainRows" >> beam.Filter(lambda r: r[SPLIT] == contract.TRAIN)
        query_stats = train_rows | "QueryNumericStats" >> ComputeNumericStats(query_numeric)
        filled = fill_numerics(rows, "FillQueryNumerics", query_numeric, query_stats)
        encoded = filled | "EncodeBySplit" >> beam.ParDo(
            EncodeBySplitFn(interaction_specs(schema))).with_outputs(*SPLITS, NEGATIVES)
        counted = {contract.ITEMS_SPLIT: items_written, "cold_items": cold_items}
        for name in (*SPLITS, NEGATIVES):
            counted[name] = encoded[name]

        # ---- vocabularies: query side from train rows, item side from the catalog,
        # item ids = whole catalog (weight 0) + train frequency
        # A history is item ids: it looks them up in the item-id vocabulary, it has none of its own.
        query_vocab_specs = [s for s in table_specs if not is_float(s)]
        item_vocab_specs = [s for s in item_feats if not is_float(s)]
        # Weights are (count, train interactions): query features count train rows; item features
        # count catalog items, and id-typed ones also their train rows (for the coverage record).
        item_id_specs = [s for s in item_vocab_specs if s.type == "id"]
        weighted = [
            train_rows | "QueryTokens" >> beam.ParDo(FeatureTokensFn(query_vocab_specs, tcfg.text_max_tokens)),
            items | "ItemTokens" >> beam.ParDo(FeatureTokensFn(item_vocab_specs, tcfg.text_max_tokens, (1, 0))),
            items | "CatalogIds" >> beam.Map(lambda i: ((ITEM_KEY, i[ITEM_KEY]), (0, 0))),
            train_rows | "TrainIds" >> beam.Map(lambda r: ((ITEM_KEY, r[ITEM_KEY]), (1, 1))),
        ]
        if item_id_specs:
            weighted.append(train_rows | "ItemIdTrainRows" >> beam.ParDo(
                FeatureTokensFn(item_id_specs, tcfg.text_max_tokens, (0, 1))))
        weighted = tuple(weighted)
        policies = {s.name: vocab_policy(s.name, s.type, tcfg) for s in query_vocab_specs}
        policies[ITEM_KEY] = vocab_policy(ITEM_KEY, "id", tcfg)
        policies.update({s.name: vocab_policy(s.name, s.type, tcfg) for s in item_vocab_specs})
        vocab_files, vocab_coverage = weighted | "BuildVocabulary" >> BuildVocabulary(policies)

        # ---- seen.jsonl: positives per key and split
        seen_file = (positives
             | "SeenPairs" >> beam.Map(lambda r: (r[KEY], seen_value(r[SPLIT], r[ITEM_KEY])))
             | "SeenGroup" >> beam.GroupByKey()
             | "SeenLine" >> beam.Map(seen_line)
             | "SeenFile" >> SortedFile(SEEN_FILE))

        # ---- query_table.jsonl: every user in users.* plus every key seen in interactions
        if schema.query_key == USER_KEY:
            keys = (interactions
                    | "InteractionKeys" >> beam.Map(lambda r: (r[KEY], None))
                    | "DistinctKeys" >> beam.CombinePerKey(lambda _: None))
            user_rows = ((users if users is not None else p | "NoUsers" >> beam.Create([]))
                         | "UserRowsById" >> beam.Map(lambda u: (u[USER_KEY], u)))
            query_rows = ({"user": user_rows, "seen": keys}
                          | "QueryCoGroup" >> beam.CoGroupByKey()
                          | "QueryRows" >> beam.ParDo(MergeQueryRowFn(table_specs)))
        else:
            query_rows = interactions | "QueryRows" >> beam.Map(
                lambda r, names=[s.name for s in table_specs]: {n: r[n] for n in names})
        query_table_specs = [*table_specs, *(s for s in query_specs if s.key_count)]
        if key_counts is not None:
            query_rows = query_rows | "QueryKeyCounts" >> beam.Map(with_key_counts, key_count_specs,
                                                                  schema.query_key, key_counts)
        query_lines = (fill_numerics(query_rows, "FillQueryTable", query_numeric, query_stats)
                       | "QueryLine" >> beam.Map(query_line, query_table_specs, schema.query_key)
                       # Several interactions share a key: keep one deterministic line per key.
                       | "OnePerKey" >> beam.CombinePerKey(min))
        if latest is not None:
            query_lines = ({"line": query_lines, "latest": latest}
                           | "QueryHistoryCoGroup" >> beam.CoGroupByKey()
                           | "QueryHistory" >> beam.ParDo(AddHistoryFn(history_spec.name)))
        query_file = query_lines | "QueryTableFile" >> SortedFile(QUERY_TABLE_FILE)
        counted["queries"] = query_lines

        # ---- stats.json
        # Counted per collection (an empty one counts 0), then the singletons together: a Flatten
        # of the 10M elements themselves would be held in memory by the in-process runner.
        all_counts = tuple(pc
                           | f"Count[{name}]" >> beam.combiners.Count.Globally()
                           | f"Name[{name}]" >> beam.Map(lambda n, k=name: (k, n)) for name, pc in counted.items())
        all_counts = all_counts | "AllCounts" >> beam.Flatten()
        stats_file = (p
             | "StatsSeed" >> beam.Create([None])
             | "AssembleStats" >> beam.Map(assemble_stats,
                                           counts=pvalue.AsDict(all_counts),
                                           numeric_query=pvalue.AsSingleton(query_stats),
                                           numeric_items=pvalue.AsSingleton(item_stats),
                                           vocab_coverage=pvalue.AsDict(vocab_coverage),
                                           split=split, encoders=self._encoders))
        small_files = ((vocab_files, seen_file, query_file, display_file, cold_file, stats_file)
                       | "SmallFiles" >> beam.Flatten())
        return {**{name: encoded[name] for name in (*SPLITS, NEGATIVES)}, contract.ITEMS_SPLIT: items_written,
                SMALL_FILES: small_files}


def _tfrecord_sink(out_dir: str, name: str):
    """``<out_dir>/<name>-SSSSS-of-NNNNN.tfrecord`` (the ``<name>-*.tfrecord`` of the contract)."""
    return beam.io.WriteToTFRecord(storage.join(out_dir, name), file_name_suffix=contract.TFRECORD_SUFFIX)
