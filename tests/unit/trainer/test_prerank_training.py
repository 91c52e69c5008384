"""Training the cascade's pre-ranker (trainer/prerank.py): its TF interaction score against the
numpy scorer serving uses, the contrastive regulariser by hand, and one pipeline run on the planted
ring data that trains, exports, evaluates and gates it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from core import history
from core.contracts import files as names
from core.prerank import InteractionShape, interaction_scores
from core.towers import Tower
from tests.ring_data import publish_run, ring_tables, transform
from trainer.prerank import contrastive_loss, interaction_logits

SHAPE = InteractionShape(heads=2, item_vectors=3, head_dims=4, scale=0.7, bias=0.2)


def test_the_training_score_is_the_serving_score():
    rng = np.random.default_rng(0)
    query = rng.normal(size=(5, SHAPE.query_width)).astype(np.float32)
    items = rng.normal(size=(5, 6, SHAPE.item_width)).astype(np.float32)
    trained = interaction_logits(tf.constant(query), tf.constant(items), SHAPE, SHAPE.scale, SHAPE.bias)
    np.testing.assert_allclose(trained.numpy(), interaction_scores(query, items, SHAPE), rtol=1e-5, atol=1e-5)


def test_contrastive_loss_by_hand_with_a_repeated_positive_not_its_own_negative():
    rng = np.random.default_rng(1)
    query = rng.normal(size=(3, SHAPE.query_width)).astype(np.float32)
    items = rng.normal(size=(3, SHAPE.item_width)).astype(np.float32)
    positions = np.array([7, 2, 7])  # rows 0 and 2 share their positive item
    temperature = 0.5

    def unit_mean(x, n):
        m = x.reshape(len(x), n, SHAPE.head_dims).mean(axis=1)
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    logits = unit_mean(query, SHAPE.heads) @ unit_mean(items, SHAPE.item_vectors).T / temperature
    expected = []
    for row in range(3):
        # Row 0's negatives are row 1's item only (row 2's is the same item); likewise row 2's.
        kept = [c for c in range(3) if c == row or positions[c] != positions[row]]
        expected.append(-logits[row, row] + np.log(np.exp(logits[row, kept]).sum()))
    got = contrastive_loss(tf.constant(query), tf.constant(items), tf.constant(positions), SHAPE, temperature)
    np.testing.assert_allclose(float(got), np.mean(expected), rtol=1e-5)


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prerank")
    cfg, transformed = transform(root, ring_tables(seed=5), **{
        "train.n_epochs": 4, "train.cascade.enabled": True, "train.cascade.top_n": 20,
        "train.cascade.epochs": 3, "train.cascade.patience": 3, "train.cascade.batch_size": 128,
        "train.cascade.hidden_dims": [16]})
    training, metrics, result = publish_run(cfg, transformed, root)
    return cfg, root, training, metrics, result


def test_the_run_trains_and_exports_the_pre_ranker_beside_the_retrieval_towers(cascade_run):
    _, root, training, _, _ = cascade_run
    folder = root / "model" / names.PRERANK_DIR
    doc = json.loads((folder / names.PRERANK_FILE).read_text())
    assert len(doc["history"]) == 3 and 1 <= doc["best_epoch"] <= 3
    assert doc["val_cascade_recall_at_10"] == max(h["val_cascade_recall_at_10"] for h in doc["history"])
    assert doc["loss"] == "softmax" and doc["use_retrieval_score"] is True and doc["retrieval_weight"] > 0
    assert doc["n_train_rows"] > 0 and all(np.isfinite(h["loss"]) for h in doc["history"])
    for tower in (names.QUERY_TOWER_DIR, names.ITEM_TOWER_DIR):
        assert os.path.exists(folder / tower / "saved_model.pb")
    vectors = Tower(str(folder / names.QUERY_TOWER_DIR)).embed({"user_id": ["u1", "u2"],
                                                                 "recent": [history.join(["i1", "i2"]), ""]})
    # Unit head vectors (each head L2-normalised), as core/prerank.py scores them.
    heads = vectors.reshape(2, doc["heads"], doc["head_dims"])
    np.testing.assert_allclose(np.linalg.norm(heads, axis=2), 1.0, rtol=1e-4)
    assert training["cascade"]["best_epoch"] == doc["best_epoch"]


def test_evaluate_pairs_both_orders_on_the_same_queries_and_the_gate_follows_the_gain(cascade_run):
    cfg, _, _, metrics, result = cascade_run
    cascade = metrics["cascade"]
    assert cascade["top_n"] == 20 and cascade["n_queries"] > 0
    gain = cascade["cascade"]["diff"]["recall_at_10"]["mean"]
    assert gain == pytest.approx(cascade["cascade"]["recall_at_10"] - cascade["retrieval"]["recall_at_10"], abs=1e-9)
    assert {"100", "500"} & set(cascade["latency_ms"]) or cascade["latency_ms"]
    assert result["published"], result["reasons"]
    shipped = gain > cfg.gate.cascade_min_gain
    words = "published with the version" if shipped else "NOT published, the version serves retrieval alone"
    assert any(words in r for r in result["reasons"]), result["reasons"]
