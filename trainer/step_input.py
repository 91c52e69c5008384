"""The training step's input prepared once, and the step compiled whole when it can be.

At batch 512 on a CPU a step is a few hundred small ops, and TensorFlow's per-op dispatch,
not arithmetic, is what it costs (the TFRS reference and our trainer tied at ~8 ms per step).
Two things cut that:

- :func:`look_up_columns`: the in-memory train split's id / categorical columns (strings [N])
  become their table rows (int64 [N]) once, through each encoder's own ``StringLookup`` (a
  streamed split: every batch, in the tf.data pipeline beside the step); the
  item key also gets its candidate hash (:data:`ITEM_HASH`, what accidental-hit removal and
  candidate de-duplication compare) and, with logQ, its sampling probability
  (:data:`SAMPLING_PROBABILITY`). A step then gathers integers instead of hashing strings. The
  encoders take either form (:meth:`trainer.features.IdEncoder.indices`), so the exported
  signatures still take raw strings and serving is unchanged.
- :func:`compiled_step_plan`: with no string op left in the step (every feature an id,
  categorical or numeric, nothing sampled or zipped in at step time) and every embedding table
  small enough for a dense gradient (``trainer.optimizers.DENSIFY_MAX_ELEMENTS``), the whole train
  step (towers, loss, gradients, optimizer update) is compiled with XLA into a handful of
  fused kernels (Keras ``jit_compile``). XLA needs static shapes, so the softmax runs over
  the batch's B candidates (TFRS's loss, [B, B]) instead of its distinct ones
  (``tf.unique``); above :data:`COMPILED_MAX_BATCH` that costs more than dispatch saves.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from core.records import ITEM_KEY
from trainer.tfenv import import_tf

tf = import_tf()

from trainer.model import ITEM_HASH, SAMPLING_PROBABILITY  # noqa: E402,F401 (the columns added here)

#: Largest batch the compiled step is used for: it scores [B, B] candidates where the
#: uncompiled step scores [B, U] distinct ones (U ~ 1,400 of 8,192 on MovieLens).
COMPILED_MAX_BATCH = 2048


def look_up_columns(columns: Mapping[str, "tf.Tensor"], towers, sampling_probability=None) -> dict:
    """``columns`` ({name: [N]}) with every id / categorical column that a tower's encoder looks
    up replaced by its int64 rows [N], plus :data:`ITEM_HASH` and (given ``sampling_probability``,
    a :class:`trainer.model.SamplingProbability`) :data:`SAMPLING_PROBABILITY` from the raw item
    ids. Other columns (numeric, text, multi-categorical) are kept as they are."""
    from trainer.features import IdEncoder, MultiCategoricalEncoder
    from trainer.model import hash_item_ids

    out = dict(columns)
    raw_items = columns[ITEM_KEY]
    for tower in towers:
        for name, encoder in tower.encoders.items():
            if isinstance(encoder, IdEncoder) and not isinstance(encoder, MultiCategoricalEncoder):
                out[name] = encoder.lookup(columns[name])
    out[ITEM_HASH] = hash_item_ids(raw_items)
    if sampling_probability is not None:
        out[SAMPLING_PROBABILITY] = sampling_probability(raw_items)
    return out


@dataclass(frozen=True)
class StepPlan:
    """How the train step runs: ``looked_up`` (ids prepared ahead, :func:`look_up_columns`),
    ``compiled`` (the whole step under XLA) and, when not compiled, ``why_not``."""

    looked_up: bool
    compiled: bool
    why_not: Optional[str] = None

    def as_dict(self) -> dict:
        return {"step_input": "looked_up" if self.looked_up else "raw", "compiled_step": self.compiled,
                "compiled_step_why_not": self.why_not}


def compiled_step_plan(config, towers, *, in_memory: bool, multi_worker: bool) -> StepPlan:
    """Decide :class:`StepPlan` for ``config`` and the built towers (``in_memory``: the split is
    held in memory rather than streamed; both take the prepared input)."""
    from trainer.features import IdEncoder, MultiCategoricalEncoder, NumericEncoder
    from trainer.optimizers import DENSIFY_MAX_ELEMENTS, _can_jit_compile

    t = config.train
    if multi_worker or t.negative_samples_count > 0:
        reason = "multi_worker" if multi_worker else "negatives are sampled inside the step"
        return StepPlan(False, False, reason)
    reasons = []
    if not t.compiled_step:
        reasons.append("train.compiled_step is off")
    if t.batch_size > COMPILED_MAX_BATCH:
        reasons.append(f"batch_size {t.batch_size} > {COMPILED_MAX_BATCH} (the distinct-candidate softmax is cheaper)")
    if t.labelled_negative_weight > 0.0:
        reasons.append("labelled negatives are read as strings inside the step")
    if t.hard_negatives:
        reasons.append("hard negatives")
    if t.category_alignment.feature:
        reasons.append("category alignment groups the batch by category (tf.unique: no static shape)")
    for tower in towers:
        for name, encoder in tower.encoders.items():
            if isinstance(encoder, NumericEncoder):
                continue
            if not isinstance(encoder, IdEncoder) or isinstance(encoder, MultiCategoricalEncoder):
                reasons.append(f"{name} is encoded with string ops")
            elif encoder.embedding.input_dim * encoder.embedding.output_dim > DENSIFY_MAX_ELEMENTS:
                reasons.append(f"{name}'s table is above {DENSIFY_MAX_ELEMENTS:,} weights (row-wise updates)")
        augmented = getattr(tower, "augmented", None)
        if augmented is not None:
            if augmented.lookup is None:
                reasons.append(f"{augmented.name} hashes its key's strings")
            elif augmented.embedding.input_dim * augmented.embedding.output_dim > DENSIFY_MAX_ELEMENTS:
                reasons.append(f"{augmented.name}'s table is above {DENSIFY_MAX_ELEMENTS:,} weights "
                               f"(row-wise updates)")
    if not reasons and not _can_jit_compile():
        reasons.append("XLA is not usable here")
    return StepPlan(True, not reasons, "; ".join(reasons) or None)
