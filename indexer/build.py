"""Index stage: build the ScaNN searcher over the item embeddings and measure it.

Outputs (in ``out_dir``): ``scann/`` (serialized pybind searcher), ``item_ids.txt``
(line i = item id at index position i) and ``index_metrics.json``; with ``index.tune`` also
the tuner's curve: ``tuning.json``, ``tuning.md`` (table) and ``tuning.svg`` (plot).

With ``index.tune`` (the default) the parameters come from :func:`indexer.tuner.tune`: the
fastest tree + AH + reorder configuration reaching ``index.target_recall`` recall@10 against
exact search on ``index.tune_queries`` stand-in queries. The saved searcher carries the chosen
leaves-to-search and reorder_k as its defaults, and ``params`` in index_metrics.json records
them (the retriever reads ``params.reorder_k`` through the manifest's serving section).
The tuner measures on a different stand-in sample (seed 1) from the one this stage reports
(seed 0), so the reported recall is not the number the choice was made on.

Measurement queries: we have no query embeddings at this stage, so we stand in
``index.eval_queries`` catalog embeddings (sampled with a fixed seed) perturbed by
small gaussian noise and re-normalised to unit length. They sit where real queries
sit (near items, on the unit sphere) without being exact copies of indexed rows,
which would make ANN recall look better than it is.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from core import storage
from core.config import Config
from indexer.embeddings import load_embeddings
from indexer.scann_index import build_with_params, measure, resolve_params, save_searcher
from indexer.tuner import tune, write_artifacts

SCANN_DIR = "scann"
ITEM_IDS = "item_ids.txt"
METRICS = "index_metrics.json"
TUNING = "tuning.json"
#: Noise scale relative to a unit vector's per-dimension magnitude (1/sqrt(D)).
QUERY_NOISE = 0.3


def stand_in_queries(matrix: np.ndarray, n: int, seed: int = 0, noise: float = QUERY_NOISE) -> np.ndarray:
    """float32 [min(n, N), D]: sampled rows + N(0, (noise/sqrt(D))^2) noise, L2-normalised."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(matrix.shape[0], size=min(n, matrix.shape[0]), replace=False)
    d = matrix.shape[1]
    q = matrix[rows] + rng.normal(scale=noise / np.sqrt(d), size=(len(rows), d))
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q.astype(np.float32)


def build_index_stage(config: Config, embeddings_dir: str, out_dir: str) -> dict:
    """Build (tuned, unless ``index.tune`` is false), save and measure the index.

    Returns:
        index_metrics.json's content: {"kind", "n_items", "dims", "recall_at_10_vs_exact",
        "qps_batched", "qps_single", "build_seconds", "params", "tuning"}. ``build_seconds``
        includes the tuning sweep; ``tuning`` is :meth:`TuningResult.summary` (chosen params,
        recall and queries/s on the tuning queries, configs tried, met_target, reason) or
        ``{"enabled": False}``.
    """
    ids, matrix = load_embeddings(embeddings_dir)
    if not ids:
        raise ValueError(f"{embeddings_dir}: no item embeddings to index")
    cfg = config.index
    build_k = min(100, len(ids))
    result = None
    start = time.perf_counter()
    if cfg.tune:
        result = tune(matrix, stand_in_queries(matrix, cfg.tune_queries, seed=1), cfg, build_k=build_k)
        searcher, params = result.searcher, result.chosen
    else:
        params = resolve_params(len(ids), cfg)
        searcher = build_with_params(matrix, params, k=build_k)
    build_seconds = time.perf_counter() - start
    figures = measure(searcher, matrix, stand_in_queries(matrix, cfg.eval_queries), k=10)
    metrics = {"kind": params.kind, "n_items": len(ids), "dims": int(matrix.shape[1]),
               **figures, "build_seconds": round(build_seconds, 3), "params": params.to_dict(),
               "tuning": result.summary() if result is not None else {"enabled": False}}

    # ScaNN serialises to a local folder only; stage locally, then copy (local or gs://).
    with tempfile.TemporaryDirectory(prefix="twotower-index-") as tmp:
        save_searcher(searcher, os.path.join(tmp, SCANN_DIR))
        with open(os.path.join(tmp, ITEM_IDS), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{i}\n" for i in ids))
        with open(os.path.join(tmp, METRICS), "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, indent=2, sort_keys=True)
        if result is not None:
            write_artifacts(result, tmp)
        storage.upload_tree(tmp, out_dir)
    return metrics


def read_item_ids(index_dir: str) -> list[str]:
    """Item ids by index position from ``item_ids.txt``."""
    return list(storage.iter_lines(storage.join(index_dir, ITEM_IDS)))
