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


# ------------------------------------------------------------------ per interaction vs per query
# Pair ranks under SCORES / MASKED: (q0, item 1) rank 1, (q0, item 3) rank 3, (q1, item 0) rank 4.


def test_per_interaction_averages_over_pairs_hand_computed():
    got = M.retrieval_metrics(SCORES, RELEVANT, MASKED, ks=(2, 3, 10), ndcg_k=2, per="interaction")
    # 3 pairs; q0 has two relevant items so it weighs 2/3 here but 1/2 per query.
    assert got["recall_at_2"] == pytest.approx(1 / 3)  # per query: (1/2 + 0) / 2 = 1/4
    assert got["recall_at_3"] == pytest.approx(2 / 3)  # per query: (1 + 0) / 2 = 1/2
    assert got["recall_at_10"] == pytest.approx(1.0)
    assert got["ndcg_at_2"] == pytest.approx(D(1) / 3)
    per_query = M.retrieval_metrics(SCORES, RELEVANT, MASKED, ks=(2, 3), ndcg_k=2, per="query")
    assert per_query["recall_at_2"] == pytest.approx(1 / 4) and per_query["recall_at_3"] == pytest.approx(1 / 2)


def test_per_interaction_ndcg_is_the_mean_pair_discount():
    got = M.retrieval_metrics(SCORES, RELEVANT, MASKED, ks=(10,), ndcg_k=10, per="interaction")
    assert got["ndcg_at_10"] == pytest.approx((D(1) + D(3) + D(4)) / 3)


def test_per_interaction_equals_per_query_with_one_relevant_item_each():
    relevant = [np.array([1]), np.array([0])]
    a = M.retrieval_metrics(SCORES, relevant, MASKED, ks=(1, 4), ndcg_k=3, per="query")
    b = M.retrieval_metrics(SCORES, relevant, MASKED, ks=(1, 4), ndcg_k=3, per="interaction")
    assert a == pytest.approx(b)


def test_no_mask_the_tfrs_protocol_hand_computed():
    """mask_seen off: nothing is excluded, so item 0 (seen by q0) takes q0's first slot."""
    none = [np.array([], dtype=np.int64)] * 2
    # q0 ranking 0, 1, 2, 3, 4: relevant 1 at rank 2, 3 at rank 4. q1 ranking 4, 3, 2, 1, 0: 0 at rank 5.
    q = M.retrieval_metrics(SCORES, RELEVANT, none, ks=(2, 4, 5), ndcg_k=5, per="query")
    assert q["recall_at_2"] == pytest.approx((1 / 2 + 0) / 2)
    assert q["recall_at_4"] == pytest.approx((1 + 0) / 2)
    assert q["recall_at_5"] == pytest.approx(1.0)
    assert q["ndcg_at_5"] == pytest.approx(((D(2) + D(4)) / (D(1) + D(2)) + D(5) / D(1)) / 2)
    i = M.retrieval_metrics(SCORES, RELEVANT, none, ks=(2, 4), ndcg_k=5, per="interaction")
    assert i["recall_at_2"] == pytest.approx(1 / 3) and i["recall_at_4"] == pytest.approx(2 / 3)
    assert i["ndcg_at_5"] == pytest.approx((D(2) + D(4) + D(5)) / 3)


def test_pair_ranks_by_hand_and_chunked_per_interaction(monkeypatch):
    ranks = M.rank_relevant(SCORES, RELEVANT, MASKED, max_k=3)
    assert ranks.query.tolist() == [0, 0, 1] and ranks.item.tolist() == [1, 3, 0]
    assert ranks.rank.tolist() == [1, 3, 0]  # q1's item ranks 4th: beyond max_k -> 0
    with pytest.raises(ValueError, match="depth 3"):
        M.metrics_from_ranks(ranks, ks=(4,), ndcg_k=2)
    rng = np.random.default_rng(1)
    q, n = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    relevant = [rng.choice(30, size=1 + i % 3, replace=False) for i in range(7)]
    masked = [rng.choice(30, size=i % 4, replace=False) for i in range(7)]
    dense = M.retrieval_metrics(q @ n.T, relevant, masked, ks=(5, 50), ndcg_k=10, per="interaction")
    monkeypatch.setattr(M, "MAX_BLOCK_FLOATS", 60)  # 2 queries per block
    chunked = M.embedding_retrieval_metrics(q, n, relevant, masked, ks=(5, 50), ndcg_k=10, per="interaction")
    assert chunked == pytest.approx(dense)
    pairs = [(r, m) for rel, m in zip(relevant, masked) for r in rel]
    assert dense["recall_at_50"] == pytest.approx(np.mean([r not in m for r, m in pairs]))


def test_unknown_per_is_an_error():
    with pytest.raises(ValueError, match="per must be one of"):
        M.retrieval_metrics(SCORES, RELEVANT, MASKED, per="user")


# ------------------------------------------------------------------ popularity slices


def test_item_slices_hand_computed():
    # total 20; by count: idx6 (10, starts at 0%) head; idx1 (5, starts at 50%) torso;
    # idx3 (3, starts at 75% < 80%) torso; idx0, idx4 (start at 90%, 95%) tail; zeros cold.
    got = M.item_slices([1, 5, 0, 3, 1, 0, 10])
    assert got.tolist() == ["tail", "torso", "cold", "torso", "tail", "cold", "head"]


def test_item_slices_boundaries():
    # The item that crosses 50% is head (items before it hold 40%); the next starts at 80%: tail.
    assert M.item_slices([4, 4, 2]).tolist() == ["head", "head", "tail"]
    # Equal counts break ties by position (callers pass vocab order: count desc, then id);
    # the 4th item starts at 75% < 80%, so it still overlaps the torso's share.
    assert M.item_slices([1, 1, 1, 1]).tolist() == ["head", "head", "torso", "torso"]
    assert M.item_slices([1] * 10).tolist() == ["head"] * 5 + ["torso"] * 3 + ["tail"] * 2
    assert M.item_slices([0, 0]).tolist() == ["cold", "cold"]
    with pytest.raises(ValueError, match=">= 0"):
        M.item_slices([1, -1])


def test_slice_recall_hand_computed():
    ranks = M.rank_relevant(SCORES, RELEVANT, MASKED, max_k=2)
    slices = np.array(["cold", "head", "tail", "head", "torso"])
    got = M.slice_recall(ranks, slices, k=2)
    # head: (q0, item 1) rank 1 hit, (q0, item 3) rank 3 miss; cold: (q1, item 0) rank 4 miss.
    assert got == {"head": {"recall_at_2": 0.5, "n": 2}, "torso": {"recall_at_2": None, "n": 0},
                   "tail": {"recall_at_2": None, "n": 0}, "cold": {"recall_at_2": 0.0, "n": 1}}
    with pytest.raises(ValueError, match="depth 2"):
        M.slice_recall(ranks, slices, k=3)
