"""The index follows train.similarity: ScaNN's distance measure, the exact reference, the tuner
and the reported scores, each checked against numpy's definition of the score."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import IndexConfig
from indexer.scann_index import (BRUTE_FORCE, TREE_AH, IndexParams, build_with_params, exact_topk,
                                 exact_topk_chunked, measure, recall_tie_aware, search)
from indexer.tuner import tune


def _numpy_scores(queries, db, name):
    """The definitions, written out: q . i, or minus the squared distance."""
    if name == "euclidean":
        return -((queries[:, None, :].astype(np.float64) - db[None, :, :]) ** 2).sum(axis=2)
    return queries.astype(np.float64) @ db.T.astype(np.float64)


@pytest.fixture(scope="module")
def clustered():
    """Unnormalised clustered rows whose norms vary 0.5x-3x, so the three similarities rank
    differently (checked below): 3,000 items, 40 queries near items."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(30, 16))
    db = centres[rng.integers(0, 30, 3000)] + 0.3 * rng.normal(size=(3000, 16))
    db *= rng.uniform(0.5, 3.0, size=(3000, 1))
    queries = db[rng.choice(3000, 40, replace=False)] + 0.2 * rng.normal(size=(40, 16))
    return db.astype(np.float32), queries.astype(np.float32)


def test_the_similarities_rank_this_data_differently(clustered):
    db, queries = clustered
    tops = {name: np.argsort(-_numpy_scores(queries, db, name), axis=1)[:, :10] for name in ("dot", "euclidean")}
    assert (tops["dot"] != tops["euclidean"]).any(axis=1).mean() > 0.5  # else the tests below prove little


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean"])
def test_exact_search_equals_numpy_for_each_similarity(clustered, name):
    db, queries = clustered
    if name == "cosine":
        db = db / np.linalg.norm(db, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    want = _numpy_scores(queries, db, name)
    order = np.argsort(-want, axis=1, kind="stable")[:, :10]
    ids, scores = exact_topk(db, queries, 10, similarity=name)
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(scores, np.take_along_axis(want, order, axis=1), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(exact_topk_chunked(db, queries, 10, max_block_floats=5000, similarity=name), order)

    searcher = build_with_params(db, IndexParams(kind=BRUTE_FORCE), k=10, similarity=name)
    found, found_scores = search(searcher, queries, 10, len(db), similarity=name)
    np.testing.assert_array_equal(found, order)
    # Higher is better whatever ScaNN returns (a squared distance comes back negated).
    np.testing.assert_allclose(found_scores, np.take_along_axis(want, order, axis=1), rtol=1e-4, atol=1e-3)
    assert recall_tie_aware(found, order, db, queries, similarity=name) == 1.0


@pytest.mark.parametrize("name", ["dot", "euclidean"])
def test_a_tree_index_and_the_tuner_reach_their_target_in_the_models_terms(clustered, name):
    db, queries = clustered
    params = IndexParams(kind=TREE_AH, num_leaves=50, num_leaves_to_search=15, training_sample_size=3000,
                         reorder_k=100)
    searcher = build_with_params(db, params, k=10, similarity=name)
    figures = measure(searcher, db, queries, k=10, repeats=1, max_single_queries=5, similarity=name)
    assert figures["recall_at_10_vs_exact"] >= 0.9
    # The other similarity's exact answer is not what this index returns: the measure is its own.
    other = "dot" if name == "euclidean" else "euclidean"
    found, _ = search(searcher, queries, 10, len(db), similarity=name)
    assert recall_tie_aware(found, exact_topk(db, queries, 10, similarity=other)[0], db, queries,
                            similarity=other) < 0.9
    result = tune(db, queries, IndexConfig(brute_force_below=0, target_recall=0.9, training_sample_size=3000),
                  repeats=1, single_queries=5, timing_seconds=0.0, include_brute_force=False, similarity=name)
    assert result.met_target and result.chosen.kind == TREE_AH and result.chosen_point.recall_at_10 >= 0.9
