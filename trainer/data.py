"""tf.data input from the transform's TFRecords, and small eager readers for evaluation.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core.config import FeatureSpec
from core.records import is_numeric, tf_feature_description
from trainer.tfenv import import_tf

tf = import_tf()

#: Keys of a training element that carries labelled negatives (see :func:`with_labelled_negatives`).
POSITIVES = "positives"
LABELLED_NEGATIVES = "labelled_negatives"

#: Records held by the shuffle buffer (serialised Examples, so ~100 B - 2 KB each).
SHUFFLE_BUFFER = 50_000


def make_dataset(files: Sequence[str], specs: Sequence[FeatureSpec], batch_size: int, *,
                 shuffle: bool, seed: int = 0, num_parallel_calls: int = 1, repeat: bool = False):
    """Batched feature dicts ``{name: [B] tf.string | tf.float32}``.

    Shuffles serialised records (seeded, reshuffled each epoch), batches them
    (the last batch may be smaller) and parses whole batches with
    ``tf.io.parse_example``, which is much cheaper than per-record parsing.
    With ``repeat`` the stream is endless and every batch is full.
    """
    if not files:
        raise ValueError("make_dataset: no TFRecord files given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    description = tf_feature_description(specs)
    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=min(len(files), num_parallel_calls))
    if shuffle:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(lambda rec: tf.io.parse_example(rec, description), num_parallel_calls=num_parallel_calls,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def labelled_negatives_dataset(files: Sequence[str], specs: Sequence[FeatureSpec], batch_size: int, *,
                               seed: int = 0, num_parallel_calls: int = 1):
    """Endless shuffled batches of explicit label-0 pairs (``train_negatives-*.tfrecord``),
    ``{name: [batch_size]}``, or None (with a printed note) when there are none."""
    n = count_records(files)
    if n == 0:
        print("[train] train.labelled_negative_weight > 0 but there are no labelled negatives "
              "(train_negatives-*.tfrecord missing or empty): the labelled-negative term is off", flush=True)
        return None
    # Repeated: there are usually far fewer labelled negatives than positives, and every
    # positives batch needs a partner batch.
    return make_dataset(files, specs, batch_size, shuffle=True, seed=seed + 1, num_parallel_calls=num_parallel_calls,
                        repeat=True)


def with_labelled_negatives(positives, negatives):
    """Zip a finite positives stream with an endless negatives stream into
    ``{"positives": batch, "labelled_negatives": batch}`` elements (the keys
    :class:`trainer.model.TwoTowerModel` looks for); ends with the positives."""
    return tf.data.Dataset.zip((positives, negatives)).map(lambda p, n: {POSITIVES: p, LABELLED_NEGATIVES: n})


def count_records(files: Sequence[str]) -> int:
    """Number of records in ``files`` (one C++ pass, no parsing)."""
    if not files:
        return 0
    ds = tf.data.TFRecordDataset(list(files)).batch(4096)
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.cast(tf.shape(b)[0], tf.int64)))


def read_columns(files: Sequence[str], specs: Sequence[FeatureSpec], batch_size: int = 4096
                 ) -> dict[str, np.ndarray]:
    """Whole files as numpy columns: strings -> object arrays of ``str``, numerics -> float32.

    For evaluation-sized data (catalog, valid/test splits), not the training stream.
    """
    specs = list(specs)
    chunks: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    if files:
        for batch in make_dataset(files, specs, batch_size, shuffle=False):
            for spec in specs:
                chunks[spec.name].append(batch[spec.name].numpy())
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if is_numeric(spec):
            parts = chunks[spec.name] or [np.zeros(0, np.float32)]
            out[spec.name] = np.concatenate(parts).astype(np.float32)
        else:
            parts = chunks[spec.name] or [np.zeros(0, object)]
            out[spec.name] = np.array([v.decode("utf-8") for v in np.concatenate(parts)], dtype=object)
    return out
