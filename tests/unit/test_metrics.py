"""trainer.metrics on hand-computed cases (pure numpy, no TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer import metrics as M

SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                   [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
# Query 0: item 0 masked -> ranking 1, 2, 3, 4; relevant {1, 3} at ranks 1 and 3.
# Query 1: item 4 masked -> ranking 3, 2, 1, 0; relevant {0} at rank 4.
RELEVANT = [np.array([1, 3]), np.array([0])]
MASKED = [np.array([0]), np.array([4])]
D = lambda rank: 1.0 / math.log2(rank + 1)  # noqa: E731  DCG discount of a 1-based rank


def test_recall_and_ndcg_hand_computed():
    got = M.retrieval_metrics(SCORES, RELEVANT, MASKED, ks=(2, 3, 10), ndcg_k=2)
    assert got["recall_at_2"] == pytest.approx((1 / 2 + 0) / 2)
    assert got["recall_at_3"] == pytest.approx((2 / 2 + 0) / 2)
    # K > N: every unmasked item is retrieved; the masked one never counts.
    assert got["recall_at_10"] == pytest.approx(1.0)
    assert got["ndcg_at_2"] == pytest.approx((D(1) / (D(1) + D(2)) + 0.0) / 2)


def test_ndcg_beyond_catalog_size():
    got = M.retrieval_metrics(SCORES, RELEVANT, MASKED, ks=(10,), ndcg_k=10)
    q0 = (D(1) + D(3)) / (D(1) + D(2))
    q1 = D(4) / D(1)
    assert got["ndcg_at_10"] == pytest.approx((q0 + q1) / 2)


def test_masked_relevant_item_is_a_miss_even_when_k_exceeds_n():
    got = M.retrieval_metrics(SCORES[:1], [np.array([0])], [np.array([0])], ks=(10,), ndcg_k=10)
    assert got == {"recall_at_10": 0.0, "ndcg_at_10": 0.0}


def test_no_mask_perfect_ranking():
    got = M.retrieval_metrics(SCORES[:1], [np.array([0, 1])], [np.array([], dtype=np.int64)],
                              ks=(1, 2), ndcg_k=2)
    assert got == pytest.approx({"recall_at_1": 0.5, "recall_at_2": 1.0, "ndcg_at_2": 1.0})


def test_chunked_embedding_metrics_match_dense(monkeypatch):
    rng = np.random.default_rng(0)
    q, n = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    relevant = [rng.choice(30, size=1 + i % 3, replace=False) for i in range(7)]
    masked = [rng.choice(30, size=i % 4, replace=False) for i in range(7)]
    dense = M.retrieval_metrics(q @ n.T, relevant, masked, ks=(5, 50), ndcg_k=10)
    monkeypatch.setattr(M, "MAX_BLOCK_FLOATS", 60)  # 2 queries per block
    chunked = M.embedding_retrieval_metrics(q, n, relevant, masked, ks=(5, 50), ndcg_k=10)
    assert chunked == pytest.approx(dense)
    assert dense["recall_at_50"] == pytest.approx(
        np.mean([len(set(r) - set(m)) / len(r) for r, m in zip(relevant, masked)]))


def test_popularity_baseline():
    pop = M.popularity_scores([3, 1, 2, 0])
    assert pop.dtype == np.float32 and pop.tolist() == [3, 1, 2, 0]
    got = M.embedding_retrieval_metrics(None, None, [np.array([2]), np.array([3])],
                                        [np.array([0]), np.array([], dtype=np.int64)],
                                        ks=(1, 2), ndcg_k=2, item_bias=pop)
    # q0: 0 masked -> ranking 2, 1, 3: hit at rank 1. q1: ranking 0, 2, 1, 3: miss in top 2.
    assert got == pytest.approx({"recall_at_1": 0.5, "recall_at_2": 0.5, "ndcg_at_2": 0.5})


def test_input_validation_names_the_problem():
    with pytest.raises(ValueError, match="relevant is empty"):
        M.retrieval_metrics(SCORES, [np.array([1]), np.array([], dtype=np.int64)], MASKED)
    with pytest.raises(ValueError, match="masked has 1 entries"):
        M.retrieval_metrics(SCORES, RELEVANT, MASKED[:1])
    with pytest.raises(ValueError, match="out of range"):
        M.retrieval_metrics(SCORES, [np.array([9]), np.array([0])], MASKED)
