"""The cascade's held-out metrics: retrieval's top-N alone vs re-ordered by the pre-ranker.

``metrics.json["cascade"]`` (only when the model folder has ``prerank/``, train.cascade)::

    {"top_n": N, "n_queries": Q,
     "retrieval": {"recall_at_10", ..., "ndcg_at_10", "ci95"},       the retrieval order of the top N
     "cascade": {same keys, "ci95", "diff": {metric: {"mean", "ci95"}}},  re-ordered; diff = cascade - retrieval
     "latency_ms": {"100": {"p50", "p90"}, "500": {...}},  added per single query, pre-ranker query
                                                           tower + scoring N candidates + sort
     "prerank": prerank.json without its history}

Both lists are scored on the same test keys, masks and protocol as the model's own metrics
(``retrieval`` at k <= N equals them up to ties). The candidates are exact retrieval's top N, the
list the ANN index approximates at its tuned recall (docs/BENCHMARKS.md "Cascade" measures the
same with the published ScaNN index through the query service).
"""

from __future__ import annotations

import json
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from core import storage
from core.contracts import files as names
from core.metrics import estimates, query_contributions, ranks_from_lists, top_positions
from core.prerank import InteractionShape, rerank
from core.similarity import gathered_scores

#: Candidate counts whose added latency is reported (the issue's N = 100 and 500).
LATENCY_NS = (100, 500)
#: Single-query calls timed per N (after 5 warm-up calls).
LATENCY_QUERIES = 100


def prerank_doc(model_dir: str) -> Optional[dict]:
    """``<model_dir>/prerank/prerank.json``, or None when the model has no pre-ranker."""
    path = storage.join(model_dir, names.prerank_path(names.PRERANK_FILE))
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def evaluate_cascade(model_dir: str, doc: dict, queries, catalog, query_emb: np.ndarray, item_emb: np.ndarray,
                     similarity: str, ks: Sequence[int], ndcg_k: int, per: str, intervals, paired, embed) -> dict:
    """``metrics["cascade"]`` (module doc) for the evaluated queries.

    Args:
        doc: :func:`prerank_doc`; queries / catalog: evaluation's QuerySet and Catalog;
        query_emb [Q, D] / item_emb [N, D]: the retrieval towers' embeddings of them;
        intervals / paired: evaluation's ``intervals(values, weights, n_total)`` and
            ``paired_differences(values, baseline, weights, n_total)``; embed: its
            ``(tower, columns) -> float32 [N, D]``.
    """
    from core.towers import Tower

    shape = InteractionShape.from_dict(doc)
    top_n = int(doc["top_n"])
    query_tower = Tower(storage.join(model_dir, names.prerank_path(names.QUERY_TOWER_DIR)))
    item_tower = Tower(storage.join(model_dir, names.prerank_path(names.ITEM_TOWER_DIR)))
    item_vectors = embed(item_tower, catalog.features)
    query_vectors = embed(query_tower, queries.features)
    candidates = top_positions(query_emb, item_emb, queries.masked, top_n, similarity)
    retrieval_scores = gathered_scores(query_emb, item_emb[candidates], similarity)
    reordered, _ = rerank(query_vectors, item_vectors, candidates, shape, retrieval_scores)
    ks = [k for k in ks if k <= candidates.shape[1]] or [candidates.shape[1]]
    depth = max(*ks, ndcg_k)
    n_items = len(catalog.ids)
    values = {}
    for name, lists in (("retrieval", candidates), ("cascade", reordered)):
        ranks = ranks_from_lists(lists, queries.relevant, queries.masked, n_items, depth)
        values[name], weights = query_contributions(ranks, ks, ndcg_k, per)
    n_total = queries.n_total
    out = {"top_n": top_n, "n_queries": len(queries)}
    for name in ("retrieval", "cascade"):
        out[name] = {**estimates(values[name], weights), "ci95": intervals(values[name], weights, n_total)}
    out["cascade"]["diff"] = paired(values["cascade"], values["retrieval"], weights, n_total)
    out["latency_ms"] = added_latency(query_tower, queries.features, item_vectors, shape)
    out["prerank"] = {k: v for k, v in doc.items() if k != "history"}
    return out


def added_latency(query_tower, features: Mapping[str, np.ndarray], item_vectors: np.ndarray,
                  shape: InteractionShape, ns: Sequence[int] = LATENCY_NS, n_queries: int = LATENCY_QUERIES
                  ) -> dict:
    """{"<N>": {"p50", "p90"}} milliseconds a single query adds when its N candidates are re-ranked:
    the pre-ranker query tower on the one query, gathering N item vectors and scoring them, and the
    sort (the retrieval call itself excluded). Candidates are seeded random catalog positions: the
    cost does not depend on which items they are."""
    rng = np.random.default_rng(0)
    n_rows = len(next(iter(features.values())))
    out = {}
    for n in ns:
        n_eff = min(int(n), len(item_vectors))
        times = []
        for i in range(n_queries + 5):
            row = i % max(n_rows, 1)
            one = {name: features[name][row:row + 1] for name in query_tower.input_names}
            candidates = rng.choice(len(item_vectors), size=(1, n_eff), replace=False)
            retrieval_scores = rng.standard_normal((1, n_eff)).astype(np.float32)
            began = time.perf_counter()
            vector = query_tower.embed(one)
            rerank(vector, item_vectors, candidates, shape, retrieval_scores)
            if i >= 5:
                times.append((time.perf_counter() - began) * 1000.0)
        out[str(n)] = {"p50": round(float(np.percentile(times, 50)), 3),
                       "p90": round(float(np.percentile(times, 90)), 3), "candidates": n_eff}
    return out

