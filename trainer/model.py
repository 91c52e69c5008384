"""The TFRS retrieval model: two towers + in-batch softmax with accidental-hit removal.

Trainer-internal (imports TensorFlow and TFRS at module import).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from core.config import Config
from core.records import ITEM_KEY, WEIGHT_KEY
from trainer.data import LABELLED_NEGATIVES, POSITIVES
from trainer.features import TowerModel
from trainer.tfenv import import_tf

tf = import_tf()
import tensorflow_recommenders as tfrs  # noqa: E402  (after the legacy-Keras switch)

#: Extra training-input columns the loss reads when present, computed once per row ahead by
#: trainer/step_input.py (never features: the towers ignore unknown keys).
ITEM_HASH = "__item_hash"  # int64 [N]: hash_item_ids(item_id)
SAMPLING_PROBABILITY = "__sampling_probability"  # float32 [N]: logQ's q(item_id)

#: TFRS clips candidate sampling probabilities to [1e-6, 1] before taking log q.
_MIN_SAMPLING_PROBABILITY = 1e-6


def hash_item_ids(ids):
    """[K] tf.string item ids -> [K] int64, equal iff the ids are equal (up to 62-bit collisions,
    ~K^2 / 2^62: negligible). Comparing strings [B, B] times dominated large batches
    (8192^2 string compares ~5 s on 2 cores)."""
    return tf.strings.to_hash_bucket_fast(ids, 1 << 62)


def deduplicated_softmax_loss(query, candidates, candidate_ids, temperature: float,
                              candidate_sampling_probability=None, positives=None, row_weights=None):
    """TFRS's in-batch softmax with accidental-hit removal, over the batch's distinct candidates.

    Same value as ``tfrs.tasks.Retrieval(temperature, remove_accidental_hits=True)`` (summed
    softmax cross-entropy; row i's positive is candidate i; a candidate equal to row i's
    positive but in another column is removed from row i; logQ subtracts
    ``log clip(q, 1e-6, 1)``) when every copy of an item has the same embedding (a
    deterministic item tower: no dropout in training). Then a candidate that occurs n times
    contributes n equal terms to every other row's denominator, which is one column with
    logit + log n; in its own rows the copies other than the positive are accidental hits,
    so the positive column counts once (logit without + log n). The score matrix is
    [B, U] (U distinct candidates) instead of [B, B + N]: on MovieLens at B = 8192,
    U is about 1,400.

    Args:
        query: [B, D] float32 query embeddings.
        candidates: [C, D] float32 candidate embeddings, C >= B; candidate i < B is row i's
            positive, the rest are extra negatives shared by every row.
        candidate_ids: [C] int64 ids (equal ids = the same item).
        temperature: logits are dot products / temperature.
        candidate_sampling_probability: [C] float32 q of each candidate (logQ), or None.
        positives: [B, D], the same tensor as ``candidates[:B]`` when the caller has it on its own
            (the item tower's output before sampled negatives are appended): saves the slice's
            [C, D] gradient.
        row_weights: [B] float32 weight of each row's term (graded actions, ``core.records.WEIGHT_KEY``),
            or None (every row 1): the loss is ``sum_i w_i * (lse_i - positive_logit_i)``, as TFRS's
            with ``sample_weight=row_weights``. The candidates are not weighted: a row's weight
            scales its own term only.
    Returns:
        Scalar float32 loss (summed over rows, like TFRS).
    """
    n_rows = tf.shape(query)[0]
    unique_ids, column, counts = tf.unique_with_counts(candidate_ids, out_idx=tf.int32)
    n_unique = tf.shape(unique_ids)[0]
    # One representative copy per distinct candidate: its first occurrence.
    first = tf.math.unsorted_segment_min(tf.range(tf.shape(candidate_ids)[0]), column, n_unique)
    count = tf.cast(counts, tf.float32)
    log_q = None
    if candidate_sampling_probability is not None:
        log_q = tf.math.log(tf.clip_by_value(candidate_sampling_probability, _MIN_SAMPLING_PROBABILITY, 1.0))
    query = query * (1.0 / temperature)
    bias = tf.math.log(count) if log_q is None else tf.math.log(count) - tf.gather(log_q, first)
    # bias_add, not +: grappler fuses MatMul + BiasAdd into one oneDNN kernel (no extra [B, U] pass).
    scores = tf.nn.bias_add(tf.matmul(query, tf.gather(candidates, first), transpose_b=True), bias)
    # Row i's positive, counted once (no + log n): a [B, D] row-wise dot, since candidate i is
    # row i's positive and every copy has the representative's embedding. No [B, U] scatter or
    # gather, whose copies and gradients cost as much as the softmax's exp (profiled).
    positive_logit = tf.reduce_sum(query * (candidates[:n_rows] if positives is None else positives), axis=1)
    if log_q is not None:
        positive_logit -= log_q[:n_rows]
    # The row's log-sum-exp counts its positive's n copies n times; take n - 1 of them back:
    # lse = full + log(1 - (n - 1) exp(positive - full)), whose argument is >= 1 / n (the
    # full sum holds n exp(positive)), so the log stays finite.
    full = _row_logsumexp(scores)
    extra_copies = tf.gather(count, column[:n_rows]) - 1.0
    lse = full + tf.math.log1p(-extra_copies * tf.exp(positive_logit - full))
    if row_weights is None:
        return tf.reduce_sum(lse - positive_logit)
    return tf.reduce_sum(tf.cast(row_weights, tf.float32) * (lse - positive_logit))


@tf.custom_gradient
def _row_logsumexp(scores):
    """[R, K] float32 -> [R] log-sum-exp of each row, with its gradient (the row's softmax) from the
    forward pass's exponentials: ``tf.reduce_logsumexp``'s autodiff broadcasts and multiplies two
    more [R, K] tensors (profiled: ids-only MovieLens step, batch 512)."""
    row_max = tf.stop_gradient(tf.reduce_max(scores, axis=1, keepdims=True))
    exps = tf.exp(scores - row_max)
    total = tf.reduce_sum(exps, axis=1, keepdims=True)

    def gradient(upstream):
        return exps * (upstream[:, None] / total)

    return tf.squeeze(tf.math.log(total) + row_max, axis=1), gradient


class TwoTowerModel(tfrs.Model):
    """Query tower x item tower trained with in-batch negatives (+ optional extras).

    Each batch row is a (query, positive item) pair; every other item in the batch is a
    negative for that query. Logits are cosine / ``temperature``. Rows whose item_id
    equals the positive's (the same item bought twice in one batch) are removed from
    the negatives rather than pushed away. No FactorizedTopK metrics: full-catalog
    recall is computed once per epoch by the training loop instead of every step.

    With ``sampling_probability`` (a :class:`SamplingProbability`, logQ correction of
    Yi et al. 2019) every candidate's logit is lowered by log q(item), q being the
    item's share of the train positives: in-batch negatives are drawn in proportion to
    popularity, so without it popular items are over-penalised as negatives.

    Optional extras (each off by default):

    - ``negative_sampler`` + ``negative_samples_count`` N: mixed negative sampling; N
      catalog items drawn per step are appended to the B in-batch candidates (scores
      [B, B + N]); with logQ every candidate gets the mixture probability of
      :func:`trainer.negatives.mixed_candidate_probability`.
    - ``num_hard_negatives`` K: only the K highest-scoring negatives of each row enter
      the softmax (``tfrs.tasks.Retrieval(num_hard_negatives=K)``).
    - ``labelled_negative_weight`` w: batches shaped ``{POSITIVES: batch,
      LABELLED_NEGATIVES: batch}`` add ``w *`` the summed binary cross-entropy of
      sigmoid(query . item / temperature) with label 1 for the positive pairs and 0 for
      the explicit label-0 pairs (summed like TFRS's softmax loss, so w is relative to
      one row's softmax term).

    Graded actions: a batch carrying ``core.records.WEIGHT_KEY`` ([B] float32 >= 0, a weighted
    schema's TFRecords) scales each row's softmax term by its weight (TFRS's ``sample_weight``,
    or ``row_weights`` of :func:`deduplicated_softmax_loss`) and its positive pair's
    labelled-negative BCE term too; the label-0 pairs' BCE terms keep weight 1.

    ``dedupe_candidates``: compute the softmax over the batch's distinct candidates
    (:func:`deduplicated_softmax_loss`, the same loss, [B, U] instead of [B, B + N]).
    Only valid when every copy of an item gets the same embedding, i.e. the item tower has
    no dropout (nor item-id dropout) in training; the trainer turns it on in that case. Hard negatives pick
    individual copies, so they always take TFRS's per-copy path.
    """

    def __init__(self, query_tower: TowerModel, item_tower: TowerModel, temperature: float,
                 sampling_probability: Optional["SamplingProbability"] = None, *,
                 negative_sampler=None, negative_samples_count: int = 0, num_hard_negatives: int = 0,
                 labelled_negative_weight: float = 0.0, dedupe_candidates: bool = False, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0.0:
            raise ValueError(f"train.temperature must be > 0, got {temperature}")
        if negative_samples_count < 0 or num_hard_negatives < 0 or labelled_negative_weight < 0.0:
            raise ValueError("negative_samples_count, num_hard_negatives and labelled_negative_weight "
                             "must be >= 0")
        if negative_samples_count > 0 and negative_sampler is None:
            raise ValueError("train.negative_samples_count > 0 needs a negative_sampler")
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.temperature = float(temperature)
        self.sampling_probability = sampling_probability
        self.negative_sampler = negative_sampler
        self.negative_samples_count = int(negative_samples_count)
        self.labelled_negative_weight = float(labelled_negative_weight)
        self.dedupe_candidates = bool(dedupe_candidates) and not num_hard_negatives
        # TFRS treats None (not 0) as "keep every negative".
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True,
                                         num_hard_negatives=int(num_hard_negatives) or None)

    def candidates(self, features, item_embeddings, training=False):
        """The candidate set of one batch.

        Args:
            features: the positives batch (``item_id`` [B] + item features; a prepared training
                input also carries :data:`trainer.step_input.ITEM_HASH` and, with logQ,
                :data:`trainer.step_input.SAMPLING_PROBABILITY`, computed once per row ahead).
            item_embeddings: [B, D] item-tower output for ``features``.
        Returns:
            (embeddings [B + N, D], hashed ids [B + N] int64 (:func:`hash_item_ids`), q [B + N]
            float32 or None), N = ``negative_samples_count`` (0 when off); q is the logQ
            probability.
        """
        if self.negative_samples_count == 0 and ITEM_HASH in features:
            q = None if self.sampling_probability is None else features[SAMPLING_PROBABILITY]
            return item_embeddings, features[ITEM_HASH], q
        ids = features[ITEM_KEY]
        if self.negative_samples_count == 0:
            q = None if self.sampling_probability is None else self.sampling_probability(ids)
            return item_embeddings, hash_item_ids(ids), q
        sampled = self.negative_sampler.sample(self.negative_samples_count)
        embeddings = tf.concat([item_embeddings, self.item_tower(sampled, training=training)], axis=0)
        ids = tf.concat([ids, sampled[ITEM_KEY]], axis=0)
        q = None
        if self.sampling_probability is not None:
            from trainer.negatives import mixed_candidate_probability

            q = mixed_candidate_probability(self.sampling_probability(ids), self.negative_sampler.probability(ids),
                                            tf.shape(item_embeddings)[0], self.negative_samples_count)
        return embeddings, hash_item_ids(ids), q

    def labelled_negative_loss(self, query, item, negatives, training=False, positive_weights=None):
        """Summed sigmoid cross-entropy: positive pairs (query [B, D], item [B, D]) labelled 1,
        the ``negatives`` batch's M (query, item) pairs labelled 0. ``positive_weights`` ([B]
        float32, graded actions) scales the positive pairs' terms. Scalar float32."""
        neg_query = self.query_tower(negatives, training=training)
        neg_item = self.item_tower(negatives, training=training)
        logits = tf.concat([tf.reduce_sum(query * item, axis=1), tf.reduce_sum(neg_query * neg_item, axis=1)],
                           axis=0) / self.temperature
        labels = tf.concat([tf.ones_like(query[:, 0]), tf.zeros_like(neg_query[:, 0])], axis=0)
        terms = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        if positive_weights is not None:
            terms *= tf.concat([tf.cast(positive_weights, tf.float32), tf.ones_like(neg_query[:, 0])], axis=0)
        return tf.reduce_sum(terms)

    def compute_loss(self, inputs, training=False):
        """Summed softmax cross-entropy of one batch (TFRS's default reduction), plus the
        weighted labelled-negative term when ``inputs`` carries labelled negatives; each row's
        terms scaled by its ``core.records.WEIGHT_KEY`` when the batch carries one."""
        if LABELLED_NEGATIVES in inputs:
            features, negatives = inputs[POSITIVES], inputs[LABELLED_NEGATIVES]
        else:
            features, negatives = inputs, None
        query = self.query_tower(features, training=training)
        item = self.item_tower(features, training=training)
        candidates, hashed_ids, q = self.candidates(features, item, training=training)
        weights = features[WEIGHT_KEY] if WEIGHT_KEY in features else None
        if self.dedupe_candidates:
            loss = deduplicated_softmax_loss(query, candidates, hashed_ids, self.temperature, q, positives=item,
                                             row_weights=weights)
        else:
            # Training metrics stay off the hot path: full-catalog recall is computed once
            # per epoch on the validation split instead.
            loss = self.task(query, candidates, sample_weight=weights, candidate_ids=hashed_ids,
                             candidate_sampling_probability=q, compute_metrics=False, compute_batch_metrics=False)
        if negatives is not None and self.labelled_negative_weight > 0.0:
            loss += self.labelled_negative_weight * self.labelled_negative_loss(query, item, negatives,
                                                                                training=training,
                                                                                positive_weights=weights)
        return loss


class SamplingProbability:
    """item_id -> in-batch sampling probability q = train count / total train positives.

    A static hash table built once (not a Keras layer: it is training-only and never
    exported with the towers). Items with a zero or unknown count get ``floor_count``
    (half a positive by default) so log q stays finite.
    """

    def __init__(self, item_ids: Sequence[str], counts: Sequence[int], floor_count: float = 0.5):
        if len(item_ids) != len(counts):
            raise ValueError("item_ids and counts differ in length")
        if floor_count <= 0.0:
            raise ValueError(f"floor_count must be > 0, got {floor_count}")
        total = float(sum(max(int(c), 0) for c in counts))
        if total <= 0.0:
            raise ValueError("logQ correction needs at least one train positive in the item_id vocabulary")
        probs = [max(float(c), floor_count) / total for c in counts]
        self.default = floor_count / total
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(item_ids), tf.string),
                                                tf.constant(probs, tf.float32)),
            default_value=tf.constant(self.default, tf.float32))

    @classmethod
    def from_vocab(cls, transformed_dir: str) -> "SamplingProbability":
        """From ``vocab/item_id.tsv`` (train counts per item)."""
        from trainer import artifacts

        tokens, counts = artifacts.read_vocab(transformed_dir, ITEM_KEY)
        return cls(tokens, counts)

    def __call__(self, item_ids):
        """[B] tf.string -> [B] float32 probabilities."""
        return self.table.lookup(item_ids)


