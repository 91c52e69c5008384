"""tf.data input from the transform's TFRecords, and small eager readers for evaluation.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from core.config import FeatureSpec
from core.contracts import files as names
from core.records import is_float, tf_feature_description, value_shape
from trainer.tfenv import import_tf

tf = import_tf()

#: Keys of a training element that carries labelled negatives (see :func:`with_labelled_negatives`).
POSITIVES = "positives"
LABELLED_NEGATIVES = "labelled_negatives"

#: Records held by the shuffle buffer (serialised Examples, so ~100 B - 2 KB each).
SHUFFLE_BUFFER = 50_000


def make_dataset(files: Sequence[str], specs: Sequence[FeatureSpec], batch_size: int, *,
                 shuffle: bool, seed: int = 0, num_parallel_calls: int = 1, repeat: bool = False,
                 shard: Optional[tuple[int, int]] = None):
    """Batched feature dicts ``{name: [B] tf.string | tf.float32}``.

    Shuffles serialised records (seeded, reshuffled each epoch), batches them
    (the last batch may be smaller) and parses whole batches with
    ``tf.io.parse_example``, which is much cheaper than per-record parsing.
    With ``repeat`` the stream is endless and every batch is full.
    ``shard=(index, count)`` keeps every count-th record from the index-th (one replica's
    share of a multi-worker run, sharded by record: a split is often a single file, too few
    for tf.data's FILE policy) and turns tf.data's auto-sharding off (:func:`sharded_by_hand`).
    """
    if not files:
        raise ValueError("make_dataset: no TFRecord files given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    description = tf_feature_description(specs)
    # num_parallel_reads only for several files read at once: even 1 wraps the reader in a
    # parallel interleave that hands over one record at a time, 28x slower on one file
    # (1M records: 25.7 s against 0.9 s; the in-memory parse of the 1M-item split took 241 s).
    reads = min(len(files), num_parallel_calls)
    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=reads if reads > 1 else None)
    if shard is not None:
        ds = ds.shard(shard[1], shard[0])
    if shuffle:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(lambda rec: tf.io.parse_example(rec, description), num_parallel_calls=num_parallel_calls,
                deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds if shard is None else sharded_by_hand(ds)


def sharded_by_hand(ds):
    """``ds`` with tf.data's auto-sharding off: it already holds one replica's share
    (a ``tf.distribute`` strategy must not shard it again)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def files_size(files: Sequence[str]) -> int:
    """Total bytes of ``files`` (local or gs://)."""
    return sum(int(tf.io.gfile.stat(f).length) for f in files)


class InMemoryExamples:
    """A split parsed once into column tensors, served as freshly shuffled batches every epoch.

    Parsing TFRecords and shuffling serialised records through a buffer every epoch cost
    the trainer CPU time the train step needs (on 2 cores they compete). Here the records
    are parsed once (``tf.io.parse_example`` in batches); an epoch is a permutation of the
    row indices (numpy, seeded by ``(seed, epoch)``, so the order does not depend on how
    many epochs this process ran before: a resumed run sees the same batches) and each
    batch is one ``tf.gather`` per column.

    Args:
        columns: ``{name: [N] tf.string | tf.float32}``, all of the same length N.
    """

    def __init__(self, columns: dict):
        if not columns:
            raise ValueError("InMemoryExamples: no columns")
        sizes = {int(v.shape[0]) for v in columns.values()}
        if len(sizes) != 1:
            raise ValueError(f"InMemoryExamples: columns differ in length {sorted(sizes)}")
        self.columns = dict(columns)
        self.size = sizes.pop()

    @classmethod
    def from_files(cls, files: Sequence[str], specs: Sequence[FeatureSpec], *, num_parallel_calls: int = 1,
                   parse_batch: int = 8192) -> "InMemoryExamples":
        """Parse every record of ``files`` (in file order) into columns."""
        chunks: dict[str, list] = {s.name: [] for s in specs}
        for batch in make_dataset(files, specs, parse_batch, shuffle=False, num_parallel_calls=num_parallel_calls):
            for name in chunks:
                chunks[name].append(batch[name])
        columns = {}
        for spec in specs:
            parts = chunks[spec.name]
            columns[spec.name] = (tf.concat(parts, axis=0) if parts else
                                  tf.zeros([0, *value_shape(spec)], tf.float32 if is_float(spec) else tf.string))
        return cls(columns)

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """int64 [N]: the row order of ``epoch`` (a permutation, fixed by ``(seed, epoch)``)."""
        return np.random.default_rng([int(seed), int(epoch)]).permutation(self.size).astype(np.int64)

    def epoch_dataset(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                      parts: Optional[Sequence[int]] = None, n_parts: int = 1):
        """One pass as batches ``{name: [B]}`` (the last one may be smaller).

        ``parts`` / ``n_parts`` (multi-worker input, one worker's replicas): every global
        batch of ``batch_size`` rows is cut into ``n_parts`` contiguous slices (sizes differ by
        at most one row; the last batch's may be empty) and the dataset yields slices ``parts``
        of batch 0, then of batch 1, ... Every worker holds all rows and draws the same seeded
        permutation, so the replicas of one step together see exactly the global batch a
        single process would, and every worker runs the same number of steps. Auto-sharding
        is off (:func:`sharded_by_hand`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = tf.constant(self.order(seed, epoch) if shuffle else np.arange(self.size, dtype=np.int64))
        columns = self.columns
        size, n_batches = self.size, -(-self.size // batch_size)

        def rows_of(b):
            start = b * batch_size
            return order[start: tf.minimum(start + batch_size, size)]

        if parts is None:
            return self._batches(order, batch_size)

        if n_parts < 1 or not len(parts) or min(parts) < 0 or max(parts) >= n_parts:
            raise ValueError(f"epoch_dataset: parts {list(parts)} out of range for n_parts={n_parts}")
        local = tf.constant(list(parts), tf.int64)

        def part(k):
            rows = rows_of(k // len(parts))
            p, n = local[k % len(parts)], tf.shape(rows, out_type=tf.int64)[0]
            rows = rows[p * n // n_parts: (p + 1) * n // n_parts]
            return {name: tf.gather(values, rows) for name, values in columns.items()}

        ds = tf.data.Dataset.range(n_batches * len(parts)).map(part).prefetch(tf.data.AUTOTUNE)
        return sharded_by_hand(ds)

    def epoch_chunks(self, batch_size: int, *, seed: int = 0, epoch: int = 0):
        """One pass as :data:`STEPS` chunks ``{name: [k, B, ...]}`` (k <= :data:`GATHER_BATCHES`
        consecutive full batches) and, when N is not a multiple of B, a last :data:`BATCH`
        ``{name: [N mod B, ...]}``: the batches of :meth:`epoch_dataset`, in its order, handed
        to :class:`trainer.loop.ChunkedTrainLoop` as tensors instead of through tf.data."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = self.order(seed, epoch)
        full = self.size // batch_size
        for start in range(0, full, GATHER_BATCHES):
            rows = order[start * batch_size: min(start + GATHER_BATCHES, full) * batch_size]
            yield STEPS, {name: _stacked(tf.gather(values, rows), batch_size) for name, values in self.columns.items()}
        if self.size % batch_size:
            rows = order[full * batch_size:]
            yield BATCH, {name: tf.gather(values, rows) for name, values in self.columns.items()}

    def _batches(self, order, batch_size: int):
        """Batches ``order[0:B], order[B:2B], ...`` of every column, the last one maybe smaller.

        Rows are gathered :data:`GATHER_BATCHES` batches at a time, one ``tf.gather`` per column,
        and the chunk is cut into batches by ``unbatch`` of its [k, B] reshape: per batch that is
        a slice, not a traced function call (a gather per batch and column, run on tf.data's
        threads, was ~10% of an ids-only MovieLens epoch's CPU at batch 512, profiled)."""
        columns, size = self.columns, self.size
        full = size // batch_size
        chunk_rows = batch_size * GATHER_BATCHES

        def chunk(c):
            rows = order[c * chunk_rows: tf.minimum((c + 1) * chunk_rows, full * batch_size)]
            return {name: _stacked(tf.gather(values, rows), batch_size) for name, values in columns.items()}

        ds = tf.data.Dataset.range(-(-full // GATHER_BATCHES)).map(chunk).prefetch(1).unbatch()
        if size % batch_size:
            rest = tf.data.Dataset.from_tensors(order[full * batch_size:])
            ds = ds.concatenate(rest.map(lambda rows: {name: tf.gather(values, rows)
                                                       for name, values in columns.items()}))
        return ds


#: Batches gathered at once by :meth:`InMemoryExamples.epoch_dataset` / ``epoch_chunks``:
#: chunks of 64 x B rows (32k at B = 512) keep the copy small next to the split held in memory.
GATHER_BATCHES = 64

#: The kinds of ``epoch_chunks`` items: consecutive full batches stacked [k, B, ...], or one
#: (short, last) batch [n, ...].
STEPS, BATCH = "steps", "batch"


def _stacked(values, batch_size: int):
    """[k * B, ...] -> [k, B, ...]."""
    return tf.reshape(values, tf.concat([[-1, batch_size], tf.shape(values)[1:]], 0))


class StreamedExamples:
    """A split too large to hold in memory, served in shuffled blocks every epoch.

    The files are read (interleaved, so a block mixes records of several files) in blocks of
    ``block_rows`` records; each block is parsed in one ``tf.io.parse_example`` call, passed
    through ``prepare`` once (e.g. the id look-up of :func:`trainer.step_input.look_up_columns`,
    vectorised over the whole block), permuted (stateless, seeded by ``(seed, epoch, block)``)
    and cut into batches; the next block is made ready while the current one trains.

    With ``cache_dir`` (local disk) the prepared blocks are parsed once, by :meth:`fill_cache`
    or the first epoch, into a tf.data cache file there, and every epoch reads whole blocks
    back instead of parsing records again: the per-record parse is what streaming cost over
    the in-memory path (docs/BENCHMARKS.md). The cache holds the prepared columns (ids as int64
    rows), so it is about the size of the parsed split. Without a cache, each epoch parses
    afresh, in a seeded file order.

    Compared with a per-record shuffle buffer, no record goes through tf.data one by one, and
    a block mixes more: up to 1M+ records instead of a 50k window (the transform writes a key's
    rows next to each other, so a small window sees few keys).

    ``block_rows`` is rounded up to a multiple of the batch size, so only an epoch's last batch
    is short and the step count is ``ceil(N / batch_size)`` as in memory. Like
    :class:`InMemoryExamples`, an epoch's batches depend only on ``(seed, epoch)``: a resumed
    run sees the batches it would have seen.

    Args:
        files: the split's TFRecord files.
        specs: the features to parse.
        block_rows: records per block (memory: about three blocks' parsed columns at a time).
        prepare: ``{name: [n]} -> {name: [n]}`` applied once per block, or None.
        cache_dir: a local folder for the parsed-block cache, or None (parse every epoch).
    """

    def __init__(self, files: Sequence[str], specs: Sequence[FeatureSpec], *, block_rows: int,
                 prepare=None, num_parallel_calls: int = 1, cache_dir: Optional[str] = None,
                 description: Optional[dict] = None):
        if not files:
            raise ValueError("StreamedExamples: no TFRecord files given")
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.files = list(files)
        self.block_rows = int(block_rows)
        self.cache_dir = cache_dir
        self._description = description if description is not None else tf_feature_description(specs)
        self._prepare = prepare
        self._parallel = num_parallel_calls
        self._cached: dict[int, object] = {}  # block size -> its filled cache dataset

    def with_prepare(self, prepare) -> "StreamedExamples":
        """The same split with ``prepare`` applied once per block (a cache not yet filled)."""
        return StreamedExamples(self.files, (), block_rows=self.block_rows, prepare=prepare,
                                num_parallel_calls=self._parallel, cache_dir=self.cache_dir,
                                description=self._description)

    def _block_size(self, batch_size: int) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return -(-self.block_rows // batch_size) * batch_size

    def _blocks(self, block: int, files: Sequence[str], batch_size: int):
        """Prepared blocks ``{name: [<= block]}`` of ``files``, in that order."""
        cycle = min(len(files), 8)
        ds = tf.data.Dataset.from_tensor_slices(list(files)).interleave(
            tf.data.TFRecordDataset, cycle_length=cycle, block_length=max(1, batch_size // cycle),
            num_parallel_calls=min(cycle, self._parallel), deterministic=True)
        ds = ds.batch(block).map(lambda records: tf.io.parse_example(records, self._description))
        return ds if self._prepare is None else ds.map(self._prepare)

    def fill_cache(self, batch_size: int) -> None:
        """Parse every block once into the cache for ``batch_size`` (no-op without ``cache_dir``
        or when filled). A tf.data cache is only kept once it has been read to its end, so it
        is filled here in one full pass rather than by a training epoch that stops at its step
        count."""
        block = self._block_size(batch_size)
        if self.cache_dir is None or block in self._cached:
            return
        path = os.path.join(self.cache_dir, f"blocks-{block}")
        ds = self._blocks(block, self.files, batch_size).cache(path)
        for _ in ds:
            pass
        self._cached[block] = ds

    def _permuted_blocks(self, batch_size: int, seed: int, epoch: int):
        """The epoch's prepared blocks, each permuted (stateless, seeded by ``(seed, epoch)`` and
        the block's index), the next one made ready while the current one trains."""
        block = self._block_size(batch_size)
        rng = np.random.default_rng([int(seed), int(epoch)])
        files = [self.files[i] for i in rng.permutation(len(self.files))]
        block_seed = int(rng.integers(0, 2**31 - 1))
        if self.cache_dir is not None:
            self.fill_cache(batch_size)
            blocks = self._cached[block]
        else:
            blocks = self._blocks(block, files, batch_size)

        def permuted(index, columns):
            n = tf.shape(next(iter(columns.values())), out_type=tf.int64)[0]
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n), seed=tf.stack([tf.constant(block_seed, tf.int64), index]))
            return {name: tf.gather(values, order) for name, values in columns.items()}

        return blocks.enumerate().map(permuted).prefetch(1)

    def epoch_dataset(self, batch_size: int, *, seed: int = 0, epoch: int = 0):
        """One pass as batches ``{name: [B]}`` (the last one may be smaller)."""
        def batches(columns):
            n = tf.shape(next(iter(columns.values())), out_type=tf.int64)[0]
            return tf.data.Dataset.range(0, n, batch_size).map(
                lambda start: {name: values[start: start + batch_size] for name, values in columns.items()})

        return self._permuted_blocks(batch_size, seed, epoch).flat_map(batches).prefetch(tf.data.AUTOTUNE)

    def epoch_chunks(self, batch_size: int, *, seed: int = 0, epoch: int = 0):
        """The batches of :meth:`epoch_dataset`, in its order, as ``(STEPS, {name: [k, B, ...]})``
        per block (every block but the last holds a multiple of B rows) and ``(BATCH, {name: [n,
        ...]})`` for the epoch's short last batch; see :meth:`InMemoryExamples.epoch_chunks`."""
        for columns in self._permuted_blocks(batch_size, seed, epoch):
            n = int(next(iter(columns.values())).shape[0])
            full = n // batch_size * batch_size
            if full:
                yield STEPS, {name: _stacked(values[:full], batch_size) for name, values in columns.items()}
            if n > full:
                yield BATCH, {name: values[full:] for name, values in columns.items()}


def block_rows_for(files: Sequence[str], n_records: int, block_mb: int, batch_size: int) -> int:
    """Records per streamed block: about ``block_mb`` MB of the files' serialised records, at
    least one batch.

    Not cut smaller to get more blocks: the transform writes a key's rows together, so a block
    must hold many keys for its batches to mix them (on the 144-row test split, 8 blocks of 5
    keys each halved validation recall). A split smaller than one block is one block, read
    and parsed before its epoch's first step; a larger one overlaps the next block's parse
    with training."""
    mean_bytes = max(1.0, files_size(files) / max(1, n_records))
    return max(batch_size, int(block_mb * (1 << 20) / mean_bytes))


def labelled_negatives_dataset(files: Sequence[str], specs: Sequence[FeatureSpec], batch_size: int, *,
                               seed: int = 0, num_parallel_calls: int = 1, shard: Optional[tuple[int, int]] = None):
    """Endless shuffled batches of explicit label-0 pairs (``train_negatives-*.tfrecord``),
    ``{name: [batch_size]}``, or None (with a printed note) when there are none.
    ``shard``: one replica's share, as in :func:`make_dataset`."""
    n = count_records(files)
    if n == 0:
        print("[train] train.labelled_negative_weight > 0 but there are no labelled negatives "
              f"({names.split_pattern(names.NEGATIVES_SPLIT)} missing or empty): the labelled-negative term is off",
              flush=True)
        return None
    # Repeated: there are usually far fewer labelled negatives than positives, and every
    # positives batch needs a partner batch.
    return make_dataset(files, specs, batch_size, shuffle=True, seed=seed + 1, num_parallel_calls=num_parallel_calls,
                        repeat=True, shard=shard)


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
        if is_float(spec):
            parts = chunks[spec.name] or [np.zeros((0, *value_shape(spec)), np.float32)]
            out[spec.name] = np.concatenate(parts).astype(np.float32)
        else:
            parts = chunks[spec.name] or [np.zeros(0, object)]
            out[spec.name] = np.array([v.decode("utf-8") for v in np.concatenate(parts)], dtype=object)
    return out
