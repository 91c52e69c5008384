"""Optimizers for the two-tower model: ``make_optimizer`` per ``train.optimizer`` and
``train.lr_schedule``, with each step's variable updates fused or compiled.

Kept apart from the model (trainer/model.py): the update rules below reach into tf_keras's
optimizer internals, which only this module may know about.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

import math
from typing import Optional

from core.config import Config
from trainer.tfenv import import_tf

tf = import_tf()


def make_optimizer(config: Config, total_steps: Optional[int] = None, lr_scale: float = 1.0,
                   first_step: int = 0):
    """Optimizer per ``train.optimizer``; its learning rate follows ``train.lr_schedule``
    (peak ``train.lr`` x ``lr_scale``) over ``total_steps`` optimizer steps counted from
    ``first_step`` (a warm start that carries the live version's step count; see
    :mod:`trainer.schedules`).

    ``train.weight_decay`` is decoupled weight decay for every optimizer: tf_keras's base
    optimizer applies ``w -= lr_t * weight_decay * w`` to every trainable variable before each
    update (the step AdamW takes; ``Adam(weight_decay=wd)`` is AdamW), ahead of the compiled
    updates below, so the fused paths keep it."""
    from trainer.schedules import make_learning_rate

    t = config.train
    if t.optimizer not in _COMPILED:
        raise ValueError(f"train.optimizer: unsupported {t.optimizer!r}")
    classes = _COMPILED if internals_supported() else _PLAIN
    lr = make_learning_rate(t.lr_schedule, t.lr * lr_scale, total_steps, t.warmup_steps, first_step=first_step)
    # None, not 0.0: tf_keras skips the decay ops entirely then (AdamW insists on a number).
    decay = t.weight_decay if t.weight_decay > 0.0 or t.optimizer == "adamw" else None
    optimizer = classes[t.optimizer](learning_rate=lr, weight_decay=decay)
    if classes is _PLAIN:
        print(f"[train] tf_keras {_tf_keras_version()} is not the verified {VERIFIED_TF_KERAS}x: "
              "tf_keras's own optimizer updates (unfused)", flush=True)
        return optimizer
    optimizer.row_wise = bool(t.row_wise_updates)
    # jit_compile turns on _CompiledUpdates' fused / XLA updates (tf_keras sets it only with a GPU).
    optimizer.jit_compile = _can_jit_compile()
    return optimizer


#: Embedding tables up to this many elements get their sparse gradient scattered into a
#: dense one, so their update is compiled too (see :class:`_CompiledUpdates`); larger ones
#: are updated row-wise (only the looked-up rows) unless ``train.row_wise_updates`` is off.
DENSIFY_MAX_ELEMENTS = 1 << 20


def _densified(size: Optional[int]) -> bool:
    """Whether a table of ``size`` weights (None: unknown) has its sparse gradient made dense."""
    return size is not None and size <= DENSIFY_MAX_ELEMENTS


class _CompiledUpdates:
    """Optimizer mixin: each step's update in as few, fused kernels as possible.

    tf_keras runs its update rule as ~28 small ops per variable (285 of the 760 ops of an
    ids-only MovieLens step at batch 512), and at small batches op dispatch, not arithmetic,
    is what a step costs; tf_keras compiles it with XLA only when it sees a GPU. Here:

    - Adam and AdamW (without amsgrad): one TF fused C++ kernel per variable,
      ``ResourceApplyAdam``, which computes exactly tf_keras's ``update_step`` (the same m, v,
      ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)`` and epsilon; decoupled weight decay,
      any optimizer's, is applied by tf_keras before the update, as before). Measured on 2 busy cores for
      the 10 variables of that model: 0.3-0.5 ms per update against 1.2 ms for one XLA call.
    - Adagrad: every variable's update in ONE XLA call per step (its tf_keras rule puts
      epsilon inside the square root, unlike TF's fused kernel): 3.3 ms against 6.1 ms
      uncompiled on the same model.

    Both take dense gradients (the fused Adam kernel has no sparse form; XLA needs a fixed
    shape). Embedding gradients are ``tf.IndexedSlices`` that tf_keras first deduplicates (``tf.unique`` over the looked-up rows), so their shape changes
    every step and XLA would recompile each time (measured: epochs 5-10x slower). A small
    table's gradient is scattered into a dense [V, F] one first: the same update, since Adam's
    sparse path already rewrites the whole m, v and table every step, and a zero gradient row
    leaves Adagrad's accumulator and the table unchanged. A larger table keeps the unfused
    sparse update. Replicated (tf.distribute) variables take tf_keras's per-variable path,
    with the same densify-then-compile rule per variable. The update rules, variables and
    checkpoints are tf_keras's.

    Row-wise updates (``row_wise``, ``train.row_wise_updates``): tf_keras's sparse Adam still
    decays m and v of EVERY row (``m.assign_add(-m * (1 - beta_1))``) and rewrites the whole
    table each step, and its weight decay scales every weight: a 1M x 32 table costs ~100 MB
    of memory traffic per step whatever the batch. For a table above
    ``DENSIFY_MAX_ELEMENTS`` with a sparse gradient, only the batch's rows are read and
    written (:meth:`_row_wise_update`): the LazyAdam rule (TF Addons' ``LazyAdam``), the
    same as tf_keras's for a row used in consecutive steps; a row's moments do not decay
    while it is unused, so its next update is not shrunk by the steps it sat out. Adagrad's
    sparse rule is already row-wise; only its weight decay moves to the looked-up rows.
    """

    #: Set by :func:`make_optimizer` from ``train.row_wise_updates``.
    row_wise = False

    def _is_row_wise(self, variable) -> bool:
        size = variable.shape.num_elements()
        return bool(self.row_wise) and not _densified(size) and variable.shape.rank == 2

    def _use_weight_decay(self, variable):
        # A row-wise table decays the rows it looks up, inside its update (_row_wise_update).
        return not self._is_row_wise(variable) and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices) and self._is_row_wise(variable):
            return self._row_wise_update(gradient, variable)
        if self._is_row_wise(variable) and self.weight_decay is not None and super()._use_weight_decay(variable):
            # A dense gradient on a row-wise table (rare): decay it whole, as tf_keras would.
            lr = tf.cast(self.learning_rate, variable.dtype)
            variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * lr)
        return super().update_step(gradient, variable)

    def _row_wise_update(self, gradient, variable):
        """The update of the rows ``gradient.indices`` of ``variable`` only (distinct rows:
        tf_keras deduplicates sparse gradients before the update). Decoupled weight decay
        first, as tf_keras applies it before the rule; then Adam's rule on those rows
        (LazyAdam), or tf_keras's own (already row-wise) sparse Adagrad rule."""
        rows = gradient.indices
        lr = tf.cast(self.learning_rate, variable.dtype)
        if self.weight_decay is not None and super()._use_weight_decay(variable):
            decay = 1.0 - lr * tf.cast(self.weight_decay, variable.dtype)
            variable.scatter_update(tf.IndexedSlices(tf.gather(variable, rows) * decay, rows))
        if not isinstance(self, (tf.keras.optimizers.Adam, tf.keras.optimizers.AdamW)):
            return super().update_step(gradient, variable)
        if self.amsgrad:
            raise ValueError("row-wise updates do not implement amsgrad (train.row_wise_updates=false)")
        step = tf.cast(self.iterations + 1, variable.dtype)
        beta_1 = tf.cast(self.beta_1, variable.dtype)
        beta_2 = tf.cast(self.beta_2, variable.dtype)
        beta_2_power = tf.pow(beta_2, step)
        alpha = lr * tf.sqrt(1.0 - beta_2_power) / (1.0 - tf.pow(beta_1, step))
        epsilon = tf.cast(self.epsilon, variable.dtype)
        if getattr(self, "adaptive_epsilon", False):  # Adam's option; AdamW has none
            epsilon = epsilon * tf.sqrt(1.0 - beta_2_power)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(m, rows) + (1.0 - beta_1) * gradient.values
        v_rows = beta_2 * tf.gather(v, rows) + (1.0 - beta_2) * tf.square(gradient.values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))

    def _deduplicate_sparse_grad(self, grads):
        """tf_keras sums a sparse gradient's repeated rows (``tf.unique`` + a segment sum) before
        the update; a table that :meth:`_fixed_shape` densifies anyway gets its gradient summed
        straight into the dense one instead (one segment sum, the same sums), which saved two of
        the step's ~150 kernels per table (profiled: ids-only MovieLens, batch 512)."""
        if not self.jit_compile or tf.distribute.get_strategy().num_replicas_in_sync != 1:
            return super()._deduplicate_sparse_grad(grads)
        summed = []
        for gradient in grads:
            shape = tf.get_static_value(gradient.dense_shape) if isinstance(gradient, tf.IndexedSlices) else None
            if shape is not None and _densified(math.prod(int(n) for n in shape)):
                gradient = tf.convert_to_tensor(gradient)
            summed.append(gradient)
        return super()._deduplicate_sparse_grad(summed)

    def _fixed_shape(self, gradient, variable):
        """``gradient`` with a fixed shape (densified), or None when it stays sparse."""
        if not isinstance(gradient, tf.IndexedSlices):
            return gradient
        if not _densified(variable.shape.num_elements()):
            return None
        return tf.convert_to_tensor(gradient)

    def _update_step_xla(self, gradient, variable, key):
        dense = self._fixed_shape(gradient, variable)
        if dense is None:
            return self._update_step(gradient, variable)
        return self._update_steps_xla([dense], [variable], (key,))

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        grads_and_vars = list(grads_and_vars)
        if (not self.jit_compile or self.use_ema or distribution.num_replicas_in_sync != 1
                or any(isinstance(v, tf.distribute.DistributedValues) for _, v in grads_and_vars)):
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        grads, variables = [], []
        for gradient, variable in grads_and_vars:
            dense = self._fixed_shape(gradient, variable)
            if dense is None:
                self._update_step(gradient, variable)
            else:
                grads.append(dense)
                variables.append(variable)
        if variables and self._fused_adam_applies(variables):
            self._fused_adam_update(grads, variables)
        elif variables:
            self._update_steps_xla(grads, variables, tuple(id(self._var_key(v)) for v in variables))
        return self.iterations.assign_add(1)

    def _fused_adam_applies(self, variables) -> bool:
        """Adam / AdamW without amsgrad, every variable float32 (the kernel's one dtype here)."""
        return (isinstance(self, (tf.keras.optimizers.Adam, tf.keras.optimizers.AdamW)) and not self.amsgrad
                and all(v.dtype == tf.float32 for v in variables))

    def _fused_adam_update(self, grads, variables):
        """tf_keras Adam's ``update_step`` for every (dense gradient, variable), one
        ``ResourceApplyAdam`` kernel each (see the class docstring)."""
        lr = tf.cast(self.learning_rate, tf.float32)
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1_power = tf.pow(tf.cast(self.beta_1, tf.float32), step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, tf.float32), step)
        epsilon = tf.cast(self.epsilon, tf.float32)
        if getattr(self, "adaptive_epsilon", False):  # tf_keras Adam's epsilon_hat
            epsilon = epsilon * tf.sqrt(1.0 - beta_2_power)
        for gradient, variable in zip(grads, variables):
            index = self._index_dict[self._var_key(variable)]
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
                beta1_power=beta_1_power, beta2_power=beta_2_power, lr=lr,
                beta1=tf.cast(self.beta_1, tf.float32), beta2=tf.cast(self.beta_2, tf.float32), epsilon=epsilon,
                grad=gradient, use_locking=False)

    @tf.function(jit_compile=True)
    def _update_steps_xla(self, grads, variables, keys):
        # ``keys`` (ints, one per variable) are part of the trace key: ``_update_step`` finds
        # each variable's slots by identity while tracing, so another variable list with the
        # same shapes must not reuse this trace.
        for gradient, variable in zip(grads, variables):
            self._update_step(gradient, variable)


