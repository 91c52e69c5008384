"""Per-epoch training checkpoints, so a crashed or extended run resumes instead of restarting.

Layout under ``<out_dir>/checkpoints/``:

- ``ckpt-<n>.*`` (``tf.train.CheckpointManager``, the last :data:`MAX_TO_KEEP`): model
  and optimizer variables (the optimizer's step counter drives the lr schedule), the
  number of finished epochs and the loop state (history, early-stopping state, whether
  training already stopped) as a JSON string variable;
- ``best/epoch-<k>.*``: the model variables of the best epoch k so far, written whenever
  validation improves (older ones are deleted once the epoch's checkpoint is saved), so
  early stopping can still restore them after a resume. Keyed by epoch so a crash
  between the two writes never pairs a loop state with another epoch's weights.

A resumed run continues with the next epoch; its data order and random draws are not
bit-identical to an uninterrupted run's (the input pipeline restarts), the weights are.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

import json
from typing import Optional

from trainer.tfenv import import_tf
from trainer.epochs import EarlyStopping, EpochResult, LoopState

tf = import_tf()

MAX_TO_KEEP = 2
SUBDIR = "checkpoints"


class TrainingCheckpoint:
    """Saves / restores a :class:`trainer.epochs.LoopState` together with the model and optimizer.

    The model's and optimizer's variables must exist before :meth:`restore` (build the
    towers and call ``optimizer.build``), so the restore is checked to match exactly.
    """

    def __init__(self, out_dir: str, model, optimizer):
        self.directory = f"{out_dir.rstrip('/')}/{SUBDIR}"
        self.model = model
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.loop_state = tf.Variable("", dtype=tf.string, trainable=False, name="loop_state")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epochs_done=self.epochs_done,
                                              loop_state=self.loop_state)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=MAX_TO_KEEP)
        self.best = tf.train.Checkpoint(model=model)

    def _best_prefix(self, epoch: int) -> str:
        return f"{self.directory}/best/epoch-{epoch}"

    @property
    def latest(self) -> Optional[str]:
        """Path prefix of the newest checkpoint, None when there is none."""
        return self.manager.latest_checkpoint

    def save(self, state: LoopState, improved: bool) -> str:
        """Checkpoint after an epoch; ``improved``: the model holds the new best weights."""
        if improved:
            self.best.write(self._best_prefix(state.stopper.best_epoch))
        self.epochs_done.assign(len(state.history))
        self.loop_state.assign(json.dumps(_state_to_json(state)))
        path = self.manager.save(checkpoint_number=len(state.history))
        keep = self._best_prefix(state.stopper.best_epoch)
        for stale in tf.io.gfile.glob(f"{self.directory}/best/epoch-*"):
            if not stale.startswith(keep + "."):
                tf.io.gfile.remove(stale)
        return path

    def restore(self, snapshot) -> Optional[LoopState]:
        """Load the newest checkpoint into the model/optimizer and return its loop state
        (best weights taken with ``snapshot``); None when there is none.

        Raises:
            ValueError: the checkpoint does not fit this model (another config wrote it),
                or its best epoch's weights are missing.
        """
        path = self.latest
        if path is None:
            return None
        try:
            self.checkpoint.read(path).assert_existing_objects_matched()
            state = _state_from_json(json.loads(self.loop_state.numpy().decode("utf-8")))
            best_epoch = state.stopper.best_epoch
            if best_epoch == len(state.history):
                state.best_weights = snapshot()  # the newest weights are the best
            elif best_epoch > 0:
                best = self._best_prefix(best_epoch)
                if not tf.io.gfile.glob(f"{best}.index"):
                    raise ValueError(f"{best}: the best epoch's weights are missing")
                self.best.read(best).assert_existing_objects_matched()
                state.best_weights = snapshot()
                self.checkpoint.read(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as exc:
            # TF reports a mismatch as AssertionError; name the setting that explains it.
            raise ValueError(f"{path}: cannot resume from this checkpoint (written with another model "
                             f"config?); set train.resume=false or use a fresh output folder: {exc}") from exc
        if len(state.history) != int(self.epochs_done.numpy()):
            raise ValueError(f"{path}: loop state covers {len(state.history)} epochs, "
                             f"the checkpoint {int(self.epochs_done.numpy())}")
        return state


def _state_to_json(state: LoopState) -> dict:
    s = state.stopper
    return {"history": [r.as_dict() for r in state.history], "stopped": state.stopped,
            "stopper": {"patience": s.patience, "best_value": None if s.best_value == -float("inf") else s.best_value,
                        "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs}}


def _state_from_json(raw: dict) -> LoopState:
    s = raw["stopper"]
    stopper = EarlyStopping(int(s["patience"]),
                            -float("inf") if s["best_value"] is None else float(s["best_value"]),
                            int(s["best_epoch"]), int(s["bad_epochs"]))
    history = [EpochResult(int(h["epoch"]), float(h["loss"]), h["val_recall_at_10"], float(h["seconds"]),
                           h.get("cpu_seconds"))
               for h in raw["history"]]
    return LoopState(stopper=stopper, history=history, stopped=bool(raw["stopped"]))
