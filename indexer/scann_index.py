"""ScaNN searchers over item embeddings: build, save / load, exact reference, measurement.

Only the pybind API (``scann_ops_pybind``) is used, so a served index never depends on
ScaNN's custom TensorFlow ops. Every function takes the model's ``similarity``
(core/similarity.py): cosine and dot index with ScaNN's ``dot_product`` (the cosine towers emit
unit vectors), euclidean with ``squared_l2``. Scores returned here are always "higher is better"
(a squared distance comes back negated).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from core import similarity as similarities
from core.config import IndexConfig

BRUTE_FORCE = "brute_force"
TREE_AH = "tree_ah"
#: Fraction of leaves searched when the config leaves it open: ~10% keeps recall@10 high
#: on clustered embeddings while still skipping most of the catalog.
DEFAULT_LEAVES_SEARCHED_FRACTION = 0.1


def _pybind():
    from scann import scann_ops_pybind

    return scann_ops_pybind


@dataclass(frozen=True)
class IndexParams:
    """Resolved build parameters (what a tuner sweeps over).

    ``kind`` is BRUTE_FORCE or TREE_AH; the tree fields are None for brute force.
    """

    kind: str
    num_leaves: Optional[int] = None
    num_leaves_to_search: Optional[int] = None
    training_sample_size: Optional[int] = None
    reorder_k: Optional[int] = None
    anisotropic_quantization_threshold: float = 0.2
    dims_per_block: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_params(n: int, cfg: IndexConfig) -> IndexParams:
    """Fill the config's open choices for a catalog of ``n`` items.

    Exact search below ``cfg.brute_force_below``; otherwise a k-means tree with
    ~sqrt(n) leaves, ~10% of them searched, asymmetric hashing and exact re-scoring
    of the top ``reorder_k`` candidates.
    """
    if n < cfg.brute_force_below:
        return IndexParams(kind=BRUTE_FORCE)
    sample = min(n, cfg.training_sample_size)
    leaves = cfg.num_leaves or max(1, int(round(math.sqrt(n))))
    # k-means needs at least one training point per leaf.
    leaves = min(leaves, sample)
    to_search = cfg.num_leaves_to_search or max(1, int(math.ceil(leaves * DEFAULT_LEAVES_SEARCHED_FRACTION)))
    return IndexParams(kind=TREE_AH, num_leaves=leaves, num_leaves_to_search=min(to_search, leaves),
                       training_sample_size=sample, reorder_k=cfg.reorder_k)


def build_with_params(db: np.ndarray, params: IndexParams, k: int = 100, similarity: str = "cosine"):
    """Build a searcher for ``db`` float32 [N, D] with explicit parameters; ``k`` = default neighbours;
    ``similarity`` picks ScaNN's distance measure (:func:`core.similarity.scann_distance_measure`)."""
    db = _check_matrix(db, "db")
    builder = _pybind().builder(db, k, similarities.scann_distance_measure(similarity))
    if params.kind == BRUTE_FORCE:
        return builder.score_brute_force().build()
    if params.kind != TREE_AH:
        raise ValueError(f"unknown index kind {params.kind!r}; expected {BRUTE_FORCE!r} or {TREE_AH!r}")
    return (builder
            .tree(num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search,
                  training_sample_size=params.training_sample_size)
            .score_ah(params.dims_per_block,
                      anisotropic_quantization_threshold=params.anisotropic_quantization_threshold)
            .reorder(params.reorder_k)
            .build())


def build_searcher(db: np.ndarray, cfg: IndexConfig, k: int = 100, similarity: str = "cosine"):
    """Build the configured searcher.

    Args:
        db: float32 [N, D] item embeddings (row i = index position i).
        cfg: index section of the config.
        k: default number of neighbours returned per query.
        similarity: the model's (core/similarity.py).
    Returns:
        (searcher, kind) with kind BRUTE_FORCE or TREE_AH.
    """
    params = resolve_params(int(np.asarray(db).shape[0]), cfg)
    return build_with_params(db, params, k, similarity), params.kind