#: The tf_keras release whose optimizer internals (``_index_dict``, ``_var_key``, the slot
#: layout, ``_update_step``) :class:`_CompiledUpdates` was written and checked against
#: (tests/unit/trainer/test_training_options.py compares its updates with tf_keras's own).
VERIFIED_TF_KERAS = "2.20."


def _tf_keras_version() -> str:
    import tf_keras

    return tf_keras.__version__


def optimizer_class(name: str):
    """The tf_keras optimizer class ``train.optimizer`` ``name`` stands for (Adam, AdamW, Adagrad)."""
    return _PLAIN[name]


#: tf_keras's per-variable optimizer state: slot name -> the optimizer attribute listing that
#: slot's variables in the order of its ``_index_dict`` (Adam / AdamW: m, v and, with amsgrad,
#: v-hat; Adagrad: its accumulator).
_SLOT_LISTS = {"m": "_momentums", "v": "_velocities", "vhat": "_velocity_hats", "accumulator": "_accumulators"}


def slot_variables(optimizer, variable) -> dict:
    """The built ``optimizer``'s state variables for one model ``variable``: slot name -> the
    slot's variable (same shape as ``variable``), e.g. {"m", "v"} for Adam. Empty when the
    optimizer is not built for it, or when the installed tf_keras is not the verified line
    (where its internals are unknown: a caller then starts that state fresh)."""
    if not internals_supported():
        return {}
    index = (getattr(optimizer, "_index_dict", None) or {}).get(optimizer._var_key(variable))
    if index is None:
        return {}
    out = {}
    for slot, attribute in _SLOT_LISTS.items():
        values = getattr(optimizer, attribute, None)
        if values:
            out[slot] = values[index]
    return out


def internals_supported(version: Optional[str] = None) -> bool:
    """Whether the installed tf_keras (or ``version``) is the verified release line; any other
    gets tf_keras's own optimizers (slower per step, never silently wrong)."""
    return (version or _tf_keras_version()).startswith(VERIFIED_TF_KERAS)


_PLAIN = {"adam": tf.keras.optimizers.Adam, "adamw": tf.keras.optimizers.AdamW,
          "adagrad": tf.keras.optimizers.Adagrad}
_COMPILED = {name: type(cls.__name__, (_CompiledUpdates, cls), {"__module__": __name__})
              for name, cls in _PLAIN.items()}


def _can_jit_compile() -> bool:
    """Whether XLA is usable here (tf_keras's own check: not on Apple-silicon / pluggable devices)."""
    try:
        from tf_keras.src.utils.tf_utils import can_jit_compile
    except ImportError:  # another tf_keras layout: keep its default (XLA only with a GPU)
        return bool(tf.config.list_physical_devices("GPU"))
    return bool(can_jit_compile())
