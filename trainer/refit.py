"""Refit: after early stopping chose the epochs, the published model also learns the held-out splits.

``train.refit`` (trainer/train.py calls :func:`refit_on_every_split` after the early-stopped
run): ``full`` retrains from the run's starting point (random weights, or the live version's
when warm-started) on train + valid + test for the early-stopped epoch count; ``continue``
trains the early-stopped model ``train.refit_epochs`` more epochs on the same rows. The
early-stopped model stays what evaluate scores and the gate judges (exported to
``heldout/``); the refit model is what gets published, and training.json's
``published_weights`` says which data it saw.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from core.config import Config, FeatureSpec
from core.contracts import files as names
from trainer import artifacts
from trainer.data import InMemoryExamples, with_labelled_negatives
from trainer.loop import ChunkedTrainLoop
from trainer.step_input import look_up_columns
from trainer.strategy import device_scope
from trainer.tfenv import import_tf
from trainer.train_inputs import steps_per_epoch

tf = import_tf()

#: The splits a refit trains on, in this order.
REFIT_SPLITS = names.SPLITS


@dataclass
class Trained:
    """A model and its towers (query, item) as the train stage holds them."""

    towers: tuple
    model: object


def refit_on_every_split(config: Config, transformed_dir: str, specs: Sequence[FeatureSpec], *,
                         trained: Trained, best_epoch: int, new_model: Callable[[int], tuple],
                         start_from: Optional[Callable[[tuple, object, dict], None]],
                         strategy, steps_per_call: int, looked_up: bool, logq, chunked: bool,
                         negatives, average: Optional[Callable[[object], object]] = None) -> tuple[Trained, dict]:
    """The refit model and training.json's refit report.

    Args:
        trained: the early-stopped model (``continue`` trains it further).
        best_epoch: the early-stopped epoch count (``full`` trains that many epochs).
        new_model: planned steps -> (towers, model, optimizer), fresh (call under the
            strategy's scope).
        start_from: for ``full``, loads the run's starting weights into a fresh model's built
            (towers, optimizer, first batch) — the live version's for a warm start — or None
            (random weights).
        steps_per_call: Keras ``steps_per_execution`` of the refit model.
        average: model -> a trainer.epochs.WeightAverage (train.warm_start_average): the refit
            keeps the mean of its epochs' end weights, as the run it refits did; None = the last.
        looked_up: whether the step reads table rows looked up ahead (trainer/step_input.py).
        logq: the sampling-probability table the lookups carry (or None).
        chunked: train with trainer/loop.py's chunks rather than Keras fit.
        negatives: labelled negatives to pair with each batch (or None).
    Returns:
        (refit model, {"mode", "epochs", "examples", "splits", "losses", "seconds"}).
    """
    t = config.train
    files = [f for split in REFIT_SPLITS for f in artifacts.split_files(transformed_dir, split)]
    everything = InMemoryExamples.from_files(files, specs, num_parallel_calls=t.num_workers)
    # A warm start whose own weights beat every epoch (best_epoch 0) still refits one epoch:
    # the published model learns the held-out splits, the newest interactions.
    epochs = max(best_epoch, 1) if t.refit == "full" else t.refit_epochs
    started = time.perf_counter()
    if t.refit == "full":  # from the run's starting point, as many epochs as early stopping chose
        tf.keras.utils.set_random_seed(t.seed)
        with strategy.scope(), device_scope(t.distribute, t.device):
            towers, model, optimizer = new_model(epochs * steps_per_epoch(everything.size, t.batch_size))
            model.compile(optimizer=optimizer, steps_per_execution=steps_per_call)
            if start_from is not None:
                start_from(towers, model, next(iter(everything.epoch_dataset(t.batch_size))))
        trained = Trained(tuple(towers), model)
    if looked_up:
        everything = InMemoryExamples(look_up_columns(everything.columns, trained.towers, logq))
    losses = []
    with device_scope(t.distribute, t.device):
        loop = ChunkedTrainLoop(trained.model) if chunked else None
        average = None if average is None else average(trained.model)
        for epoch in range(1, epochs + 1):
            seed_epoch = epoch + (0 if t.refit == "full" else best_epoch)
            if loop is not None:
                losses.append(loop.run_epoch(everything.epoch_chunks(t.batch_size, seed=t.seed, epoch=seed_epoch)))
            else:
                data = everything.epoch_dataset(t.batch_size, seed=t.seed, epoch=seed_epoch)
                if negatives is not None:
                    data = with_labelled_negatives(data, negatives)
                losses.append(trained.model.fit(data, epochs=1, verbose=0).history["loss"][-1])
            print(f"[train] refit ({t.refit}) epoch {epoch}/{epochs} on train+valid+test "
                  f"({everything.size:,} examples) loss={losses[-1]:.4f}", flush=True)
            if average is not None:
                average.add(trained.model.get_weights())
        if average is not None:  # the same train.warm_start_average as the run's own epochs
            trained.model.set_weights(average.mean(trained.model.get_weights()))
    return trained, {"mode": t.refit, "epochs": epochs, "examples": everything.size, "splits": list(REFIT_SPLITS),
                     "losses": [float(x) for x in losses], "seconds": round(time.perf_counter() - started, 3)}