def save_searcher(searcher, folder: str) -> None:
    """Serialise into a local folder; paths inside the assets are relative so it can be moved."""
    os.makedirs(folder, exist_ok=True)
    searcher.serialize(folder, relative_path=True)


def load_searcher(folder: str):
    """Load a searcher written by :func:`save_searcher` from a local folder."""
    if not os.path.isfile(os.path.join(folder, "scann_assets.pbtxt")):
        raise FileNotFoundError(f"no serialized ScaNN searcher in {folder} (scann_assets.pbtxt missing)")
    return _pybind().load_searcher(folder)


def search(searcher, queries: np.ndarray, k: int, n_items: int,
           reorder_k: Optional[int] = None, similarity: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Top-k for a batch of queries.

    ScaNN pads results when k exceeds the catalog, so k is clamped to ``n_items``;
    for tree_ah the re-scored candidate pool is widened to at least k.
    Returns:
        (indices int64 [Q, k'], scores float32 [Q, k']) with k' = min(k, n_items), best first;
        scores are ``similarity``'s (a squared distance negated).
    """
    k = min(int(k), int(n_items))
    pre = max(k, reorder_k) if reorder_k else None
    idx, dist = searcher.search_batched(_check_matrix(queries, "queries"), final_num_neighbors=k,
                                        pre_reorder_num_neighbors=pre)
    return np.asarray(idx, dtype=np.int64), similarities.scores_from_searcher(dist, similarity)


def exact_topk(db: np.ndarray, queries: np.ndarray, k: int,
               similarity: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Numpy brute-force top-k by ``similarity``'s score (:func:`core.similarity.scores`):
    (indices int64 [Q, k], scores float32 [Q, k]), best first.

    Ties break towards the lower index (stable sort), which is what a reference needs.
    """
    db = _check_matrix(db, "db")
    queries = _check_matrix(queries, "queries")
    k = min(int(k), db.shape[0])
    scores = similarities.scores(queries, db, similarity)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1).astype(np.float32)


def exact_topk_chunked(db: np.ndarray, queries: np.ndarray, k: int,
                       max_block_floats: int = 1 << 25, similarity: str = "cosine") -> np.ndarray:
    """Numpy brute-force top-k indices int64 [Q, k], best first, in bounded memory.

    Queries are processed in chunks so that one score block holds at most
    ``max_block_floats`` float32 (128 MB by default), then ``argpartition`` + a sort of the
    k survivors. This is the exact reference the tuner and the benchmark measure against,
    and the "numpy brute force" throughput baseline. Ties may break differently from
    :func:`exact_topk`; they do occur in trained embeddings (items without training positives
    can share one vector), which is why recall is measured with :func:`recall_tie_aware`.
    """
    db = _check_matrix(db, "db")
    queries = _check_matrix(queries, "queries")
    n = db.shape[0]
    k = min(int(k), n)
    step = max(1, int(max_block_floats) // n)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    # Ranked by the dot product plus an item bias (core.similarity.ranking_terms): for euclidean
    # that skips the [Q, N] squared-norm sum, which orders nothing.
    ranking_queries, item_bias = similarities.ranking_terms(queries, db, similarity)
    for start in range(0, queries.shape[0], step):
        scores = ranking_queries[start:start + step] @ db.T
        if item_bias is not None:
            scores += item_bias
        if k < n:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n), scores.shape)
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        out[start:start + step] = np.take_along_axis(part, order, axis=1)
    return out


