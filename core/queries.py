"""Distinct queries of a transform split: the query-side raw features, one row per key.

A query is a distinct ``schema.query_key`` value of an interaction split (``<split>-*.tfrecord``
in the transform output); its features are those of its first example in file order. This is
the protocol of ``trainer.evalset.load_queries`` without the relevance / masking bookkeeping the
evaluator needs, so stages that may not import the trainer (the embed stage, which pushes a
sample of real queries through the query tower for the index tuner) read queries the same way.

TensorFlow is imported lazily (``tf.data`` for TFRecords, ``tf.io.gfile`` for local or gs://).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from core.config import SchemaConfig
from core.contracts import files as names
from core.records import is_float, tf_feature_description

#: Where real queries are taken from, in order of preference: held-out queries first (what
#: serving will see next is closest to the newest, unseen ones), train only as a last resort.
QUERY_SPLITS = (names.VALID, names.TEST, names.TRAIN)
#: Records parsed per ``tf.io.parse_example`` call: large enough to amortise TF dispatch.
PARSE_BATCH = 4096


def _tf():
    import tensorflow as tf

    return tf


def split_files(transformed_dir: str, split: str) -> list[str]:
    """Sorted ``<split>-*.tfrecord`` paths of a transform output (possibly empty)."""
    pattern = "/".join([str(transformed_dir).rstrip("/"), names.split_pattern(split)])
    return sorted(_tf().io.gfile.glob(pattern))


def distinct_queries(schema: SchemaConfig, files: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every distinct query key of ``files`` with the features of its first example.

    Streams the files (memory grows with distinct keys, not with examples, so the train
    split of a large catalog is readable too).

    Returns:
        (keys, features): Q keys in first-seen order, and ``{query feature name: [Q]}``
        (strings as object arrays of ``str``, numerics as float32), row i = ``keys[i]``.
    """
    tf = _tf()
    specs = list(schema.query_features)
    key_name = schema.query_key
    first: dict[str, tuple] = {}
    if files:
        description = tf_feature_description(specs)
        ds = (tf.data.TFRecordDataset(list(files)).batch(PARSE_BATCH)
              .map(lambda rec: tf.io.parse_example(rec, description)))
        for batch in ds:
            cols = {s.name: batch[s.name].numpy() for s in specs}
            for row, raw_key in enumerate(cols[key_name]):
                key = raw_key.decode("utf-8") if isinstance(raw_key, bytes) else str(raw_key)
                if key not in first:
                    first[key] = tuple(cols[s.name][row] for s in specs)
    keys = list(first)
    features: dict[str, np.ndarray] = {}
    for j, spec in enumerate(specs):
        values = [first[k][j] for k in keys]
        if is_float(spec):
            features[spec.name] = np.asarray(values, dtype=np.float32)
        else:
            features[spec.name] = np.array([v.decode("utf-8") for v in values], dtype=object)
    return keys, features


def first_split_with_queries(schema: SchemaConfig, transformed_dir: str,
                             splits: Sequence[str] = QUERY_SPLITS
                             ) -> tuple[Optional[str], list[str], dict[str, np.ndarray]]:
    """The distinct queries of the first of ``splits`` that has any.

    Returns:
        (split, keys, features) as in :func:`distinct_queries`; ``(None, [], {})`` when no
        split has a single example (for example a transform output written by hand in tests).
    """
    for split in splits:
        keys, features = distinct_queries(schema, split_files(transformed_dir, split))
        if keys:
            return split, keys, features
    return None, [], {}
