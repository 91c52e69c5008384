"""The epoch loop and its state, independent of TensorFlow (unit-testable with fakes).

:class:`LoopState` is what a per-epoch checkpoint saves (trainer/checkpoint.py) and what
:func:`fit_with_early_stopping` resumes from; trainer/train.py drives the loop with the real
model. Kept apart from both so neither imports the other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class EpochResult:
    """One epoch: ``seconds`` is the wall time of its training pass, ``cpu_seconds`` the CPU
    time this process spent in it (all threads; None when not measured). CPU time does not
    grow when the host takes the cores away, so it is the steadier figure on a shared machine."""

    epoch: int
    loss: float
    val_recall_at_10: Optional[float]
    seconds: float
    cpu_seconds: Optional[float] = None

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": self.loss, "val_recall_at_10": self.val_recall_at_10,
                "seconds": self.seconds, "cpu_seconds": self.cpu_seconds}


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


@dataclass
class LoopState:
    """Everything the epoch loop needs to continue where it left off (checkpointed per epoch).

    ``history`` holds the finished epochs (1-based, in order), ``best_weights`` the
    snapshot of the best one (None before the first), ``stopped`` whether early stopping
    already ended training.
    """

    stopper: EarlyStopping
    history: list[EpochResult] = field(default_factory=list)
    best_weights: object = None
    stopped: bool = False


def fit_with_early_stopping(n_epochs: int, patience: int, train_epoch: Callable[[int], float],
                            validate: Callable[[int], Optional[float]], snapshot: Callable[[], object],
                            restore: Callable[[object], None],
                            on_epoch: Callable[[EpochResult, bool], None] = lambda r, best: None,
                            *, state: Optional[LoopState] = None,
                            save_state: Callable[[LoopState, bool], None] = lambda s, improved: None,
                            start_value: Optional[float] = None,
                            ) -> tuple[list[EpochResult], int]:
    """Generic epoch loop, independent of TensorFlow (so it is unit-testable with fakes).

    Args:
        train_epoch: runs one pass for 1-based ``epoch``, returns its mean loss.
        validate: the metric to maximise after ``epoch`` (None = no validation).
        snapshot / restore: copy out / put back the model weights.
        on_epoch: called with each epoch's result and whether it is the best so far.
        state: a resumed loop (epochs already done are skipped); None = from epoch 1.
        save_state: called after every epoch with the loop state and whether the epoch
            improved (the checkpoint hook).
        start_value: the metric of the weights the loop starts from (a warm start's), making
            them a candidate "epoch 0": an epoch is kept only when it beats them, and when none
            does the starting weights are restored and best_epoch is 0. None: epochs only.
    Returns:
        (history, best_epoch); on return the model holds the best epoch's weights.
    """
    if state is None:
        state = LoopState(EarlyStopping(patience))
        if start_value is not None:
            state.stopper.best_value, state.best_weights = float(start_value), snapshot()
    state.stopper.patience = patience  # a resumed run may change its patience
    for epoch in range(len(state.history) + 1, n_epochs + 1):
        if state.stopped:
            break
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = float(train_epoch(epoch))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        value = validate(epoch)
        result = EpochResult(epoch, loss, None if value is None else float(value), seconds, cpu_seconds)
        state.history.append(result)
        improved, state.stopped = state.stopper.update(epoch, result.val_recall_at_10)
        if improved:
            state.best_weights = snapshot()
        on_epoch(result, improved)
        save_state(state, improved)
    if not state.history:
        raise ValueError(f"no epoch trained (n_epochs={n_epochs})")
    if state.best_weights is not None and state.stopper.best_epoch != state.history[-1].epoch:  # incl. epoch 0
        restore(state.best_weights)
    return state.history, state.stopper.best_epoch


class WeightAverage:
    """The running, uniform mean of weight snapshots (stochastic weight averaging, Izmailov
    et al. 2018): a warm-started run can publish the mean of its epochs' end weights (and of
    its start) instead of one epoch's, which smooths a short fine-tune's last-step noise.

    Snapshots are what ``Model.get_weights`` returns: a list of arrays, the same shapes in the
    same order every time. Keeps one running sum (one model's worth of float64 memory); arrays
    that are not floating point (counters, seeds) are not averaged: the last snapshot's stand.
    """

    def __init__(self) -> None:
        self.sums: Optional[list] = None
        self.last: Optional[list] = None
        self.count = 0

    def add(self, weights: list) -> None:
        """Add one snapshot (a list of arrays of the same shapes as every earlier one)."""
        import numpy as np

        arrays = [np.asarray(w, dtype=np.float64) for w in weights]
        if self.sums is None:
            self.sums = arrays
        else:
            if len(arrays) != len(self.sums) or any(a.shape != s.shape for a, s in zip(arrays, self.sums)):
                raise ValueError("WeightAverage.add: the snapshot's shapes differ from the earlier ones")
            self.sums = [s + a for s, a in zip(self.sums, arrays)]
        self.last = list(weights)
        self.count += 1

    def mean(self, like: list) -> list:
        """The mean snapshot, each array cast to the dtype of ``like``'s (the model's own weights)."""
        if not self.count:
            raise ValueError("WeightAverage.mean: no snapshot added")
        import numpy as np

        return [(s / self.count).astype(np.asarray(w).dtype) if np.issubdtype(np.asarray(w).dtype, np.floating)
                else np.asarray(last) for s, w, last in zip(self.sums, like, self.last)]
