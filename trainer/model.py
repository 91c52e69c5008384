"""The TFRS retrieval model: two towers + in-batch softmax with accidental-hit removal.

Trainer-internal (imports TensorFlow and TFRS at module import).
"""

from __future__ import annotations

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
    """

    def __init__(self, query_tower: TowerModel, item_tower: TowerModel, temperature: float, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0.0:
            raise ValueError(f"train.temperature must be > 0, got {temperature}")
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

    def compute_loss(self, features, training=False):
        """Summed softmax cross-entropy of one batch (TFRS's default reduction)."""
        query = self.query_tower(features, training=training)
        item = self.item_tower(features, training=training)
        return self.task(query, item, candidate_ids=features[ITEM_KEY],
                         compute_metrics=False, compute_batch_metrics=False)


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
