"""The TFRS retrieval model: two towers + in-batch softmax with accidental-hit removal.

Trainer-internal (imports TensorFlow and TFRS at module import).
"""

from __future__ import annotations

from typing import Optional, Sequence

from core.records import ITEM_KEY, WEIGHT_KEY
from trainer.augmented import category_alignment_loss, category_codes, mimic_loss
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


def euclidean_as_inner_products(query, candidates, positives=None):
    """Euclidean scores as dot products of widened rows, for the softmax losses (which score by
    ``query @ candidates^T``): ``[2 q, 1] . [c, -||c||^2] = 2 q . c - ||c||^2``, which is
    ``-||q - c||^2`` plus ``||q||^2``, the same for every candidate of a row, so the softmax (TFRS's
    or :func:`deduplicated_softmax_loss`) is exactly that of ``-||q - c||^2 / temperature``.

    Args:
        query: [B, D]; candidates: [C, D]; positives: [B, D] or None (see
            :func:`deduplicated_softmax_loss`).
    Returns:
        (query [B, D + 1], candidates [C, D + 1], positives [B, D + 1] or None).
    """
    def widened_item(rows):
        return tf.concat([rows, -tf.reduce_sum(tf.square(rows), axis=1, keepdims=True)], axis=1)

    query = tf.concat([2.0 * query, tf.ones_like(query[:, :1])], axis=1)
    return query, widened_item(candidates), None if positives is None else widened_item(positives)


def pair_scores(query, item, similarity: str):
    """[B, D] x [B, D] -> [B] score of each row's own pair: q . i, or -||q - i||^2 for euclidean
    (core/similarity.py)."""
    if similarity == "euclidean":
        return -tf.reduce_sum(tf.square(query - item), axis=1)
    return tf.reduce_sum(query * item, axis=1)


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
    negative for that query. Logits are scores / ``temperature``, the score being
    ``similarity``'s (core/similarity.py: cosine of the unit towers by default; dot; minus the
    squared euclidean distance, through :func:`euclidean_as_inner_products`). Rows whose item_id
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
      sigmoid(score(query, item) / temperature) with label 1 for the positive pairs and 0 for
      the explicit label-0 pairs (summed like TFRS's softmax loss, so w is relative to
      one row's softmax term).

    ``loss="labelled_bce"`` (the query -> product design document's seed recipe): the softmax
    term is left out and the loss is ``w *`` that BCE alone (positives label 1, explicit label-0
    pairs label 0), so every batch must carry labelled negatives.

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
                 labelled_negative_weight: float = 0.0, dedupe_candidates: bool = False,
                 similarity: str = "cosine", mimic_weight: float = 0.0, category_feature: str = "",
                 category_multi_valued: bool = False, category_weight: float = 0.0, loss: str = "softmax",
                 **kwargs):
        super().__init__(**kwargs)
        from core.similarity import check

        self.similarity = check(similarity)
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
        if loss not in ("softmax", "labelled_bce"):
            raise ValueError(f"train.loss must be softmax or labelled_bce, got {loss!r}")
        if loss == "labelled_bce" and self.labelled_negative_weight <= 0.0:
            raise ValueError("train.loss=labelled_bce needs labelled_negative_weight > 0")
        self.loss = loss
        self.dedupe_candidates = bool(dedupe_candidates) and not num_hard_negatives
        if mimic_weight > 0.0 and (query_tower.augmented is None or item_tower.augmented is None):
            raise ValueError("mimic_weight > 0 needs an augmented vector in both towers (train.augmented_vectors)")
        self.mimic_weight = float(mimic_weight)
        self.category_feature = category_feature if category_weight > 0.0 else ""
        self.category_multi_valued = bool(category_multi_valued)
        self.category_weight = float(category_weight)
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
        logits = tf.concat([pair_scores(query, item, self.similarity),
                            pair_scores(neg_query, neg_item, self.similarity)], axis=0) / self.temperature
        labels = tf.concat([tf.ones_like(query[:, 0]), tf.zeros_like(neg_query[:, 0])], axis=0)
        terms = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        if positive_weights is not None:
            terms *= tf.concat([tf.cast(positive_weights, tf.float32), tf.ones_like(neg_query[:, 0])], axis=0)
        return tf.reduce_sum(terms)

    def compute_loss(self, inputs, training=False):
        """Summed softmax cross-entropy of one batch (TFRS's default reduction), plus the
        weighted labelled-negative term when ``inputs`` carries labelled negatives (that term
        alone with ``loss="labelled_bce"``); each row's
        terms scaled by its ``core.records.WEIGHT_KEY`` when the batch carries one."""
        if LABELLED_NEGATIVES in inputs:
            features, negatives = inputs[POSITIVES], inputs[LABELLED_NEGATIVES]
        else:
            features, negatives = inputs, None
        weights = features[WEIGHT_KEY] if WEIGHT_KEY in features else None
        if self.mimic_weight > 0.0:
            query, query_augmented = self.query_tower(features, training=training, with_augmented=True)
            item, item_augmented = self.item_tower(features, training=training, with_augmented=True)
        else:
            query = self.query_tower(features, training=training)
            item = self.item_tower(features, training=training)
            query_augmented = item_augmented = None
        if self.loss == "labelled_bce":
            if negatives is None:
                raise ValueError("train.loss=labelled_bce: the batch carries no labelled negatives")
            loss = self.labelled_negative_weight * self.labelled_negative_loss(query, item, negatives,
                                                                                training=training,
                                                                                positive_weights=weights)
            return self._auxiliary_losses(loss, features, query, item, query_augmented, item_augmented, weights)
        candidates, hashed_ids, q = self.candidates(features, item, training=training)
        scored_query, scored_candidates, scored_item = query, candidates, item
        if self.similarity == "euclidean":
            scored_query, scored_candidates, scored_item = euclidean_as_inner_products(query, candidates, item)
        if self.dedupe_candidates:
            loss = deduplicated_softmax_loss(scored_query, scored_candidates, hashed_ids, self.temperature, q,
                                             positives=scored_item, row_weights=weights)
        else:
            # Training metrics stay off the hot path: full-catalog recall is computed once
            # per epoch on the validation split instead.
            loss = self.task(scored_query, scored_candidates, sample_weight=weights, candidate_ids=hashed_ids,
                             candidate_sampling_probability=q, compute_metrics=False, compute_batch_metrics=False)
        if negatives is not None and self.labelled_negative_weight > 0.0:
            loss += self.labelled_negative_weight * self.labelled_negative_loss(query, item, negatives,
                                                                                training=training,
                                                                                positive_weights=weights)
        return self._auxiliary_losses(loss, features, query, item, query_augmented, item_augmented, weights)

    def _auxiliary_losses(self, loss, features, query, item, query_augmented, item_augmented, weights):
        """``loss`` plus the optional mimic and category-alignment terms."""
        if self.mimic_weight > 0.0:
            # DAT's adaptive mimic: each side's augmented vector toward the other tower's output.
            loss += self.mimic_weight * (
                mimic_loss(self.query_tower.augmented.mimic(query_augmented), item, weights)
                + mimic_loss(self.item_tower.augmented.mimic(item_augmented), query, weights))
        if self.category_feature:
            codes = category_codes(features[self.category_feature], self.category_multi_valued)
            # Times B: a batch-level term, weighed against the summed (per-row) softmax terms.
            batch = tf.cast(tf.shape(item)[0], tf.float32)
            loss += self.category_weight * batch * category_alignment_loss(item, codes)
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
