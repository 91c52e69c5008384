"""core.prerank: the cascade's score, defined once for evaluation and serving."""

from __future__ import annotations

import numpy as np
import pytest

from core.prerank import InteractionShape, interaction_scores, rerank


def _loop_scores(query, candidates, shape, retrieval=None):
    """The formula written out term by term: scale * sum_h max_m <q_h, i_m> + bias + w * r."""
    out = np.zeros(candidates.shape[:2])
    for q in range(candidates.shape[0]):
        heads = query[q].reshape(shape.heads, shape.head_dims)
        for n in range(candidates.shape[1]):
            vectors = candidates[q, n].reshape(shape.item_vectors, shape.head_dims)
            total = sum(max(float(h @ v) for v in vectors) for h in heads)
            out[q, n] = shape.scale * total + shape.bias
            if retrieval is not None:
                out[q, n] += shape.retrieval_weight * retrieval[q, n]
    return out


def test_scores_are_the_sum_over_heads_of_the_best_matching_item_vector():
    rng = np.random.default_rng(0)
    shape = InteractionShape(heads=3, item_vectors=2, head_dims=4, scale=0.7, bias=-0.2)
    query = rng.normal(size=(5, 12)).astype(np.float32)
    candidates = rng.normal(size=(5, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(interaction_scores(query, candidates, shape), _loop_scores(query, candidates, shape),
                               rtol=1e-5, atol=1e-5)


def test_the_retrieval_term_is_added_with_its_weight_and_required_when_weighted():
    rng = np.random.default_rng(1)
    shape = InteractionShape(2, 3, 4, scale=0.5, bias=0.1, retrieval_weight=4.0)
    query = rng.normal(size=(3, 8)).astype(np.float32)
    candidates = rng.normal(size=(3, 5, 12)).astype(np.float32)
    retrieval = rng.normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(interaction_scores(query, candidates, shape, retrieval),
                               _loop_scores(query, candidates, shape, retrieval), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="retrieval scores"):
        interaction_scores(query, candidates, shape)
    with pytest.raises(ValueError, match=r"must be \[3, 5\]"):
        interaction_scores(query, candidates, shape, retrieval[:, :4])


@pytest.mark.parametrize("query_shape, candidate_shape, message", [
    ((3, 7), (3, 5, 12), r"query vectors must be \[Q, 8\]"),
    ((3, 8), (3, 5, 11), r"candidates must be \[3, N, 12\]"),
    ((3, 8), (2, 5, 12), r"candidates must be \[3, N, 12\]"),
])
def test_vectors_of_another_width_are_a_clear_error(query_shape, candidate_shape, message):
    shape = InteractionShape(2, 3, 4)
    with pytest.raises(ValueError, match=message):
        interaction_scores(np.zeros(query_shape), np.zeros(candidate_shape), shape)


def test_rerank_orders_candidates_by_score_and_keeps_the_retrieval_order_on_ties():
    shape = InteractionShape(1, 1, 2, retrieval_weight=1.0)
    item_vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    candidates = np.array([[1, 2, 0, 3]])
    # Interaction: 0, 1, 1, 0.6; retrieval term 0 for all -> 2 before 0 (tie, retrieval order), then 3, 1.
    positions, scores = rerank(query, item_vectors, candidates, shape, np.zeros((1, 4)))
    assert positions.tolist() == [[2, 0, 3, 1]]
    np.testing.assert_allclose(scores, [[1.0, 1.0, 0.6, 0.0]], atol=1e-6)
    # A strong enough retrieval score for candidate 1 overturns the interaction.
    positions, _ = rerank(query, item_vectors, candidates, shape, np.array([[2.0, 0.0, 0.0, 0.0]]))
    assert positions.tolist() == [[1, 2, 0, 3]]


def test_shape_round_trips_through_its_document_and_older_documents_have_no_retrieval_term():
    shape = InteractionShape(4, 2, 16, scale=0.3, bias=0.1, retrieval_weight=12.5)
    assert InteractionShape.from_dict(shape.to_dict()) == shape
    old = InteractionShape.from_dict({"heads": 4, "item_vectors": 2, "head_dims": 16})
    assert (old.scale, old.bias, old.retrieval_weight) == (1.0, 0.0, 0.0)
    assert (shape.query_width, shape.item_width) == (64, 32)
