"""The TFRS retrieval model: two towers + in-batch softmax with accidental-hit removal.

Trainer-internal (imports TensorFlow and TFRS at module import).
"""

from __future__ import annotations

from typing import Optional, Sequence

from core.config import Config
from core.records import ITEM_KEY
from trainer.data import LABELLED_NEGATIVES, POSITIVES
from trainer.features import TowerModel
from trainer.tfenv import import_tf

tf = import_tf()
import tensorflow_recommenders as tfrs  # noqa: E402  (after the legacy-Keras switch)


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
    """

    def __init__(self, query_tower: TowerModel, item_tower: TowerModel, temperature: float,
                 sampling_probability: Optional["SamplingProbability"] = None, *,
                 negative_sampler=None, negative_samples_count: int = 0, num_hard_negatives: int = 0,
                 labelled_negative_weight: float = 0.0, **kwargs):
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
        # TFRS treats None (not 0) as "keep every negative".
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True,
                                         num_hard_negatives=int(num_hard_negatives) or None)

    def candidates(self, features, item_embeddings, training=False):
        """The candidate set of one batch.

        Args:
            features: the positives batch (``item_id`` [B] + item features).
            item_embeddings: [B, D] item-tower output for ``features``.
        Returns:
            (embeddings [B + N, D], ids [B + N] tf.string, q [B + N] float32 or None),
            N = ``negative_samples_count`` (0 when off); q is the logQ probability.
        """
        ids = features[ITEM_KEY]
        if self.negative_samples_count == 0:
            q = None if self.sampling_probability is None else self.sampling_probability(ids)
            return item_embeddings, ids, q
        sampled = self.negative_sampler.sample(self.negative_samples_count)
        embeddings = tf.concat([item_embeddings, self.item_tower(sampled, training=training)], axis=0)
        ids = tf.concat([ids, sampled[ITEM_KEY]], axis=0)
        q = None
        if self.sampling_probability is not None:
            from trainer.negatives import mixed_candidate_probability

            q = mixed_candidate_probability(self.sampling_probability(ids), self.negative_sampler.probability(ids),
                                            tf.shape(item_embeddings)[0], self.negative_samples_count)
        return embeddings, ids, q

    def labelled_negative_loss(self, query, item, negatives, training=False):
        """Summed sigmoid cross-entropy: positive pairs (query [B, D], item [B, D]) labelled 1,
        the ``negatives`` batch's M (query, item) pairs labelled 0. Scalar float32."""
        neg_query = self.query_tower(negatives, training=training)
        neg_item = self.item_tower(negatives, training=training)
        logits = tf.concat([tf.reduce_sum(query * item, axis=1), tf.reduce_sum(neg_query * neg_item, axis=1)],
                           axis=0) / self.temperature
        labels = tf.concat([tf.ones_like(query[:, 0]), tf.zeros_like(neg_query[:, 0])], axis=0)
        return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))

    def compute_loss(self, inputs, training=False):
        """Summed softmax cross-entropy of one batch (TFRS's default reduction), plus the
        weighted labelled-negative term when ``inputs`` carries labelled negatives."""
        if LABELLED_NEGATIVES in inputs:
            features, negatives = inputs[POSITIVES], inputs[LABELLED_NEGATIVES]
        else:
            features, negatives = inputs, None
        query = self.query_tower(features, training=training)
        item = self.item_tower(features, training=training)
        candidates, ids, q = self.candidates(features, item, training=training)
        # Accidental-hit removal compares every label id with every candidate id ([B, B+N]).
        # On strings that dominates a large batch (8192^2 string compares ~5 s on 2 cores);
        # a 62-bit hash turns it into an int64 compare (collisions: ~B^2 / 2^62, negligible).
        hashed_ids = tf.strings.to_hash_bucket_fast(ids, 1 << 62)
        loss = self.task(query, candidates, candidate_ids=hashed_ids, candidate_sampling_probability=q,
                         compute_metrics=False, compute_batch_metrics=False)
        if negatives is not None and self.labelled_negative_weight > 0.0:
            loss += self.labelled_negative_weight * self.labelled_negative_loss(query, item, negatives,
                                                                                training=training)
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


def make_optimizer(config: Config, total_steps: Optional[int] = None):
    """Optimizer per ``train.optimizer``; its learning rate follows ``train.lr_schedule``
    (peak ``train.lr``) over ``total_steps`` optimizer steps (see :mod:`trainer.schedules`)."""
    from trainer.schedules import make_learning_rate

    t = config.train
    lr = make_learning_rate(t.lr_schedule, t.lr, total_steps, t.warmup_steps)
    if t.optimizer == "adam":
        return tf.keras.optimizers.Adam(learning_rate=lr)
    if t.optimizer == "adamw":
        return tf.keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay)
    if t.optimizer == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate=lr)
    raise ValueError(f"train.optimizer: unsupported {t.optimizer!r}")
