"""Training stage: ``train_model(config, transformed_dir, out_dir) -> dict``.

Writes (see docs/ARCHITECTURE.md, "train"):

- ``query_tower/``, ``item_tower/``: SavedModels loadable with :class:`core.towers.Tower`;
- ``training.json``: ``{"history": [{"epoch", "loss", "val_recall_at_10", "seconds"}],
  "best_epoch", "examples_per_second", "n_train", ...}``; ``epoch`` is 1-based,
  ``seconds`` is the wall time of the epoch's training pass (validation excluded) and
  ``examples_per_second`` the median over epochs of n_train / seconds;
- ``tensorboard/``: per-epoch scalars.

After every epoch the validation recall@10 is computed against the whole catalog
(each key's train items masked); training stops after ``train.patience`` epochs
without improvement and the best epoch's weights are restored before export.
Without a valid split there is no early stopping and the last epoch is kept.

TensorFlow is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

VALID_METRIC = "recall_at_10"


@dataclass
class EpochResult:
    epoch: int
    loss: float
    val_recall_at_10: Optional[float]
    seconds: float

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": self.loss, "val_recall_at_10": self.val_recall_at_10,
                "seconds": self.seconds}


@dataclass
class EarlyStopping:
    """Patience-based stopping on a metric to maximise (strict improvement only)."""

    patience: int
    best_value: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, value: Optional[float]) -> tuple[bool, bool]:
        """Record ``value`` for ``epoch``; returns (improved, should_stop).

        ``None`` (no validation data) always counts as an improvement, so the last
        epoch is the one kept and training runs to the end.
        """
        if value is None or value > self.best_value:
            self.best_value = self.best_value if value is None else value
            self.best_epoch, self.bad_epochs = epoch, 0
            return True, False
        self.bad_epochs += 1
        return False, self.bad_epochs > self.patience


def fit_with_early_stopping(n_epochs: int, patience: int, train_epoch: Callable[[int], float],
                            validate: Callable[[int], Optional[float]], snapshot: Callable[[], object],
                            restore: Callable[[object], None],
                            on_epoch: Callable[[EpochResult, bool], None] = lambda r, best: None,
                            ) -> tuple[list[EpochResult], int]:
    """Generic epoch loop, independent of TensorFlow (so it is unit-testable with fakes).

    Args:
        train_epoch: runs one pass for 1-based ``epoch``, returns its mean loss.
        validate: the metric to maximise after ``epoch`` (None = no validation).
        snapshot / restore: copy out / put back the model weights.
        on_epoch: called with each epoch's result and whether it is the best so far.
    Returns:
        (history, best_epoch); on return the model holds the best epoch's weights.
    """
    stopper = EarlyStopping(patience)
    history: list[EpochResult] = []
    best_weights = None
    for epoch in range(1, n_epochs + 1):
        start = time.perf_counter()
        loss = float(train_epoch(epoch))
        seconds = time.perf_counter() - start
        value = validate(epoch)
        result = EpochResult(epoch, loss, None if value is None else float(value), seconds)
        history.append(result)
        improved, stop = stopper.update(epoch, result.val_recall_at_10)
        if improved:
            best_weights = snapshot()
        on_epoch(result, improved)
        if stop:
            break
    if best_weights is not None and stopper.best_epoch != history[-1].epoch:
        restore(best_weights)
    return history, stopper.best_epoch


def _device_scope(tf, device: str):
    """``train.device``: auto = TensorFlow's choice, cpu = pinned to CPU, gpu = GPU required."""
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("train.device is 'gpu' but TensorFlow sees no GPU "
                               "(set train.device=auto or cpu)")
        return tf.device("/GPU:0")
    if device == "cpu":
        return tf.device("/CPU:0")
    return contextlib.nullcontext()


