"""The train split as the training loop reads it: in memory, streamed, or sharded per worker.

:func:`load_train_inputs` decides how the split is held; :class:`TrainInputs` hands out one
epoch's batches for whichever way (and for a multi-worker replica, only its share of each
global batch). Kept out of trainer/train.py so the input rules can be tested without a model.

Trainer-internal (imports TensorFlow at module import, through trainer.data).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from core.config import Config, FeatureSpec
from core.contracts import files as names
from trainer import artifacts
from trainer.data import (InMemoryExamples, StreamedExamples, block_rows_for, count_records, files_size,
                          labelled_negatives_dataset, make_dataset, with_labelled_negatives)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one pass (the last batch may be smaller)."""
    return -(-n_train // batch_size)


@dataclass
class TrainInputs:
    """The train split and its labelled negatives, held one of three ways.

    Attributes:
        config: the run's config (``train.*`` decides batch size, seeds, parallelism).
        specs: the interaction record's features.
        files: the train split's TFRecord files.
        n_train: train examples (rows of the split).
        examples: the whole split parsed into memory (when it fits ``train.in_memory_max_mb``),
            else None.
        streamed: the split read block by block (too big for memory, single process), else None.
        negatives: batches of labelled negatives to pair with the positives (single process
            with ``train.labelled_negative_weight``), else None.
        negatives_files: the labelled negatives' files (multi-worker replicas read their share).
    """

    config: Config
    specs: Sequence[FeatureSpec]
    files: list[str]
    n_train: int
    examples: Optional[InMemoryExamples]
    streamed: Optional[StreamedExamples]
    negatives: object
    negatives_files: Optional[list[str]]

    @property
    def in_memory(self) -> bool:
        return self.examples is not None

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.n_train, self.config.train.batch_size)

    @property
    def source(self):
        """What a chunked loop (trainer/loop.py) reads: the in-memory or the streamed examples."""
        return self.examples if self.examples is not None else self.streamed

    def prepare(self, columns_to_rows) -> None:
        """Apply ``columns_to_rows`` (column dict -> column dict, e.g. the ids looked up into
        table rows, trainer/step_input.py) to the examples once: now for in-memory ones, per
        block as it is parsed for streamed ones."""
        if self.examples is not None:
            self.examples = InMemoryExamples(columns_to_rows(self.examples.columns))
        elif self.streamed is not None:
            self.streamed = self.streamed.with_prepare(columns_to_rows)

    def fill_stream_cache(self) -> None:
        """Parse a streamed split once, before the first epoch (no-op otherwise)."""
        if self.streamed is None:
            return
        started = time.perf_counter()
        self.streamed.fill_cache(self.config.train.batch_size)
        if self.streamed.cache_dir is not None:
            print(f"[train] streamed split parsed into {self.streamed.cache_dir} in "
                  f"{time.perf_counter() - started:.1f}s (blocks of {self.streamed.block_rows:,} records)", flush=True)

    def positives(self, epoch: int):
        """Batches of train positives for 1-based ``epoch`` (a seeded permutation per epoch)."""
        t = self.config.train
        if self.examples is not None:
            return self.examples.epoch_dataset(t.batch_size, seed=t.seed, epoch=epoch)
        if self.streamed is None:  # multi_worker streams through worker_input; this is for building
            return make_dataset(self.files, self.specs, t.batch_size, shuffle=False, num_parallel_calls=t.num_workers)
        return self.streamed.epoch_dataset(t.batch_size, seed=t.seed, epoch=epoch)

    def dataset(self, epoch: int, strategy=None):
        """One epoch's input for ``model.fit``: the positives (with labelled negatives when
        configured); under a multi-worker ``strategy``, each worker's share (:meth:`worker_input`)."""
        if strategy is not None:
            return strategy.distribute_datasets_from_function(lambda context: self.worker_input(epoch, context))
        positives = self.positives(epoch)
        return positives if self.negatives is None else with_labelled_negatives(positives, self.negatives)

    def worker_input(self, epoch: int, context):
        """One worker's input (``distribute_datasets_from_function``): the slices of every
        global batch that belong to its replicas, so a step's replicas together train on the
        global batch of ``train.batch_size`` rows a single process would (the same seeded
        order), and every worker runs ``steps_per_epoch`` steps (collectives need equal counts)."""
        t = self.config.train
        workers, worker = context.num_input_pipelines, context.input_pipeline_id
        replicas = context.num_replicas_in_sync
        local = replicas // workers
        per_replica = -(-t.batch_size // replicas)
        if self.examples is not None:
            positives = self.examples.epoch_dataset(t.batch_size, seed=t.seed, epoch=epoch,
                                                    parts=range(worker * local, (worker + 1) * local),
                                                    n_parts=replicas)
        else:  # streamed: this worker's records, endless, cut to steps_per_epoch by fit
            positives = make_dataset(self.files, self.specs, per_replica, shuffle=True, seed=t.seed + epoch,
                                     num_parallel_calls=t.num_workers, repeat=True, shard=(worker, workers))
        if self.negatives_files is None:
            return positives
        worker_negatives = labelled_negatives_dataset(self.negatives_files, self.specs, per_replica, seed=t.seed,
                                                      num_parallel_calls=t.num_workers, shard=(worker, workers))
        return positives if worker_negatives is None else with_labelled_negatives(positives, worker_negatives)


def load_train_inputs(config: Config, transformed_dir: str, specs: Sequence[FeatureSpec], *,
                      multi_worker: bool) -> TrainInputs:
    """The train split of ``transformed_dir``, held as ``train.*`` says.

    A split that fits in memory is parsed once; each epoch is then a fresh seeded permutation
    of in-memory rows (no per-epoch parse, no shuffle buffer). A bigger one is streamed in
    blocks (cached on local disk with ``train.stream_cache``). Multi-worker input is sharded
    by hand (each replica its slice of every global batch), not by tf.data's auto-shard rewrite.

    Raises:
        FileNotFoundError: no train split.
        ValueError: the train split is empty.
    """
    t = config.train
    files = artifacts.require_split_files(transformed_dir, "train")
    in_memory = files_size(files) <= t.in_memory_max_mb * (1 << 20)
    examples = InMemoryExamples.from_files(files, specs, num_parallel_calls=t.num_workers) if in_memory else None
    n_train = examples.size if in_memory else count_records(files)
    if n_train == 0:
        raise ValueError(f"{transformed_dir}: the train split is empty")
    streamed = None
    if not in_memory and not multi_worker:
        cache_dir = None
        if t.stream_cache:  # local disk, this process's own; removed when it exits
            cache_dir = tempfile.mkdtemp(prefix="twotower-stream-cache-")
            atexit.register(shutil.rmtree, cache_dir, True)
        streamed = StreamedExamples(
            files, specs, block_rows=block_rows_for(files, n_train, t.stream_block_mb, t.batch_size),
            num_parallel_calls=t.num_workers, cache_dir=cache_dir)
    negatives_files = (artifacts.split_files(transformed_dir, names.NEGATIVES_SPLIT)
                       if t.labelled_negative_weight > 0.0 else None)
    negatives = None
    if negatives_files is not None and not multi_worker:
        negatives = labelled_negatives_dataset(negatives_files, specs, t.batch_size, seed=t.seed,
                                               num_parallel_calls=t.num_workers)
        if negatives is None and t.loss == "labelled_bce":
            raise ValueError(f"train.loss=labelled_bce trains on labelled pairs alone, but {transformed_dir} has no "
                             f"labelled negatives ({names.NEGATIVES_SPLIT}: interactions with label 0): "
                             f"add label-0 rows or use train.loss=softmax")
    return TrainInputs(config, specs, files, n_train, examples, streamed, negatives, negatives_files)