def with_search_defaults(searcher, num_leaves_to_search: Optional[int], reorder_k: Optional[int]):
    """The same trained searcher with new default search-time parameters.

    A tree_ah searcher's defaults (leaves searched, re-scored pool size) live in its config
    (``partitioning.query_spilling.max_spill_centers``, ``exact_reordering.approx_num_neighbors``);
    the trained assets (centroids, codebooks, codes) do not depend on them. So rather than
    re-train (k-means + AH: the expensive part) we serialise, edit the config proto and load.
    Searches without overrides on the result equal searches with these overrides on the input.
    """
    import tempfile

    _pybind()
    from scann.proto import scann_pb2

    with tempfile.TemporaryDirectory(prefix="twotower-scann-") as tmp:
        searcher.serialize(tmp, relative_path=True)
        path = os.path.join(tmp, "scann_config.pb")
        config = scann_pb2.ScannConfig()
        with open(path, "rb") as fh:
            config.ParseFromString(fh.read())
        if num_leaves_to_search is not None:
            if not config.HasField("partitioning"):
                raise ValueError("num_leaves_to_search given for a searcher without a tree")
            config.partitioning.query_spilling.max_spill_centers = int(num_leaves_to_search)
        if reorder_k is not None:
            if not config.HasField("exact_reordering"):
                raise ValueError("reorder_k given for a searcher without exact re-ordering")
            config.exact_reordering.approx_num_neighbors = int(reorder_k)
        with open(path, "wb") as fh:
            fh.write(config.SerializeToString())
        return load_searcher(tmp)


