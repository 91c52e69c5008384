"""The training loss follows train.similarity: the in-batch softmax of score / temperature, with
score = q . i (cosine, dot) or -||q - i||^2 (euclidean), checked against numpy on a tiny batch,
through TFRS's task and the distinct-candidate path alike."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

QUERIES = {"u0": [1.0, 0.5, -0.2], "u1": [-0.3, 2.0, 0.4], "u2": [0.7, -1.1, 1.5]}
ITEMS = {"a": [0.9, 0.1, 0.0], "b": [-1.2, 1.8, 0.3], "c": [0.2, -0.4, 2.5]}


@pytest.fixture(scope="module")
def tf():
    from trainer.tfenv import import_tf

    return import_tf()


def _fixed_tower(tf, key, rows, unit):
    """[B] keys -> their fixed rows (unit-normalised for cosine), like a trained tower's output."""
    names, matrix = list(rows), np.array(list(rows.values()), dtype=np.float32)

    class Fixed(tf.keras.layers.Layer):
        def call(self, features, training=False):
            table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(names), tf.range(len(names), dtype=tf.int64)), -1)
            out = tf.gather(tf.constant(matrix), table.lookup(features[key]))
            return tf.math.l2_normalize(out, axis=1) if unit else out

    return Fixed()


def _numpy_loss(users, items, name, temperature):
    """Summed softmax cross-entropy, row r's positive at column r, other copies of it removed."""
    q = np.array([QUERIES[u] for u in users], dtype=np.float64)
    c = np.array([ITEMS[i] for i in items], dtype=np.float64)
    if name == "cosine":
        q, c = q / np.linalg.norm(q, axis=1, keepdims=True), c / np.linalg.norm(c, axis=1, keepdims=True)
    s = -((q[:, None] - c[None]) ** 2).sum(-1) if name == "euclidean" else q @ c.T
    logits = s / temperature
    total = 0.0
    for r in range(len(users)):
        kept = [j for j in range(len(items)) if j == r or items[j] != items[r]]
        total += np.log(np.exp(logits[r, kept]).sum()) - logits[r, r]
    return total


@pytest.mark.parametrize("dedupe", [False, True], ids=["tfrs", "deduplicated"])
@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("items", [["a", "b", "c"], ["a", "b", "a"]], ids=["distinct", "repeated"])
def test_the_loss_is_the_softmax_of_the_similarity(tf, name, dedupe, items):
    from trainer.model import TwoTowerModel

    users = ["u0", "u1", "u2"]
    unit = name == "cosine"
    model = TwoTowerModel(_fixed_tower(tf, "user_id", QUERIES, unit), _fixed_tower(tf, "item_id", ITEMS, unit),
                          2.0, dedupe_candidates=dedupe, similarity=name)
    batch = {"user_id": tf.constant(users), "item_id": tf.constant(items)}
    assert float(model.compute_loss(batch)) == pytest.approx(_numpy_loss(users, items, name, 2.0), rel=1e-5)


def test_the_similarities_give_different_losses(tf):
    """Else the test above would pass with the similarity ignored."""
    losses = {name: _numpy_loss(["u0", "u1", "u2"], ["a", "b", "c"], name, 2.0) for name in ("cosine", "dot",
                                                                                               "euclidean")}
    assert len({round(v, 4) for v in losses.values()}) == 3


def test_labelled_negatives_are_scored_by_the_similarity(tf):
    from trainer.model import pair_scores

    q = tf.constant([QUERIES["u0"], QUERIES["u1"]])
    i = tf.constant([ITEMS["a"], ITEMS["c"]])
    qn, inn = np.array([QUERIES["u0"], QUERIES["u1"]]), np.array([ITEMS["a"], ITEMS["c"]])
    np.testing.assert_allclose(pair_scores(q, i, "dot").numpy(), (qn * inn).sum(1), rtol=1e-6)
    np.testing.assert_allclose(pair_scores(q, i, "euclidean").numpy(), -((qn - inn) ** 2).sum(1), rtol=1e-6)


@pytest.mark.parametrize("name,unit", [("cosine", True), ("dot", False), ("euclidean", False)])
def test_only_the_cosine_tower_normalises(tf, name, unit):
    from core.config import FeatureSpec
    from core.similarity import unit_rows
    from trainer.features import IdEncoder, TowerModel

    tower = TowerModel({"user_id": IdEncoder(["u0", "u1"], 4, name="user_id_encoder")},
                       [FeatureSpec(name="user_id", type="id")], [], "relu", 0.0, 3, unit_norm=unit_rows(name))
    norms = np.linalg.norm(tower({"user_id": tf.constant(["u0", "u1", "zz"])}).numpy(), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == unit
