"""A training pass over an epoch's batches held as tensors, many steps per compiled call.

``model.fit`` draws every batch from a ``tf.data`` iterator inside its compiled loop, and the
batches of a dataset built from slices of unknown length have an unknown batch dimension, so
every step's graph keeps its shape arithmetic (``Shape``, ``BroadcastGradientArgs``,
``Reshape``) instead of folding it. Here an epoch comes as chunks of consecutive full batches
stacked ``[k, B, ...]`` (``epoch_chunks`` of :class:`trainer.data.InMemoryExamples` and
:class:`trainer.data.StreamedExamples`), and one ``tf.function`` call runs the model's own
``train_step`` over a chunk's k batches, sliced in a ``tf.range`` loop: the batch size B is
static inside the step, and no iterator or Keras callback machinery runs between steps.
Measured on the ids-only MovieLens step at batch 512, one thread: about 0.58x the CPU time per
epoch of ``model.fit`` over the same batches (docs/BENCHMARKS.md, "Training throughput").

It is the same training: the same ``train_step`` (loss, gradients, optimizer update, its step
counter and learning-rate schedule), the same batches in the same order; the loss reported
for an epoch is its last batch's, as from ``fit`` with ``steps_per_execution``. It is used for a
single-process (``train.distribute=none``), uncompiled step without labelled negatives;
distributed strategies, the XLA step and the zipped labelled-negative input keep ``fit``.
"""

from __future__ import annotations

from typing import Iterable, Tuple

from trainer.data import BATCH, STEPS
from trainer.tfenv import import_tf

tf = import_tf()


class ChunkedTrainLoop:
    """Runs ``model.train_step`` over ``(kind, columns)`` chunks (``trainer.data.STEPS`` /
    ``BATCH``); ``model`` must be compiled (its optimizer set)."""

    def __init__(self, model):
        self.model = model
        self._steps = None  # traced on the first chunk, for its column specs with k free
        self._one = tf.function(lambda batch: self.model.train_step(batch)["loss"])

    def _steps_function(self, stacked: dict):
        signature = {name: tf.TensorSpec([None, *values.shape[1:]], values.dtype)
                     for name, values in stacked.items()}

        @tf.function(input_signature=[signature])
        def run(chunk):
            n = tf.shape(next(iter(chunk.values())))[0]
            loss = tf.constant(0.0)
            for i in tf.range(n):
                loss = self.model.train_step({name: values[i] for name, values in chunk.items()})["loss"]
            return loss

        return run

    def run_epoch(self, chunks: Iterable[Tuple[str, dict]]) -> float:
        """Train on every chunk, in order; returns the last batch's loss (NaN for no batch)."""
        loss = None
        for kind, columns in chunks:
            if kind == STEPS:
                if self._steps is None:
                    self._steps = self._steps_function(columns)
                loss = self._steps(columns)
            elif kind == BATCH:
                loss = self._one(columns)
            else:
                raise ValueError(f"ChunkedTrainLoop: unknown chunk kind {kind!r}")
        return float("nan") if loss is None else float(loss)