def serialized_bytes(searcher) -> int:
    """Bytes the serialised searcher takes on disk (all of its assets)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="twotower-scann-size-") as tmp:
        searcher.serialize(tmp, relative_path=True)
        return sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))


#: Relative slack on the exact k-th score when counting a retrieved item as correct. "Identical"
#: embeddings need not be bit-identical: the towers' float32 reductions round differently for
#: different batch shapes (~1e-7 per component), so tied scores can differ by ~1e-7.
TIE_RTOL = 1e-6


def recall_vs_exact(found: np.ndarray, exact: np.ndarray) -> float:
    """Id-overlap recall: mean over queries of |found ∩ exact| / k (found, exact: int [Q, k]).

    Not tie-aware: when more than k items share the k-th best score, exact search keeps an
    arbitrary k of them and a correct answer holding others scores < 1 (at 100k items 6,131
    identical embeddings capped it below 0.95 even for exact search). Kept for comparison;
    the tuner and the index stage use :func:`recall_tie_aware`.
    """
    k = exact.shape[1]
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact)]
    return float(np.mean(hits) / k) if hits else 0.0


def kth_exact_scores(db: np.ndarray, queries: np.ndarray, exact: np.ndarray,
                     similarity: str = "cosine") -> np.ndarray:
    """float64 [Q]: each query's k-th best exact score, the smallest score among ``exact[q]``.

    Scores are recomputed in float64 from the rows (not taken from the float32 matmul that
    ranked them), so identical item vectors get bit-identical scores and the threshold is
    the same number :func:`recall_tie_aware` compares retrieved items with.
    """
    return _scores(db, queries, np.asarray(exact, dtype=np.int64), similarity).min(axis=1)


def _scores(db: np.ndarray, queries: np.ndarray, idx: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    """float64 [Q, m]: ``similarity``'s score of each query with its ``idx`` rows [Q, m] of ``db``.

    Gathers in the stored dtype, then widens: converting a 1M-row db to float64 per call
    would cost 512 MB for the sake of Q x k rows.
    """
    return similarities.gathered_scores(queries, np.asarray(db)[idx], similarity)


def recall_tie_aware(found: np.ndarray, exact: np.ndarray, db: np.ndarray, queries: np.ndarray,
                     rtol: float = TIE_RTOL, kth: Optional[np.ndarray] = None, similarity: str = "cosine") -> float:
    """Recall@k against exact search that counts ties as correct.

    A retrieved item is correct when its exact score is at least the query's exact k-th
    score, less ``rtol`` x max(|k-th score|, |best score|) for float error. So any k items
    from a block of identical embeddings tied at the k-th place are a perfect answer, while
    a wrong item scores below the threshold exactly as under :func:`recall_vs_exact`; without
    ties the two agree. Repeated or out-of-range ids (ScaNN pads short results) never count.

    Args:
        found: int [Q, >=k] retrieved positions, best first (only the first k are read).
        exact: int [Q, k] exact top-k positions (e.g. :func:`exact_topk_chunked`).
        db: float [N, D] the indexed matrix; queries: float [Q, D].
        kth: optional precomputed :func:`kth_exact_scores` (a sweep reuses it per point).
        similarity: the model's (core/similarity.py); scores compared in its terms.
    Returns:
        Mean over queries of (correct retrieved items) / k, in [0, 1].
    """
    exact = np.asarray(exact, dtype=np.int64)
    nq, k = exact.shape
    if nq == 0:
        return 0.0
    n = np.asarray(db).shape[0]
    if kth is None:
        kth = kth_exact_scores(db, queries, exact, similarity)
    best = _scores(db, queries, exact[:, :1], similarity)[:, 0]
    tol = rtol * np.maximum(np.maximum(np.abs(kth), np.abs(best)), np.finfo(np.float32).tiny)
    f = np.asarray(found, dtype=np.int64)[:, :k]
    # Sorted per row with out-of-range ids as -1, a repeated id sits next to its first copy.
    ids = np.sort(np.where((f >= 0) & (f < n), f, -1), axis=1)
    first = ids >= 0
    first[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    scores = _scores(db, queries, np.maximum(ids, 0), similarity)
    hits = (first & (scores >= (kth - tol)[:, None])).sum(axis=1)
    return float(np.mean(hits) / k)


def measure(searcher, db: np.ndarray, queries: np.ndarray, k: int = 10, repeats: int = 3,
            max_single_queries: int = 200, similarity: str = "cosine") -> dict:
    """Recall against exact search and throughput.

    Args:
        db: float32 [N, D], the indexed matrix. queries: float32 [Q, D].
        repeats: timed repeats; the median is reported (robust to a noisy neighbour).
        max_single_queries: at most this many queries timed one per call.
        similarity: the model's, which the searcher was built for (core/similarity.py).
    Returns:
        {"recall_at_10_vs_exact" (tie-aware recall@k, :func:`recall_tie_aware`, k=10 by
        default), "qps_batched" (queries/s, one call per query batch), "qps_single"
        (queries/s, one call per query), "qps_brute_force" (queries/s of the numpy exact top-k,
        :func:`exact_topk_chunked`, over the same batch, timed in the same way just before),
        "speedup_vs_brute_force" (qps_batched / qps_brute_force)}.
    """
    queries = _check_matrix(queries, "queries")
    n = db.shape[0]
    k = min(k, n)
    found, _ = search(searcher, queries, k, n, similarity=similarity)
    # The chunked reference: a full [Q, N] score matrix + argsort is GBs at 1M items.
    brute = []
    for _ in range(repeats):
        t = time.perf_counter()
        exact = exact_topk_chunked(db, queries, k, similarity=similarity)
        brute.append(time.perf_counter() - t)
    recall = recall_tie_aware(found, exact, db, queries, similarity=similarity)

    batched = []
    for _ in range(repeats):
        t = time.perf_counter()
        searcher.search_batched(queries, final_num_neighbors=k)
        batched.append(time.perf_counter() - t)
    singles = queries[:max_single_queries]
    single = []
    for _ in range(repeats):
        t = time.perf_counter()
        for q in singles:
            searcher.search(q, final_num_neighbors=k)
        single.append(time.perf_counter() - t)
    qps_batched = len(queries) / max(statistics.median(batched), 1e-9)
    qps_brute = len(queries) / max(statistics.median(brute), 1e-9)
    return {
        "recall_at_10_vs_exact": round(recall, 4),
        "qps_batched": round(qps_batched, 1),
        "qps_single": round(len(singles) / max(statistics.median(single), 1e-9), 1),
        "qps_brute_force": round(qps_brute, 1),
        "speedup_vs_brute_force": round(qps_batched / qps_brute, 2),
    }


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty float32 [N, D] matrix, got shape {x.shape}")
    return x
