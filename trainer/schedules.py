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


def make_learning_rate(schedule: str, lr: float, total_steps: Optional[int], warmup_steps: int = 0):
    """A float (constant) or a ``tf.keras.optimizers.schedules.LearningRateSchedule``.

    Args:
        schedule: one of :data:`SCHEDULES`.
        lr: peak learning rate.
        total_steps: planned optimizer steps of the whole run (n_epochs x steps per
            epoch); required by the decaying schedules.
        warmup_steps: linear warmup length for ``warmup_cosine``; must leave at least
            one decay step.
    """
    if schedule == "constant":
        return float(lr)
    if schedule not in SCHEDULES:
        raise ValueError(f"train.lr_schedule: unsupported {schedule!r}; expected one of {SCHEDULES}")
    if total_steps is None or total_steps < 1:
        raise ValueError(f"train.lr_schedule={schedule} needs the planned number of steps (>= 1), "
                         f"got {total_steps}")
    if schedule == "cosine":
        return tf.keras.optimizers.schedules.CosineDecay(float(lr), decay_steps=int(total_steps))
    if warmup_steps < 0 or warmup_steps >= total_steps:
        raise ValueError(f"train.warmup_steps={warmup_steps} must be in [0, {total_steps}) "
                         f"(the planned steps: n_epochs x batches per epoch)")
    return tf.keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=int(total_steps - warmup_steps), warmup_target=float(lr),
        warmup_steps=int(warmup_steps))
