"""Full-catalog retrieval metrics in pure numpy.

Protocol: each query scores every catalog item; ``masked`` positions (e.g. items the
query already interacted with) are excluded from the ranking; the top K of the rest
are compared with the ``relevant`` (held-out) positions. Every metric is derived from
the 1-based rank of each relevant (query, item) pair in its query's ranking
(:class:`PairRanks`), so the averaging unit is a choice made at the end (``per``):

- ``per="query"`` (default):
  recall@K = mean over queries of |topK ∩ relevant| / |relevant|;
  ndcg@K (binary gains) = DCG@K / IDCG@K with DCG = sum over hit ranks r of
  1 / log2(r + 1) and IDCG over min(|relevant|, K) hits, averaged over queries.
- ``per="interaction"``: every relevant (query, item) pair is one trial;
  recall@K = mean over pairs of [rank <= K] (TFRS ``FactorizedTopK``'s
  ``top_K_categorical_accuracy``); ndcg@K = mean over pairs of 1 / log2(rank + 1)
  when rank <= K, else 0. A query's other relevant items are not removed from the
  ranking (they may occupy top slots), exactly as in the TFRS tutorial.

The two differ whenever queries have different numbers of relevant items: per query,
each query weighs 1; per interaction, a query weighs its number of relevant items.

A relevant position that is also masked can never be retrieved (it still counts in
|relevant| and as a trial); callers decide what to mask.

Item slices (:func:`item_slices`, :func:`slice_recall`) split the catalog by train
popularity into head / torso / tail / cold and report the hit rate at K of the
relevant pairs whose item falls in each slice.

Memory: scores are computed and ranked ``MAX_BLOCK_FLOATS // N`` queries at a time and
only the relevant pairs' ranks are kept, so scoring Q queries holds O(block x N + pairs),
never Q x N.

Sampled queries (:func:`query_contributions`, :func:`ratio_interval`): every metric is
``sum(values) / sum(weights)`` over queries, with one value and one weight per query, so
a uniform sample of queries (drawn without replacement, :func:`core.sampling.sample_keys`)
estimates the all-query metric by the same ratio over the sample, and its 95% interval
follows from the per-query values (normal approximation of the ratio estimator, with the
finite population correction: the interval is about which queries were drawn, and has
zero width when every query was scored). A paired difference (two models on the same
sampled queries) is the same ratio over the per-query differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


#: Bound on the dense score block held at once (floats): 16M float32 = 64 MB
#: (argpartition adds an int64 index array of the same shape: 192 MB per block in all).
MAX_BLOCK_FLOATS = 16_000_000

#: Two-sided 95% quantile of the standard normal distribution.
Z95 = 1.959963984540054

PER_CHOICES = ("query", "interaction")

#: Slice names in popularity order; ``cold`` = items with no train positive.
SLICES = ("head", "torso", "tail", "cold")
#: Cumulative share (percent of train positives) that closes the head and the torso:
#: head = first 50%, torso = the next 30%. Integers so the boundary test is exact.
HEAD_PERCENT, TORSO_PERCENT = 50, 30


@dataclass
class PairRanks:
    """Ranks of the P relevant (query, item) pairs of Q queries over N catalog items.

    ``query`` int64 [P]: query row of each pair; ``item`` int64 [P]: catalog position;
    ``rank`` int64 [P]: 1-based rank in the query's (masked) ranking, 0 when the item is
    masked or ranked below ``max_k`` (a miss at every cut-off <= ``max_k``).
    ``n_queries`` = Q, ``n_items`` = N.
    """

    query: np.ndarray
    item: np.ndarray
    rank: np.ndarray
    n_queries: int
    n_items: int
    max_k: int

    def __len__(self) -> int:
        return int(self.rank.shape[0])


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


def _check_per(per: str) -> None:
    if per not in PER_CHOICES:
        raise ValueError(f"per must be one of {PER_CHOICES}, got {per!r}")


def _block_ranks(cost: np.ndarray, relevant: Sequence, masked: Sequence, max_k: int,
                 row_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows [p], item positions [p], ranks [p]) of one block of q queries.

    Args:
        cost: float32 [q, N], the NEGATED scores (lower = better), owned by this call: it is
            masked in place. Taking the block negated and owned spares a copy and a negation
            of q x N floats per block (measured: about half of the ranking time at N = 100k).
    """
    q, n = cost.shape
    for row, pos in enumerate(masked):
        if len(pos):
            cost[row, np.asarray(pos, dtype=np.int64)] = np.inf
    max_k = min(max_k, n)
    # Top max_k by score, in descending order: argpartition is O(N), the sort O(K log K).
    if max_k < n:
        top = np.argpartition(cost, max_k - 1, axis=1)[:, :max_k]
    else:
        top = np.tile(np.arange(n), (q, 1))
    order = np.argsort(np.take_along_axis(cost, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    rows, items, ranks = [], [], []
    for row in range(q):
        rel = np.unique(np.asarray(relevant[row], dtype=np.int64))
        if rel.size == 0:
            raise ValueError(f"query {row_offset + row}: relevant is empty (drop such queries before scoring)")
        if rel.min() < 0 or rel.max() >= n:
            raise ValueError(f"query {row_offset + row}: relevant position out of range [0, {n})")
        rank = np.zeros(rel.size, dtype=np.int64)
        at, which = np.nonzero(top[row][:, None] == rel[None, :])
        rank[which] = at + 1
        if len(masked[row]):
            # A masked item can still sit in the top when K exceeds the unmasked items
            # (at -inf, after all of them); it is never a hit.
            rank[np.isin(rel, np.asarray(masked[row], dtype=np.int64))] = 0
        rows.append(np.full(rel.size, row_offset + row, dtype=np.int64))
        items.append(rel)
        ranks.append(rank)
    return np.concatenate(rows), np.concatenate(items), np.concatenate(ranks)


def _needed_k(ks: Sequence[int], ndcg_k: int) -> int:
    return max(max(int(k) for k in ks), int(ndcg_k))


def rank_relevant(scores, relevant: Sequence, masked: Sequence, max_k: int) -> PairRanks:
    """:class:`PairRanks` of a dense score matrix.

    Args:
        scores: float32 [Q, N], higher = better.
        relevant: Q int arrays of catalog positions (each non-empty; duplicates count once).
        masked: Q int arrays of positions excluded from the ranking.
        max_k: deepest cut-off any metric will use (ranks beyond it are stored as 0).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [Q, N], got shape {scores.shape}")
    q, n = scores.shape
    _check_inputs(q, relevant, masked)
    if q == 0 or n == 0:
        raise ValueError(f"need at least one query and one item, got scores of shape {scores.shape}")
    return _ranks_by_block(lambda start, stop: -scores[start:stop].astype(np.float32, copy=False),
                           q, n, relevant, masked, max_k)


def embedding_rank_relevant(query_embeddings, item_embeddings, relevant: Sequence, masked: Sequence,
                            max_k: int, item_bias=None, similarity: str = "cosine") -> PairRanks:
    """:func:`rank_relevant` with scores = ``similarity``'s score of query [Q, D] and item [N, D]
    (core/similarity.py: q · i, or -||q - i||^2 for euclidean) (+ item_bias [N]), computed block
    by block so Q x N never has to fit in memory at once.

    ``query_embeddings`` may be ``None`` with ``item_bias`` given: every query then
    scores items by ``item_bias`` alone (the popularity baseline).
    """
    item_bias = None if item_bias is None else np.asarray(item_bias, dtype=np.float32)
    if query_embeddings is not None:
        from core.similarity import ranking_terms

        # Euclidean ranks as 2 q · i - ||i||^2: a dot product plus a per-item bias.
        query_embeddings, extra_bias = ranking_terms(query_embeddings, item_embeddings, similarity)
        if extra_bias is not None:
            item_bias = extra_bias if item_bias is None else item_bias + extra_bias
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
    if q == 0 or n == 0:
        raise ValueError(f"need at least one query and one item, got Q={q}, N={n}")

    # Negated once here, so every block comes out of the product already as a fresh cost
    # array (-(a . b) = a . (-b) exactly: the same ranks as negating the scores).
    neg_bias = None if item_bias is None else -item_bias
    neg_items = None if query_embeddings is None else -item_embeddings

    def block(start: int, stop: int) -> np.ndarray:
        if query_embeddings is None:
            return np.repeat(neg_bias[None, :], stop - start, axis=0)
        cost = query_embeddings[start:stop] @ neg_items.T
        if neg_bias is not None:
            cost -= item_bias
        return cost

    return _ranks_by_block(block, q, n, relevant, masked, max_k)


def _ranks_by_block(block, q: int, n: int, relevant: Sequence, masked: Sequence, max_k: int) -> PairRanks:
    """Rank the relevant pairs of ``block(start, stop)`` rows, ``_chunk_rows(n)`` queries at a time.

    ``block`` returns a fresh float32 [stop - start, N] array of negated scores (see
    :func:`_block_ranks`); only one block is alive at a time.
    """
    if int(max_k) < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    step = _chunk_rows(n)
    parts = [_block_ranks(block(start, min(start + step, q)), relevant[start:start + step],
                          masked[start:start + step], int(max_k), start)
             for start in range(0, q, step)]
    rows, items, ranks = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return PairRanks(query=rows, item=items, rank=ranks, n_queries=q, n_items=n, max_k=min(int(max_k), n))


def query_contributions(ranks: PairRanks, ks: Sequence[int] = (10, 50, 100), ndcg_k: int = 10,
                        per: str = "query") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each query's share of every metric: metric = sum(values) / sum(weights).

    Returns:
        (``{"recall_at_10": float64 [Q], ..., "ndcg_at_10": float64 [Q]}``, weights float64 [Q]).
        ``per="query"``: values = the query's recall@K / nDCG@K, weights = 1 (a plain mean);
        ``per="interaction"``: values = the query's hits at K / summed pair gains, weights =
        its number of relevant pairs (a mean over pairs, grouped by query).
    Raises:
        ValueError: a cut-off deeper than the ranks were computed for, or an unknown ``per``.
    """
    _check_ks(ks, ndcg_k)
    _check_per(per)
    needed = min(_needed_k(ks, ndcg_k), ranks.n_items)
    if needed > ranks.max_k:
        raise ValueError(f"ranks were computed to depth {ranks.max_k}, metrics need {needed}")
    rank = ranks.rank
    found = rank > 0
    kk = int(ndcg_k)
    gain = np.where(found & (rank <= kk), 1.0 / np.log2(np.maximum(rank, 1) + 1.0), 0.0)
    n_rel = np.bincount(ranks.query, minlength=ranks.n_queries).astype(np.float64)
    hits = {f"recall_at_{k}": np.bincount(ranks.query, weights=found & (rank <= int(k)),
                                          minlength=ranks.n_queries) for k in ks}
    dcg = np.bincount(ranks.query, weights=gain, minlength=ranks.n_queries)
    if per == "interaction":
        return {**hits, f"ndcg_at_{ndcg_k}": dcg}, n_rel
    discounts = 1.0 / np.log2(np.arange(2, min(kk, ranks.n_items) + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_rel, len(discounts)).astype(np.int64) - 1]
    values = {name: h / n_rel for name, h in hits.items()}
    values[f"ndcg_at_{ndcg_k}"] = dcg / ideal
    return values, np.ones(ranks.n_queries, dtype=np.float64)


def metrics_from_ranks(ranks: PairRanks, ks: Sequence[int] = (10, 50, 100), ndcg_k: int = 10,
                       per: str = "query") -> dict[str, float]:
    """Recall@K for each K in ``ks`` and nDCG@``ndcg_k`` from pair ranks (see the module doc).

    Returns:
        ``{"recall_at_10": float, ..., "ndcg_at_10": float}``.
    Raises:
        ValueError: a cut-off deeper than the ranks were computed for, or an unknown ``per``.
    """
    return estimates(*query_contributions(ranks, ks, ndcg_k, per))


def ratio_estimate(values, weights) -> float:
    """sum(values) / sum(weights): a metric from its per-query contributions [Q]."""
    return float(np.sum(values) / np.sum(weights))


def estimates(values: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, float]:
    """``{metric: float}`` from :func:`query_contributions`' (values, weights)."""
    return {name: ratio_estimate(v, weights) for name, v in values.items()}


def ratio_interval(values, weights, n_population: int, bounds: tuple[float, float] = (0.0, 1.0),
                   z: float = Z95) -> list[float]:
    """Two-sided interval (95% by default) of the all-query ratio sum(v) / sum(w) from a sample.

    The n queries given are a uniform sample without replacement of ``n_population``
    queries. Normal approximation of the ratio estimator R = sum(v) / sum(w) (Cochran,
    Sampling Techniques, 6.3; with w = 1 it is the mean's usual s / sqrt(n)):
    var(R) = (1 - n / n_pop) * sum((v - R w)^2) / (n (n - 1) mean(w)^2), the first factor
    being the finite population correction, so all queries scored (n = n_pop) gives the
    zero-width interval [R, R]. Clipped to ``bounds`` (the metric's range).

    A sample without any spread (every sampled query at the same per-weight value c, e.g.
    a baseline that hit nothing, or two models that agree on every sampled query) says
    nothing about the spread, and the formula would give [c, c]. Then the rule of three
    applies instead: at 95%, at most a share 3 / n of the queries differ from c, each by
    at most the distance to a bound, so the interval is [c - (c - lo) 3/n, c + (hi - c) 3/n]
    (the whole range for n <= 3). The normal approximation needs a few dozen sampled
    queries away from the common value; for rarer events it is too narrow.

    Args:
        values, weights: float [n] per-query contributions (:func:`query_contributions`);
            for a paired difference, values = model A's minus model B's, same weights.
        n_population: queries the sample was drawn from (>= n).
    Returns:
        ``[low, high]`` (floats).
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    n = values.shape[0]
    if n == 0 or weights.shape != values.shape:
        raise ValueError(f"need matching non-empty values and weights, got {values.shape} and {weights.shape}")
    if n_population < n:
        raise ValueError(f"the sample has {n} queries, more than the population's {n_population}")
    estimate = ratio_estimate(values, weights)
    low, high = float(bounds[0]), float(bounds[1])
    if n == n_population:
        return [estimate, estimate]
    residual = values - estimate * weights
    # Relative to the values' scale, so a ratio like 1/3 (never exact in floats) still counts as no spread.
    if np.all(np.abs(residual) <= 1e-12 * max(1.0, float(np.abs(values).max()))):
        share = min(1.0, 3.0 / n)  # rule of three (see the docstring)
        return [max(low, estimate - (estimate - low) * share), min(high, estimate + (high - estimate) * share)]
    variance = (1.0 - n / n_population) * float(residual @ residual) / (n * (n - 1) * weights.mean() ** 2)
    half = z * variance ** 0.5
    return [max(low, estimate - half), min(high, estimate + half)]


def retrieval_metrics(scores, relevant: Sequence, masked: Sequence, ks: Sequence[int] = (10, 50, 100),
                      ndcg_k: int = 10, per: str = "query") -> dict[str, float]:
    """Recall@K for each K in ``ks`` and nDCG@``ndcg_k``, averaged ``per`` query or interaction.

    Args:
        scores: float32 [Q, N], higher = better.
        relevant: Q int arrays of catalog positions (each non-empty).
        masked: Q int arrays of positions excluded from the ranking.
        ks: cut-offs; K > N is treated as N.
        ndcg_k: nDCG cut-off.
        per: ``"query"`` or ``"interaction"`` (see the module doc).
    Returns:
        ``{"recall_at_10": float, ..., "ndcg_at_10": float}``.
    """
    _check_ks(ks, ndcg_k)
    _check_per(per)
    ranks = rank_relevant(scores, relevant, masked, _needed_k(ks, ndcg_k))
    return metrics_from_ranks(ranks, ks, ndcg_k, per)


def embedding_retrieval_metrics(query_embeddings, item_embeddings, relevant: Sequence, masked: Sequence,
                                ks: Sequence[int] = (10, 50, 100), ndcg_k: int = 10,
                                item_bias=None, per: str = "query", similarity: str = "cosine") -> dict[str, float]:
    """:func:`retrieval_metrics` with scores = ``similarity``'s (:func:`embedding_rank_relevant`)
    (+ item_bias [N]), computed block by block so Q x N never has to fit in memory at once.

    ``query_embeddings`` may be ``None`` with ``item_bias`` given: every query then
    scores items by ``item_bias`` alone (the popularity baseline).
    """
    _check_ks(ks, ndcg_k)
    _check_per(per)
    ranks = embedding_rank_relevant(query_embeddings, item_embeddings, relevant, masked,
                                    _needed_k(ks, ndcg_k), item_bias=item_bias, similarity=similarity)
    return metrics_from_ranks(ranks, ks, ndcg_k, per)


# --------------------------------------------------------------------------- sampled queries


# --------------------------------------------------------------------------- candidate lists (the cascade)


def top_positions(query_embeddings, item_embeddings, masked: Sequence, n: int, similarity: str = "cosine"
                  ) -> np.ndarray:
    """Each query's top ``n`` catalog positions by ``similarity`` with its ``masked`` ones left out:
    int64 [Q, n'] (n' = min(n, N)), best first, computed block by block (Q x N never at once).

    A query with fewer than n' unmasked items has its masked ones at the end (ranked last, as
    :func:`_block_ranks` ranks them). This is exact retrieval's candidate list, which the cascade's
    pre-ranker re-orders (core/prerank.py).
    """
    from core.similarity import ranking_terms

    queries, item_bias = ranking_terms(query_embeddings, item_embeddings, similarity)
    items = np.asarray(item_embeddings, dtype=np.float32)
    q, n_items = queries.shape[0], items.shape[0]
    if len(masked) != q:
        raise ValueError(f"masked has {len(masked)} entries, queries have {q} rows")
    n = min(int(n), n_items)
    if n < 1:
        raise ValueError(f"n must be >= 1 and the catalog non-empty, got n={n}, N={n_items}")
    step = _chunk_rows(n_items)
    out = np.zeros((q, n), dtype=np.int64)
    for start in range(0, q, step):
        cost = queries[start:start + step] @ -items.T
        if item_bias is not None:
            cost -= item_bias
        for row, pos in enumerate(masked[start:start + step]):
            if len(pos):
                cost[row, np.asarray(pos, dtype=np.int64)] = np.inf
        top = np.argpartition(cost, n - 1, axis=1)[:, :n] if n < n_items else np.tile(np.arange(n_items),
                                                                                       (len(cost), 1))
        order = np.argsort(np.take_along_axis(cost, top, axis=1), axis=1, kind="stable")
        out[start:start + len(cost)] = np.take_along_axis(top, order, axis=1)
    return out


def ranks_from_lists(lists: np.ndarray, relevant: Sequence, masked: Sequence, n_items: int, max_k: int
                     ) -> PairRanks:
    """:class:`PairRanks` of ranked candidate lists (int [Q, L] catalog positions, best first), e.g. a
    cascade's re-ordered top-N: a relevant item's rank is its place in the list (1-based), 0 when it
    is not in the first ``max_k``, or is masked."""
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2:
        raise ValueError(f"lists must be [Q, L], got shape {lists.shape}")
    _check_inputs(lists.shape[0], relevant, masked)
    max_k = min(int(max_k), lists.shape[1])
    rows, items, ranks = [], [], []
    for row in range(lists.shape[0]):
        rel = np.unique(np.asarray(relevant[row], dtype=np.int64))
        if rel.size == 0:
            raise ValueError(f"query {row}: relevant is empty (drop such queries before scoring)")
        rank = np.zeros(rel.size, dtype=np.int64)
        at, which = np.nonzero(lists[row, :max_k][:, None] == rel[None, :])
        rank[which] = at + 1
        if len(masked[row]):
            rank[np.isin(rel, np.asarray(masked[row], dtype=np.int64))] = 0
        rows.append(np.full(rel.size, row, dtype=np.int64))
        items.append(rel)
        ranks.append(rank)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return PairRanks(query=cat(rows), item=cat(items), rank=cat(ranks), n_queries=lists.shape[0],
                     n_items=int(n_items), max_k=max_k)


# --------------------------------------------------------------------------- item slices


def item_slices(counts) -> np.ndarray:
    """Slice name per item from its train positive count.

    Items are taken by count descending (ties in the given order, so pass counts in a
    deterministic order such as ``vocab/item_id.tsv``'s). An item is ``head`` while the
    positives of the items before it are < 50% of all train positives (so the item that
    crosses 50% is head), ``torso`` while they are < 80%, else ``tail``; an item with
    count 0 is always ``cold``.

    Args:
        counts: int [N] train positives per item (>= 0).
    Returns:
        str array [N] with values in :data:`SLICES`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D [N], got shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be >= 0")
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")
    before = np.concatenate([[0], np.cumsum(counts[order])[:-1]]) if counts.size else counts
    labels = np.full(counts.size, "tail", dtype=object)
    sorted_labels = np.where(before * 100 < HEAD_PERCENT * total, "head",
                             np.where(before * 100 < (HEAD_PERCENT + TORSO_PERCENT) * total, "torso", "tail"))
    labels[order] = sorted_labels
    labels[counts == 0] = "cold"
    return labels.astype(str)


def slice_recall(ranks: PairRanks, slices: np.ndarray, k: int = 10) -> dict[str, dict]:
    """Hit rate at ``k`` of the relevant pairs whose item lies in each slice.

    Args:
        ranks: pair ranks computed to depth >= ``k`` (or over the whole catalog).
        slices: str [N] slice name per catalog position (:func:`item_slices`).
    Returns:
        ``{slice: {"recall_at_<k>": float | None, "n": int}}`` for every name in
        :data:`SLICES`; the recall is None when the slice has no relevant pair.
    """
    slices = np.asarray(slices)
    if slices.shape != (ranks.n_items,):
        raise ValueError(f"slices must be [N={ranks.n_items}], got shape {slices.shape}")
    if min(int(k), ranks.n_items) > ranks.max_k:
        raise ValueError(f"ranks were computed to depth {ranks.max_k}, slices need {k}")
    hit = (ranks.rank > 0) & (ranks.rank <= int(k))
    pair_slice = slices[ranks.item]
    out: dict[str, dict] = {}
    for name in SLICES:
        inside = pair_slice == name
        n = int(inside.sum())
        out[name] = {f"recall_at_{k}": float(hit[inside].mean()) if n else None, "n": n}
    return out


def _check_ks(ks: Sequence[int], ndcg_k: int) -> None:
    if not len(ks) or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be non-empty positive ints, got {list(ks)}")
    if ndcg_k < 1:
        raise ValueError(f"ndcg_k must be >= 1, got {ndcg_k}")


def _chunk_rows(n_items: int) -> int:
    return max(1, MAX_BLOCK_FLOATS // max(n_items, 1))