def make_optimizer(config: Config, total_steps: Optional[int] = None, lr_scale: float = 1.0):
    """Optimizer per ``train.optimizer``; its learning rate follows ``train.lr_schedule``
    (peak ``train.lr`` x ``lr_scale``) over ``total_steps`` optimizer steps (see
    :mod:`trainer.schedules`).

    ``train.weight_decay`` is decoupled weight decay for every optimizer: tf_keras's base
    optimizer applies ``w -= lr_t * weight_decay * w`` to every trainable variable before each
    update (the step AdamW takes; ``Adam(weight_decay=wd)`` is AdamW), ahead of the compiled
    updates below, so the fused paths keep it."""
    from trainer.schedules import make_learning_rate

    t = config.train
    if t.optimizer not in _COMPILED:
        raise ValueError(f"train.optimizer: unsupported {t.optimizer!r}")
    lr = make_learning_rate(t.lr_schedule, t.lr * lr_scale, total_steps, t.warmup_steps)
    # None, not 0.0: tf_keras skips the decay ops entirely then (AdamW insists on a number).
    decay = t.weight_decay if t.weight_decay > 0.0 or t.optimizer == "adamw" else None
    optimizer = _COMPILED[t.optimizer](learning_rate=lr, weight_decay=decay)
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


_COMPILED = {name: type(cls.__name__, (_CompiledUpdates, cls), {"__module__": __name__})
              for name, cls in (("adam", tf.keras.optimizers.Adam), ("adamw", tf.keras.optimizers.AdamW),
                                ("adagrad", tf.keras.optimizers.Adagrad))}


def _can_jit_compile() -> bool:
    """Whether XLA is usable here (tf_keras's own check: not on Apple-silicon / pluggable devices)."""
    try:
        from tf_keras.src.utils.tf_utils import can_jit_compile
    except ImportError:  # another tf_keras layout: keep its default (XLA only with a GPU)
        return bool(tf.config.list_physical_devices("GPU"))
    return bool(can_jit_compile())
