"""Index stage: build the ScaNN searcher over the item embeddings and measure it.

Outputs (in ``out_dir``): ``scann/`` (serialized pybind searcher), ``item_ids.txt``
(line i = item id at index position i) and ``index_metrics.json``; with ``index.tune`` also
the tuner's curve: ``tuning.json``, ``tuning.md`` (table) and ``tuning.svg`` (plot).

With ``index.tune`` (the default) the parameters come from :func:`indexer.tuner.tune`: the
fastest tree + AH + reorder configuration reaching ``index.target_recall`` tie-aware recall@10
against exact search on the tuning queries. The saved searcher carries the chosen
leaves-to-search and reorder_k as its defaults, and ``params`` in index_metrics.json records
them (the retriever reads ``params.reorder_k`` through the manifest's serving section).
The stage reports recall on a different query sample from the one the choice was made on.

Measurement queries: the embed stage's ``query_embeddings.parquet`` when present, i.e. real
queries (a seeded sample of validation keys) through the trained query tower, its "tune" rows
for the tuner and its disjoint "eval" rows for the reported figures (``"tune_queries":
"real"`` in index_metrics.json). An ANN index must be tuned on the distribution it serves,
and query-tower outputs need not sit where perturbed items do (nor, like stand-ins sampled
from a block of identical item vectors, on top of ties).
Without that file (embed artifacts from before it existed, a transform output with no
interaction splits) the stage says so in the log and falls back to stand-in queries
(``"tune_queries": "stand_in"``): catalog embeddings sampled with a fixed seed (1 for tuning,
0 for reporting), perturbed by small gaussian noise (re-normalised to unit length for the
cosine model), near items without being exact copies of indexed rows (which would flatter ANN
recall). Every search and the exact reference follow ``train.similarity`` (core/similarity.py),
which index_metrics.json records as ``similarity`` and ``distance_measure``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import numpy as np

from core import similarity as similarities
from core import storage
from core.config import Config
from core.contracts import files as names
from indexer.embeddings import EVAL, TUNE, load_embeddings, load_query_embeddings
from indexer.scann_index import build_with_params, measure, resolve_params, save_searcher
from indexer.tuner import tune, write_artifacts

# The index artifact's names are core.contracts' (publish and the reports read them).
SCANN_DIR = names.SCANN_DIR
ITEM_IDS = names.ITEM_IDS_FILE
METRICS = names.INDEX_METRICS_FILE
TUNING = names.TUNING_FILE
#: Noise scale relative to a row's per-dimension magnitude (||row|| / sqrt(D); 1/sqrt(D) for unit rows).
QUERY_NOISE = 0.3
#: ``tune_queries`` values in index_metrics.json: where the measurement queries came from.
REAL, STAND_IN = "real", "stand_in"

log = logging.getLogger(__name__)


def stand_in_queries(matrix: np.ndarray, n: int, seed: int = 0, noise: float = QUERY_NOISE,
                     unit: bool = True) -> np.ndarray:
    """float32 [min(n, N), D]: sampled rows + N(0, (noise ||row|| / sqrt(D))^2) noise, L2-normalised
    when ``unit`` (the cosine model's queries are unit vectors)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(matrix.shape[0], size=min(n, matrix.shape[0]), replace=False)
    d = matrix.shape[1]
    picked = matrix[rows].astype(np.float64)
    scale = np.linalg.norm(picked, axis=1, keepdims=True) * (noise / np.sqrt(d))
    q = picked + rng.normal(size=(len(rows), d)) * scale
    if unit:
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q.astype(np.float32)


def measurement_queries(config: Config, embeddings_dir: str, matrix: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The tuning and reporting queries for ``matrix`` float32 [N, D].

    Returns:
        (tune float32 [Qt, D], eval float32 [Qe, D], provenance) with provenance
        {"tune_queries": REAL | STAND_IN, "query_split": the split the real queries came
        from or None, "n_tune_queries", "n_eval_queries"}.
    Raises:
        ValueError: query embeddings of another width than the items'.
    """
    cfg = config.index
    queries = load_query_embeddings(embeddings_dir)
    if queries is not None and len(queries.keys):
        if queries.matrix.shape[1] != matrix.shape[1]:
            raise ValueError(f"{embeddings_dir}: query embeddings are {queries.matrix.shape[1]}-d but item "
                             f"embeddings {matrix.shape[1]}-d")
        tune_q, eval_q = queries.rows(TUNE), queries.rows(EVAL)
        if not len(eval_q):
            # A split with a single distinct query: report on it rather than on nothing.
            eval_q = tune_q
        if not len(tune_q):
            tune_q = eval_q
        source, split = REAL, queries.split[0]
    else:
        log.warning("%s has no query embeddings (older embed artifacts, or no interaction splits): the index "
                    "is tuned and measured on stand-in queries (perturbed item vectors) instead of real ones",
                    embeddings_dir)
        unit = similarities.unit_rows(config.train.similarity)
        tune_q = stand_in_queries(matrix, cfg.tune_queries, seed=1, unit=unit)
        eval_q = stand_in_queries(matrix, cfg.eval_queries, unit=unit)
        source, split = STAND_IN, None
    return tune_q, eval_q, {"tune_queries": source, "query_split": split,
                            "n_tune_queries": int(len(tune_q)), "n_eval_queries": int(len(eval_q))}


def build_index_stage(config: Config, embeddings_dir: str, out_dir: str) -> dict:
    """Build (tuned, unless ``index.tune`` is false), save and measure the index.

    Returns:
        index_metrics.json's content: {"kind", "n_items", "dims", "recall_at_10_vs_exact"
        (tie-aware, on the "eval" queries), "qps_batched", "qps_single", "qps_brute_force",
        "speedup_vs_brute_force" (see :func:`indexer.scann_index.measure`), "build_seconds",
        "params", "tuning", "tune_queries" ("real" | "stand_in"), "query_split",
        "n_tune_queries", "n_eval_queries", "recall_definition"}. ``build_seconds`` includes
        the tuning sweep; ``tuning`` is :meth:`TuningResult.summary` (chosen params, recall
        and queries/s on the tuning queries, configs tried, met_target, reason) or
        ``{"enabled": False}``.
    """
    ids, matrix = load_embeddings(embeddings_dir)
    if not ids:
        raise ValueError(f"{embeddings_dir}: no item embeddings to index")
    cfg = config.index
    similarity = config.train.similarity
    tune_q, eval_q, provenance = measurement_queries(config, embeddings_dir, matrix)
    build_k = min(100, len(ids))
    result = None
    start = time.perf_counter()
    if cfg.tune:
        result = tune(matrix, tune_q, cfg, build_k=build_k, similarity=similarity)
        searcher, params = result.searcher, result.chosen
    else:
        params = resolve_params(len(ids), cfg)
        searcher = build_with_params(matrix, params, k=build_k, similarity=similarity)
    build_seconds = time.perf_counter() - start
    figures = measure(searcher, matrix, eval_q, k=10, similarity=similarity)
    metrics = {"kind": params.kind, "n_items": len(ids), "dims": int(matrix.shape[1]),
               "similarity": similarity, "distance_measure": similarities.scann_distance_measure(similarity),
               **figures, "build_seconds": round(build_seconds, 3), "params": params.to_dict(),
               "tuning": result.summary() if result is not None else {"enabled": False},
               **provenance, "recall_definition": "tie_aware"}

    # ScaNN serialises to a local folder only; stage locally, then copy (local or gs://).
    with tempfile.TemporaryDirectory(prefix="twotower-index-") as tmp:
        save_searcher(searcher, os.path.join(tmp, SCANN_DIR))
        with open(os.path.join(tmp, ITEM_IDS), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{i}\n" for i in ids))
        with open(os.path.join(tmp, METRICS), "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, indent=2, sort_keys=True)
        if result is not None:
            write_artifacts(result, tmp)
        _draw_embedding_map(embeddings_dir, tmp)
        storage.upload_tree(tmp, out_dir)
    return metrics


def _draw_embedding_map(embeddings_dir: str, folder: str) -> None:
    """Copy the embed stage's embedding_map.json into ``folder`` (a local staging folder) and draw
    it as embedding_map.svg; embed artifacts from before the map existed have none."""
    from indexer.embedding_map import MAP_FILE, MAP_SVG_FILE, map_svg

    source = storage.join(embeddings_dir, MAP_FILE)
    if not storage.exists(source):
        return
    text = storage.read_text(source)
    with open(os.path.join(folder, MAP_FILE), "w", encoding="utf-8") as fh:
        fh.write(text)
    with open(os.path.join(folder, MAP_SVG_FILE), "w", encoding="utf-8") as fh:
        fh.write(map_svg(json.loads(text)))


def read_item_ids(index_dir: str) -> list[str]:
    """Item ids by index position from ``item_ids.txt``."""
    return list(storage.iter_lines(storage.join(index_dir, ITEM_IDS)))