def train_model(config, transformed_dir: str, out_dir: str) -> dict:
    """Train the two towers on ``transformed_dir`` and export them to ``out_dir``.

    Args:
        config: validated :class:`core.config.Config`.
        transformed_dir: the transform stage's folder (local or gs://).
        out_dir: where ``query_tower/``, ``item_tower/``, ``training.json`` and
            ``tensorboard/`` are written.
    Returns:
        The ``training.json`` dict.
    Raises:
        FileNotFoundError: no train split, catalog or a vocabulary file.
        RuntimeError: ``train.device`` is gpu and none is visible.
    """
    from trainer.tfenv import import_tf

    tf = import_tf()
    from core.records import interaction_specs
    from trainer import artifacts
    from trainer.data import count_records, make_dataset
    from trainer.evalset import load_catalog, load_queries
    from trainer.export import embed_columns, export_tower, serving_function
    from trainer.features import build_towers
    from trainer.metrics import embedding_retrieval_metrics
    from trainer.model import SamplingProbability, TwoTowerModel, make_optimizer

    t = config.train
    out_dir = out_dir.rstrip("/")
    tf.io.gfile.makedirs(out_dir)
    tf.keras.utils.set_random_seed(t.seed)

    train_files = artifacts.require_split_files(transformed_dir, "train")
    n_train = count_records(train_files)
    if n_train == 0:
        raise ValueError(f"{transformed_dir}: the train split is empty")
    dataset = make_dataset(train_files, interaction_specs(config.schema), t.batch_size, shuffle=True,
                           seed=t.seed, num_parallel_calls=t.num_workers)

    with _device_scope(tf, t.device):
        query_tower, item_tower = build_towers(config, transformed_dir)
        logq = SamplingProbability.from_vocab(transformed_dir) if t.logq_correction else None
        model = TwoTowerModel(query_tower, item_tower, t.temperature, sampling_probability=logq)
        model.compile(optimizer=make_optimizer(config))
        query_serve, item_serve = serving_function(query_tower), serving_function(item_tower)

        catalog = load_catalog(config, transformed_dir)
        valid = load_queries(config, transformed_dir, "valid", ("train",), catalog,
                             max_queries=t.max_eval_queries, seed=t.seed)

        def train_epoch(epoch: int) -> float:
            hist = model.fit(dataset, epochs=1, verbose=0)
            return hist.history["loss"][-1]

        def validate(epoch: int) -> Optional[float]:
            if not len(valid):
                return None
            items = embed_columns(item_serve, item_tower, catalog.features)
            queries = embed_columns(query_serve, query_tower, valid.features)
            metrics = embedding_retrieval_metrics(queries, items, valid.relevant, valid.masked, ks=(10,),
                                                  ndcg_k=10)
            return metrics[VALID_METRIC]

        writer = tf.summary.create_file_writer(f"{out_dir}/tensorboard")

        def on_epoch(result: EpochResult, best: bool) -> None:
            rate = n_train / max(result.seconds, 1e-9)
            val = "n/a" if result.val_recall_at_10 is None else f"{result.val_recall_at_10:.4f}"
            print(f"[train] epoch {result.epoch}/{t.n_epochs} loss={result.loss:.4f} "
                  f"val_recall@10={val}{' *' if best else ''} {result.seconds:.1f}s {rate:,.0f} ex/s",
                  flush=True)
            with writer.as_default(step=result.epoch):
                tf.summary.scalar("loss", result.loss)
                tf.summary.scalar("examples_per_second", rate)
                if result.val_recall_at_10 is not None:
                    tf.summary.scalar("val_recall_at_10", result.val_recall_at_10)
            writer.flush()

        history, best_epoch = fit_with_early_stopping(
            t.n_epochs, t.patience, train_epoch, validate,
            snapshot=model.get_weights, restore=model.set_weights, on_epoch=on_epoch)
        writer.close()

    # Exported outside the device scope so the SavedModel graphs carry no device pins
    # (they are served on CPU machines).
    export_tower(query_tower, f"{out_dir}/query_tower")
    export_tower(item_tower, f"{out_dir}/item_tower")

    best = history[best_epoch - 1]
    summary = {
        "history": [r.as_dict() for r in history],
        "best_epoch": best_epoch,
        "best_val_recall_at_10": best.val_recall_at_10,
        "examples_per_second": statistics.median(n_train / max(r.seconds, 1e-9) for r in history),
        "n_train": n_train,
        "n_valid_queries": len(valid),
        "stopped_early": len(history) < t.n_epochs,
    }
    with tf.io.gfile.GFile(f"{out_dir}/training.json", "w") as fh:
        fh.write(json.dumps(summary, indent=2))
    return summary
