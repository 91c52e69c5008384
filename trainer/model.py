"""The TFRS retrieval model: two towers + in-batch softmax with accidental-hit removal.

Trainer-internal (imports TensorFlow and TFRS at module import).
"""

from __future__ import annotations

from typing import Optional, Sequence

from core.config import Config
from core.records import ITEM_KEY
from trainer.features import TowerModel
from trainer.tfenv import import_tf

tf = import_tf()
import tensorflow_recommenders as tfrs  # noqa: E402  (after the legacy-Keras switch)


class TwoTowerModel(tfrs.Model):
    """Query tower x item tower trained with in-batch negatives.

    Each batch row is a (query, positive item) pair; every other item in the batch is a
    negative for that query. Logits are cosine / ``temperature``. Rows whose item_id
    equals the positive's (the same item bought twice in one batch) are removed from
    the negatives rather than pushed away. No FactorizedTopK metrics: full-catalog
    recall is computed once per epoch by the training loop instead of every step.

    With ``sampling_probability`` (a :class:`SamplingProbability`, logQ correction of
    Yi et al. 2019) every candidate's logit is lowered by log q(item), q being the
    item's share of the train positives: in-batch negatives are drawn in proportion to
    popularity, so without it popular items are over-penalised as negatives.
    """

    def __init__(self, query_tower: TowerModel, item_tower: TowerModel, temperature: float,
                 sampling_probability: Optional["SamplingProbability"] = None, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0.0:
            raise ValueError(f"train.temperature must be > 0, got {temperature}")
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.sampling_probability = sampling_probability
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

    def compute_loss(self, features, training=False):
        """Summed softmax cross-entropy of one batch (TFRS's default reduction)."""
        query = self.query_tower(features, training=training)
        item = self.item_tower(features, training=training)
        q = None if self.sampling_probability is None else self.sampling_probability(features[ITEM_KEY])
        return self.task(query, item, candidate_ids=features[ITEM_KEY], candidate_sampling_probability=q,
                         compute_metrics=False, compute_batch_metrics=False)


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


def make_optimizer(config: Config):
    """Optimizer per ``train.optimizer`` with learning rate ``train.lr``."""
    t = config.train
    if t.optimizer == "adam":
        return tf.keras.optimizers.Adam(learning_rate=t.lr)
    if t.optimizer == "adamw":
        return tf.keras.optimizers.AdamW(learning_rate=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate=t.lr)
    raise ValueError(f"train.optimizer: unsupported {t.optimizer!r}")
