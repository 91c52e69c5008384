"""logQ sampling-bias correction (train.logq_correction), checked by hand.

Two items in the train split: "pop" bought 9 times, "rare" once (total 10), so
q(pop) = 0.9, q(rare) = 0.1. With identical embeddings every raw logit is equal, and
TFRS subtracts log q from each candidate's logit, so for a positive p with the other
item o as the only in-batch negative the row loss is

    -(s - log q_p) + log(exp(s - log q_p) + exp(s - log q_o)) = log(1 + q_p / q_o):

log(1 + 9) for the popular positive (its logit is lowered relative to the rare one),
log(1 + 1/9) for the rare positive, and log 2 for both without the correction.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@pytest.fixture(scope="module")
def tf():
    from trainer.tfenv import import_tf

    return import_tf()


def _constant_tower(tf):
    class Constant(tf.keras.layers.Layer):
        """Every row -> the same unit vector, so every raw logit is 1."""

        def call(self, features, training=False):
            n = tf.shape(features["item_id"])[0]
            return tf.math.l2_normalize(tf.ones([n, 2]), axis=1)

    return Constant()


def test_sampling_probability_table_values(tf):
    from trainer.model import SamplingProbability

    sp = SamplingProbability(["pop", "rare", "unsold"], [9, 1, 0])
    got = sp(tf.constant(["pop", "rare", "unsold", "never-seen"])).numpy()
    # counts / 10; zero and unknown counts get the floor of half a positive.
    np.testing.assert_allclose(got, [0.9, 0.1, 0.05, 0.05], rtol=1e-6)
    with pytest.raises(ValueError):
        SamplingProbability(["a"], [0])


def test_from_vocab_reads_train_counts(tf, tmp_path):
    from trainer.model import SamplingProbability

    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "item_id.tsv").write_text("pop\t9\nrare\t1\n")
    got = SamplingProbability.from_vocab(str(tmp_path))(tf.constant(["rare", "pop"])).numpy()
    np.testing.assert_allclose(got, [0.1, 0.9], rtol=1e-6)


@pytest.mark.parametrize("dedupe", [False, True], ids=["per-copy", "deduplicated"])
@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_logq_lowers_popular_logits(tf, temperature, dedupe):
    from trainer.model import SamplingProbability, TwoTowerModel

    batch = {"item_id": tf.constant(["pop", "rare"])}
    sp = SamplingProbability(["pop", "rare"], [9, 1])
    plain = TwoTowerModel(_constant_tower(tf), _constant_tower(tf), temperature, dedupe_candidates=dedupe)
    corrected = TwoTowerModel(_constant_tower(tf), _constant_tower(tf), temperature, sampling_probability=sp,
                              dedupe_candidates=dedupe)

    assert float(plain.compute_loss(batch)) == pytest.approx(2 * math.log(2), rel=1e-5)
    assert float(corrected.compute_loss(batch)) == pytest.approx(math.log(10) + math.log(10 / 9), rel=1e-5)

    # Row by row (sample weights isolate one positive): the popular positive now loses
    # against the rare negative, the rare positive wins against the popular negative.
    q = sp(batch["item_id"])
    emb = _constant_tower(tf)(batch)

    def row_loss(weights):
        return float(corrected.task(emb, emb, candidate_ids=batch["item_id"], candidate_sampling_probability=q,
                                    sample_weight=tf.constant(weights), compute_metrics=False,
                                    compute_batch_metrics=False))

    assert row_loss([1.0, 0.0]) == pytest.approx(math.log(10), rel=1e-5)
    assert row_loss([0.0, 1.0]) == pytest.approx(math.log(10 / 9), rel=1e-5)


def test_logq_probability_is_clipped_like_tfrs(tf):
    """TFRS takes log of q clipped to [1e-6, 1]; the distinct-candidate path does the same."""
    from trainer.model import deduplicated_softmax_loss

    emb = tf.math.l2_normalize(tf.ones([2, 2]), axis=1)
    ids = tf.constant([1, 2], tf.int64)
    import tensorflow_recommenders as tfrs

    task = tfrs.tasks.Retrieval(temperature=0.5, remove_accidental_hits=True)
    for q in ([1e-9, 0.5], [2.0, 0.5]):
        q = tf.constant(q)
        want = float(task(emb, emb, candidate_ids=ids, candidate_sampling_probability=q, compute_metrics=False,
                          compute_batch_metrics=False))
        assert float(deduplicated_softmax_loss(emb, emb, ids, 0.5, q)) == pytest.approx(want, rel=1e-5)
