"""The pre-ranker's score (train.cascade, trainer/prerank.py), defined once for evaluation and serving.

IntTower's fine-grained early interaction (Li et al. 2022), as ColBERT scores a query against a
document: the query side is H unit "head" vectors, the item side M unit vectors, and

    score(q, i) = scale * sum_h max_m <q_h, i_m> + bias + retrieval_weight * retrieval(q, i)

so every head picks the item vector it matches best. ``retrieval(q, i)`` is the retrieval model's
own score of the candidate (what the index returned; ``train.cascade.use_retrieval_score``): the
pre-ranker learns a correction to the retrieval order rather than a new order from scratch, which
is what lets a small pre-ranker improve on the retrieval model instead of re-learning it. The item side is precomputed per item (the
embed stage), the query side once per request; re-scoring N candidates costs N x H x M x d
multiply-adds. The exported towers emit the vectors flattened ([B, H * d] and [B, M * d]); the
trainer's TensorFlow loss uses the same formula (tests/unit/trainer/test_prerank.py checks the two
agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class InteractionShape:
    """The block's sizes and its learned affine output (``prerank.json``)."""

    heads: int
    item_vectors: int
    head_dims: int
    scale: float = 1.0
    bias: float = 0.0
    #: Weight of the retrieval score in the output (0: the interaction alone).
    retrieval_weight: float = 0.0

    @classmethod
    def from_dict(cls, doc: dict) -> "InteractionShape":
        return cls(int(doc["heads"]), int(doc["item_vectors"]), int(doc["head_dims"]),
                   float(doc.get("scale", 1.0)), float(doc.get("bias", 0.0)),
                   float(doc.get("retrieval_weight", 0.0)))

    def to_dict(self) -> dict:
        return {"heads": self.heads, "item_vectors": self.item_vectors, "head_dims": self.head_dims,
                "scale": self.scale, "bias": self.bias, "retrieval_weight": self.retrieval_weight}

    @property
    def query_width(self) -> int:
        return self.heads * self.head_dims

    @property
    def item_width(self) -> int:
        return self.item_vectors * self.head_dims


def interaction_scores(query: np.ndarray, candidates: np.ndarray, shape: InteractionShape,
                       retrieval_scores: Optional[np.ndarray] = None) -> np.ndarray:
    """Pre-ranker scores of each query's candidates.

    Args:
        query: float32 [Q, H * d], the pre-ranker query tower's output.
        candidates: float32 [Q, N, M * d], each query's N candidates' item vectors.
        retrieval_scores: float [Q, N], the retrieval model's scores of the same candidates;
            required when ``shape.retrieval_weight`` is not 0.
    Returns:
        float32 [Q, N] logits (higher = better; sigmoid gives the click probability).
    """
    query = np.asarray(query, dtype=np.float32)
    candidates = np.asarray(candidates, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != shape.query_width:
        raise ValueError(f"pre-ranker query vectors must be [Q, {shape.query_width}], got {query.shape}")
    if candidates.ndim != 3 or candidates.shape[0] != query.shape[0] or candidates.shape[2] != shape.item_width:
        raise ValueError(f"pre-ranker candidates must be [{query.shape[0]}, N, {shape.item_width}], "
                         f"got {candidates.shape}")
    q, n = candidates.shape[:2]
    heads = query.reshape(q, shape.heads, shape.head_dims)
    items = candidates.reshape(q, n, shape.item_vectors, shape.head_dims)
    # [Q, N, H, M]: every head against every item vector of every candidate.
    sims = np.einsum("qhd,qnmd->qnhm", heads, items, optimize=True)
    out = shape.scale * sims.max(axis=3).sum(axis=2) + shape.bias
    if shape.retrieval_weight:
        if retrieval_scores is None:
            raise ValueError("this pre-ranker adds the retrieval score: pass the candidates' retrieval scores")
        retrieval_scores = np.asarray(retrieval_scores, dtype=np.float32)
        if retrieval_scores.shape != (q, n):
            raise ValueError(f"retrieval scores must be [{q}, {n}], got {retrieval_scores.shape}")
        out = out + shape.retrieval_weight * retrieval_scores
    return out.astype(np.float32)


def rerank(query: np.ndarray, item_vectors: np.ndarray, candidates: np.ndarray, shape: InteractionShape,
           retrieval_scores: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each query's candidate positions by the pre-ranker, best first.

    Args:
        query: float32 [Q, H * d]; item_vectors: float32 [N_items, M * d] (row = catalog position);
        candidates: int [Q, N] catalog positions (the retrieval's top-N, best first);
        retrieval_scores: float [Q, N], their retrieval scores (see :func:`interaction_scores`).
    Returns:
        (positions int64 [Q, N], scores float32 [Q, N]); ties keep the retrieval order.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = interaction_scores(query, item_vectors[candidates], shape, retrieval_scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(scores, order, axis=1)
