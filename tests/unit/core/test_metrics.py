"""core.metrics on hand-computed cases (pure numpy, no TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core import metrics as M

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


# ------------------------------------------------------------------ memory bound of the scoring


def test_scoring_holds_one_bounded_block_at_a_time(monkeypatch):
    """Blocks of at most MAX_BLOCK_FLOATS scores (here 60 = 2 queries x 30 items), and the same
    pair ranks as one dense block, for the model and the popularity baseline."""
    rng = np.random.default_rng(2)
    q, n = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    bias = rng.normal(size=30).astype(np.float32)
    relevant = [rng.choice(30, size=1 + i % 3, replace=False) for i in range(7)]
    masked = [rng.choice(30, size=i % 4, replace=False) for i in range(7)]
    dense = M.rank_relevant(q @ n.T + bias, relevant, masked, 10)
    dense_pop = M.rank_relevant(np.tile(bias, (7, 1)), relevant, masked, 10)
    shapes = []
    inner = M._block_ranks
    monkeypatch.setattr(M, "_block_ranks", lambda cost, *a: shapes.append(cost.shape) or inner(cost, *a))
    monkeypatch.setattr(M, "MAX_BLOCK_FLOATS", 60)
    chunked = M.embedding_rank_relevant(q, n, relevant, masked, 10, item_bias=bias)
    pop = M.embedding_rank_relevant(None, None, relevant, masked, 10, item_bias=bias)
    assert shapes and all(rows * cols <= 60 for rows, cols in shapes)
    for a, b in ((dense, chunked), (dense_pop, pop)):
        assert (a.query.tolist(), a.item.tolist(), a.rank.tolist()) == (b.query.tolist(), b.item.tolist(),
                                                                         b.rank.tolist())


# ------------------------------------------------------------------ per-query contributions and intervals


@pytest.mark.parametrize("per", ["query", "interaction"])
def test_metrics_are_ratios_of_per_query_contributions(per):
    ranks = M.rank_relevant(SCORES, RELEVANT, MASKED, max_k=10)
    values, weights = M.query_contributions(ranks, ks=(2, 3), ndcg_k=2, per=per)
    if per == "query":
        assert values["recall_at_2"].tolist() == [0.5, 0.0] and weights.tolist() == [1.0, 1.0]
    else:  # q0's hits at 2 and 3, over its 2 pairs; q1's 1 pair ranks 4th
        assert values["recall_at_3"].tolist() == [2.0, 0.0] and weights.tolist() == [2.0, 1.0]
    got = M.metrics_from_ranks(ranks, ks=(2, 3), ndcg_k=2, per=per)
    assert got == {k: M.ratio_estimate(v, weights) for k, v in values.items()}
    assert got == pytest.approx(M.retrieval_metrics(SCORES, RELEVANT, MASKED, ks=(2, 3), ndcg_k=2, per=per))


def test_ratio_interval_hand_computed():
    # 4 of 8 queries: mean 0.5, s^2 = 1/3, var = (1 - 4/8) * (1/3) / 4 = 1/24.
    lo, hi = M.ratio_interval([0.0, 1.0, 1.0, 0.0], [1.0] * 4, 8)
    half = M.Z95 * math.sqrt(1 / 24)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert M.ratio_interval([0.2, 0.4], [1.0, 1.0], 2) == [pytest.approx(0.3)] * 2  # all scored: exact
    assert M.ratio_interval([0.0, 1.0], [1.0, 1.0], 10**6)[0] == 0.0  # clipped to the metric's range
    # No spread in the sample: the rule of three, at most 3 / n of the queries unlike the sample.
    assert M.ratio_interval([0.0] * 300, [1.0] * 300, 10_000) == [0.0, pytest.approx(0.01)]
    assert M.ratio_interval([1.0] * 300, [1.0] * 300, 10_000) == [pytest.approx(0.99), 1.0]
    assert M.ratio_interval([0.0] * 100, [1.0] * 100, 500, bounds=(-1.0, 1.0)) == \
        [pytest.approx(-0.03), pytest.approx(0.03)]  # two models agreeing on every sampled query
    assert M.ratio_interval([1.0, 2.0], [3.0, 6.0], 9) == [0.0, 1.0]  # 1/3 per pair, n <= 3: the range
    assert M.ratio_interval([0.3], [1.0], 5) == [0.0, 1.0]  # one query of five: spread unknown
    with pytest.raises(ValueError, match="more than the population"):
        M.ratio_interval([0.1, 0.2], [1.0, 1.0], 1)


@pytest.mark.parametrize("per", ["query", "interaction"])
def test_ratio_interval_covers_the_population_value(per):
    """A known population of 1,000 queries (hand-made recalls; per interaction 1-4 pairs each):
    the 95% interval from a sample_keys sample of 100 brackets the all-query value in about
    95% of 300 seeds, and at full size it is the exact value."""
    from core.sampling import sample_keys

    rng = np.random.default_rng(5)
    n_pop = 1000
    if per == "query":
        weights = np.ones(n_pop)
        values = rng.choice([0.0, 0.25, 0.5, 1.0], size=n_pop, p=[0.5, 0.2, 0.1, 0.2])
    else:
        weights = rng.integers(1, 5, size=n_pop).astype(np.float64)
        values = rng.binomial(weights.astype(int), 0.3).astype(np.float64)  # hits among a query's pairs
    exact = values.sum() / weights.sum()
    keys = [f"q{i}" for i in range(n_pop)]
    position = {k: i for i, k in enumerate(keys)}
    covered = 0
    for seed in range(300):
        rows = [position[k] for k in sample_keys(keys, 100, seed)]
        lo, hi = M.ratio_interval(values[rows], weights[rows], n_pop)
        covered += lo <= exact <= hi
    assert 0.91 <= covered / 300 <= 0.99, covered
    assert M.ratio_interval(values, weights, n_pop) == [pytest.approx(exact)] * 2


def test_top_positions_is_the_masked_exact_order_and_its_lists_score_as_retrieval_does(monkeypatch):
    """The cascade's candidate lists (top_positions) and their metrics (ranks_from_lists) agree with
    the dense path: same order as a full sort with masked items removed, same recall and nDCG."""
    rng = np.random.default_rng(3)
    q, n = rng.normal(size=(9, 4)).astype(np.float32), rng.normal(size=(40, 4)).astype(np.float32)
    relevant = [rng.choice(40, size=1 + i % 3, replace=False) for i in range(9)]
    masked = [rng.choice(40, size=i % 4, replace=False) for i in range(9)]
    monkeypatch.setattr(M, "MAX_BLOCK_FLOATS", 80)  # 2 queries per block: the blocks are stitched right
    lists = M.top_positions(q, n, masked, 12)
    scores = q @ n.T
    for row in range(9):
        order = [int(i) for i in np.argsort(-scores[row], kind="stable") if i not in set(masked[row])]
        assert lists[row].tolist() == order[:12]
    dense = M.retrieval_metrics(scores, relevant, masked, ks=(5, 10), ndcg_k=10)
    ranks = M.ranks_from_lists(lists, relevant, masked, 40, 10)
    from_lists = M.estimates(*M.query_contributions(ranks, (5, 10), 10, "query"))
    for name in ("recall_at_5", "recall_at_10", "ndcg_at_10"):
        assert from_lists[name] == pytest.approx(dense[name])
    # Re-ordering changes the metrics: a list with its relevant items pushed out scores lower.
    worst = np.array([[i for i in range(40) if i not in set(relevant[r])][:12] for r in range(9)])
    assert M.estimates(*M.query_contributions(M.ranks_from_lists(worst, relevant, masked, 40, 10),
                                              (10,), 10, "query"))["recall_at_10"] == 0.0
    with pytest.raises(ValueError, match="masked has 2 entries"):
        M.top_positions(q, n, masked[:2], 5)
