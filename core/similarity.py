"""How a query vector scores an item vector: the one definition training, the index, evaluation
and serving share (``train.similarity``).

- ``cosine`` (the default): both towers emit unit rows; score = q . i, in [-1, 1].
- ``dot``: unnormalised rows; score = q . i (an item's norm acts as a learned popularity).
- ``euclidean``: unnormalised rows; score = -||q - i||^2 (closer is better).

Every score is "higher is better". For ranking the items of one query, euclidean equals
``2 q . i - ||i||^2`` (``-||q||^2`` is the same for every item of the row), so it is a dot product
of a scaled query plus a per-item bias (:func:`ranking_terms`): block-wise evaluation and the
training loss use that form; the ScaNN index uses ScaNN's own ``squared_l2`` distance. Numpy
only (no TensorFlow): the trainer's TensorFlow form is ``trainer.similarity``.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

Similarity = Literal["cosine", "dot", "euclidean"]
SIMILARITIES: tuple[str, ...] = ("cosine", "dot", "euclidean")
DEFAULT_SIMILARITY = "cosine"

#: ScaNN's distance measure per similarity. ScaNN returns dot products (higher is better) for
#: ``dot_product`` and squared distances (lower is better) for ``squared_l2``.
_SCANN_DISTANCE = {"cosine": "dot_product", "dot": "dot_product", "euclidean": "squared_l2"}


def check(similarity: str) -> str:
    """``similarity`` when it is one of :data:`SIMILARITIES`, else ValueError naming the choices."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {similarity!r}")
    return similarity


def unit_rows(similarity: str) -> bool:
    """Whether the towers L2-normalise their outputs (cosine only)."""
    return check(similarity) == "cosine"


def scann_distance_measure(similarity: str) -> str:
    """The ScaNN builder's ``distance_measure`` for ``similarity``."""
    return _SCANN_DISTANCE[check(similarity)]


def scores_from_searcher(values: np.ndarray, similarity: str) -> np.ndarray:
    """ScaNN's returned values [Q, k] -> scores (higher is better): squared distances are negated."""
    values = np.asarray(values, dtype=np.float32)
    return -values if scann_distance_measure(similarity) == "squared_l2" else values


def scores(queries: np.ndarray, items: np.ndarray, similarity: str, dtype=np.float32) -> np.ndarray:
    """[Q, D] x [N, D] -> [Q, N] scores in ``dtype``: q . i, or -||q - i||^2 for euclidean."""
    queries = np.asarray(queries, dtype=dtype)
    items = np.asarray(items, dtype=dtype)
    dots = queries @ items.T
    if check(similarity) != "euclidean":
        return dots
    squared = np.einsum("qd,qd->q", queries, queries)[:, None] + np.einsum("nd,nd->n", items, items)[None, :]
    return 2.0 * dots - squared


def gathered_scores(queries: np.ndarray, rows: np.ndarray, similarity: str) -> np.ndarray:
    """float64 [Q, m]: each query [Q, D] against its own rows [Q, m, D] (e.g. its retrieved items)."""
    rows = np.asarray(rows, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    if check(similarity) != "euclidean":
        return np.einsum("qkd,qd->qk", rows, queries)
    return -np.einsum("qkd,qkd->qk", rows - queries[:, None, :], rows - queries[:, None, :])


def ranking_terms(queries: np.ndarray, items: np.ndarray, similarity: str
                  ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(queries' float32 [Q, D], item_bias float32 [N] or None) with ``queries' @ items.T + item_bias``
    ordering every query's items as :func:`scores` does (equal up to a per-query constant):
    euclidean gives ``(2 q, -||i||^2)``, the others ``(q, None)``."""
    queries = np.asarray(queries, dtype=np.float32)
    if check(similarity) != "euclidean":
        return queries, None
    items = np.asarray(items, dtype=np.float32)
    return 2.0 * queries, -np.einsum("nd,nd->n", items, items)
