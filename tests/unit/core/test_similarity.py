"""core.similarity: every score against its definition, pair by pair in plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core import similarity


def _definition(q, i, name) -> float:
    dot = sum(a * b for a, b in zip(q, i))
    if name in ("cosine", "dot"):
        return dot
    return -sum((a - b) ** 2 for a, b in zip(q, i))


@pytest.fixture
def vectors():
    rng = np.random.default_rng(3)
    return rng.normal(size=(4, 5)) * 2.0, rng.normal(size=(7, 5)) * 3.0


@pytest.mark.parametrize("name", similarity.SIMILARITIES)
def test_scores_follow_the_definition(vectors, name):
    queries, items = vectors
    got = similarity.scores(queries, items, name, dtype=np.float64)
    want = [[_definition(q, i, name) for i in items] for q in queries]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    gathered = similarity.gathered_scores(queries, items[np.array([[6, 0], [1, 1], [2, 5], [3, 4]])], name)
    np.testing.assert_allclose(gathered, np.take_along_axis(got, np.array([[6, 0], [1, 1], [2, 5], [3, 4]]), 1),
                               rtol=1e-12)


@pytest.mark.parametrize("name", similarity.SIMILARITIES)
def test_ranking_terms_order_items_as_the_scores_do(vectors, name):
    queries, items = vectors
    scaled, bias = similarity.ranking_terms(queries, items, name)
    ranked = scaled.astype(np.float64) @ items.T + (0.0 if bias is None else bias)
    gap = similarity.scores(queries, items, name, dtype=np.float64) - ranked
    # The same for every item of a row (-||q||^2 for euclidean, 0 otherwise): the same order.
    np.testing.assert_allclose(gap, np.repeat(gap[:, :1], items.shape[0], axis=1),
                               atol=1e-4)
    if name == "euclidean":
        np.testing.assert_allclose(gap[:, 0], -(queries ** 2).sum(axis=1), rtol=1e-5)
    else:
        assert bias is None and np.abs(gap).max() < 1e-4


def test_searcher_values_become_higher_is_better_scores():
    distances = np.array([[0.5, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(similarity.scores_from_searcher(distances, "euclidean"), -distances)
    np.testing.assert_array_equal(similarity.scores_from_searcher(distances, "dot"), distances)
    assert [similarity.scann_distance_measure(n) for n in similarity.SIMILARITIES] == \
        ["dot_product", "dot_product", "squared_l2"]
    assert [similarity.unit_rows(n) for n in similarity.SIMILARITIES] == [True, False, False]


def test_an_unknown_similarity_names_the_choices():
    with pytest.raises(ValueError, match=r"one of \['cosine', 'dot', 'euclidean'\], got 'l1'"):
        similarity.scores(np.ones((1, 2)), np.ones((1, 2)), "l1")
    assert math.isfinite(similarity.scores(np.ones((1, 2)), np.ones((1, 2)), "dot")[0, 0])
