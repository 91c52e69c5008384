"""Learning-rate schedules per ``train.lr_schedule``, indexed by optimizer step (0-based).

- ``constant``: ``lr`` at every step.
- ``cosine``: ``lr * 0.5 * (1 + cos(pi * step / total_steps))``, reaching 0 at
  ``total_steps`` (and staying there).
- ``warmup_cosine``: linear warmup from 0 to ``lr`` over ``warmup_steps``
  (``lr * step / warmup_steps``), then the cosine above over the remaining
  ``total_steps - warmup_steps`` steps.

The schedules are Keras ``LearningRateSchedule`` objects, so the optimizer's step
counter (which is checkpointed) is their only state: a resumed run continues the curve.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

from typing import Optional

from trainer.tfenv import import_tf

tf = import_tf()

SCHEDULES = ("constant", "cosine", "warmup_cosine")


class StartingAt(tf.keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` shifted to begin at optimizer step ``first_step``: a warm start carries the
    live version's step count (Adam's bias correction depends on it), and its own schedule
    still starts at its step 0 (warmup and decay over this run's planned steps)."""

    def __init__(self, schedule, first_step: int):
        self.schedule, self.first_step = schedule, int(first_step)

    def __call__(self, step):
        return self.schedule(tf.maximum(tf.cast(step, tf.float32) - float(self.first_step), 0.0))

    def get_config(self):
        return {"schedule": tf.keras.optimizers.schedules.serialize(self.schedule), "first_step": self.first_step}


def make_learning_rate(schedule: str, lr: float, total_steps: Optional[int], warmup_steps: int = 0,
                       first_step: int = 0):
    """A float (constant) or a ``tf.keras.optimizers.schedules.LearningRateSchedule``.

    Args:
        schedule: one of :data:`SCHEDULES`.
        lr: peak learning rate.
        total_steps: planned optimizer steps of the whole run (n_epochs x steps per
            epoch); required by the decaying schedules.
        warmup_steps: linear warmup length for ``warmup_cosine``; must leave at least
            one decay step.
        first_step: the optimizer step the run starts at (0, or a warm start's carried count):
            the decaying schedules count from there.
    """
    if schedule == "constant":
        return float(lr)
    if schedule not in SCHEDULES:
        raise ValueError(f"train.lr_schedule: unsupported {schedule!r}; expected one of {SCHEDULES}")
    if total_steps is None or total_steps < 1:
        raise ValueError(f"train.lr_schedule={schedule} needs the planned number of steps (>= 1), "
                         f"got {total_steps}")
    if schedule == "cosine":
        decaying = tf.keras.optimizers.schedules.CosineDecay(float(lr), decay_steps=int(total_steps))
    else:
        if warmup_steps < 0 or warmup_steps >= total_steps:
            raise ValueError(f"train.warmup_steps={warmup_steps} must be in [0, {total_steps}) "
                             f"(the planned steps: n_epochs x batches per epoch)")
        decaying = tf.keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=int(total_steps - warmup_steps), warmup_target=float(lr),
            warmup_steps=int(warmup_steps))
    return StartingAt(decaying, first_step) if first_step else decaying
