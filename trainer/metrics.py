"""Full-catalog retrieval metrics in pure numpy.

Protocol: each query scores every catalog item; ``masked`` positions (e.g. items the
query already interacted with) are excluded from the ranking; the top K of the rest
are compared with the ``relevant`` (held-out) positions.

- recall@K = mean over queries of |topK ∩ relevant| / |relevant|
- ndcg@K (binary gains) = DCG@K / IDCG@K with DCG = sum over hit ranks r (1-based)
  of 1 / log2(r + 1) and IDCG over min(|relevant|, K) hits.

A relevant position that is also masked can never be retrieved (it still counts in
|relevant|); callers decide what to mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Bound on the dense score block held at once (floats): 16M float32 = 64 MB
#: (argpartition adds an int64 index array of the same shape).
MAX_BLOCK_FLOATS = 16_000_000


def popularity_scores(counts) -> np.ndarray:
    """Popularity baseline scores: float32 [N], the train interaction counts themselves."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D [N], got shape {counts.shape}")
    return counts.astype(np.float32)


def _check_inputs(n_queries: int, relevant: Sequence, masked: Sequence) -> None:
    if len(relevant) != n_queries:
        raise ValueError(f"relevant has {len(relevant)} entries, scores have {n_queries} rows")
    if len(masked) != n_queries:
        raise ValueError(f"masked has {len(masked)} entries, scores have {n_queries} rows")


def _metric_sums(scores: np.ndarray, relevant: Sequence, masked: Sequence, ks: Sequence[int],
                 ndcg_k: int) -> dict[str, float]:
    """Per-metric sums over the rows of one score block (float32 [q, N])."""
    q, n = scores.shape
    scores = np.array(scores, dtype=np.float32, copy=True)  # masked in place below
    for row, pos in enumerate(masked):
        if len(pos):
            scores[row, np.asarray(pos, dtype=np.int64)] = -np.inf
    max_k = min(max(max(ks), ndcg_k), n)
    # Top max_k by score, in descending order: argpartition is O(N), the sort O(K log K).
    if max_k < n:
        top = np.argpartition(-scores, max_k - 1, axis=1)[:, :max_k]
    else:
        top = np.tile(np.arange(n), (q, 1))
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    # hit[r, j]: the j-th ranked item of query r is relevant and not masked.
    hits = np.zeros((q, max_k), dtype=bool)
    n_rel = np.zeros(q, dtype=np.float64)
    for row in range(q):
        rel = np.unique(np.asarray(relevant[row], dtype=np.int64))
        if rel.size == 0:
            raise ValueError(f"query {row}: relevant is empty (drop such queries before scoring)")
        if rel.min() < 0 or rel.max() >= n:
            raise ValueError(f"query {row}: relevant position out of range [0, {n})")
        n_rel[row] = rel.size
        hits[row] = np.isin(top[row], rel)
        if len(masked[row]):
            hits[row] &= ~np.isin(top[row], np.asarray(masked[row], dtype=np.int64))
    sums: dict[str, float] = {}
    for k in ks:
        sums[f"recall_at_{k}"] = float((hits[:, : min(k, n)].sum(axis=1) / n_rel).sum())
    kk = min(ndcg_k, n)
    discounts = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = (hits[:, :kk] * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_rel, kk).astype(np.int64) - 1]
    sums[f"ndcg_at_{ndcg_k}"] = float((dcg / ideal).sum())
    return sums


def retrieval_metrics(scores, relevant: Sequence, masked: Sequence, ks: Sequence[int] = (10, 50, 100),
                      ndcg_k: int = 10) -> dict[str, float]:
    """Recall@K for each K in ``ks`` and nDCG@``ndcg_k``, averaged over queries.

    Args:
        scores: float32 [Q, N], higher = better.
        relevant: Q int arrays of catalog positions (each non-empty).
        masked: Q int arrays of positions excluded from the ranking.
        ks: cut-offs; K > N is treated as N.
        ndcg_k: nDCG cut-off.
    Returns:
        ``{"recall_at_10": float, ..., "ndcg_at_10": float}``.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [Q, N], got shape {scores.shape}")
    q, n = scores.shape
    _check_inputs(q, relevant, masked)
    _check_ks(ks, ndcg_k)
    if q == 0 or n == 0:
        raise ValueError(f"need at least one query and one item, got scores of shape {scores.shape}")
    step = _chunk_rows(n)
    totals: dict[str, float] = {}
    for start in range(0, q, step):
        stop = min(start + step, q)
        part = _metric_sums(scores[start:stop], relevant[start:stop], masked[start:stop], ks, ndcg_k)
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / q for key, value in totals.items()}


def embedding_retrieval_metrics(query_embeddings, item_embeddings, relevant: Sequence, masked: Sequence,
                                ks: Sequence[int] = (10, 50, 100), ndcg_k: int = 10,
                                item_bias=None) -> dict[str, float]:
    """:func:`retrieval_metrics` with scores = query [Q, D] · item [N, D]^T (+ item_bias [N]),
    computed block by block so Q x N never has to fit in memory at once.

    ``query_embeddings`` may be ``None`` with ``item_bias`` given: every query then
    scores items by ``item_bias`` alone (the popularity baseline).
    """
    item_bias = None if item_bias is None else np.asarray(item_bias, dtype=np.float32)
    if query_embeddings is None:
        if item_bias is None:
            raise ValueError("need query_embeddings or item_bias")
        n, q = item_bias.shape[0], len(relevant)
    else:
        query_embeddings = np.asarray(query_embeddings, dtype=np.float32)
        item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
        if query_embeddings.ndim != 2 or item_embeddings.ndim != 2 \
                or query_embeddings.shape[1] != item_embeddings.shape[1]:
            raise ValueError(f"embeddings must be [Q, D] and [N, D], got {query_embeddings.shape} "
                             f"and {item_embeddings.shape}")
        q, n = query_embeddings.shape[0], item_embeddings.shape[0]
    _check_inputs(q, relevant, masked)
    _check_ks(ks, ndcg_k)
    if q == 0 or n == 0:
        raise ValueError(f"need at least one query and one item, got Q={q}, N={n}")
    step = _chunk_rows(n)
    totals: dict[str, float] = {}
    for start in range(0, q, step):
        stop = min(start + step, q)
        if query_embeddings is None:
            block = np.broadcast_to(item_bias, (stop - start, n))
        else:
            block = query_embeddings[start:stop] @ item_embeddings.T
            if item_bias is not None:
                block = block + item_bias
        part = _metric_sums(block, relevant[start:stop], masked[start:stop], ks, ndcg_k)
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / q for key, value in totals.items()}


def _check_ks(ks: Sequence[int], ndcg_k: int) -> None:
    if not len(ks) or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be non-empty positive ints, got {list(ks)}")
    if ndcg_k < 1:
        raise ValueError(f"ndcg_k must be >= 1, got {ndcg_k}")


def _chunk_rows(n_items: int) -> int:
    return max(1, MAX_BLOCK_FLOATS // max(n_items, 1))
