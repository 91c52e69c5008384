"""Evaluation stage: ``evaluate_model(config, transformed_dir, model_dir, out_dir) -> dict``.

Loads the exported towers with :class:`core.towers.Tower` (so a broken export fails
here, before indexing), embeds the whole catalog and the distinct test keys, masks
each key's train+valid items (except the held-out ones themselves) and computes
recall@K for ``evaluate.ks`` and nDCG@``evaluate.ndcg_k``, for the model and for the
popularity baseline (train counts from ``vocab/item_id.tsv``) under the same protocol.

Writes ``metrics.json``: ``{"recall_at_10", ..., "ndcg_at_10", "popularity": {same keys},
"n_queries", "n_items"}``. TensorFlow is imported inside the function.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

EMBED_BATCH = 4096


def _embed(tower, columns: Mapping[str, np.ndarray], batch_size: int = EMBED_BATCH) -> np.ndarray:
    """Embed numpy columns [N] with a loaded ``core.towers.Tower`` -> float32 [N, D]."""
    n = len(next(iter(columns.values())))
    parts = [tower.embed({name: columns[name][s:s + batch_size] for name in tower.input_names})
             for s in range(0, n, batch_size)]
    return np.concatenate(parts).astype(np.float32)


def evaluate_model(config, transformed_dir: str, model_dir: str, out_dir: str) -> dict:
    """Test-split metrics of the exported towers in ``model_dir`` vs popularity.

    Returns:
        The ``metrics.json`` dict.
    Raises:
        FileNotFoundError: missing catalog, vocabulary or tower.
        ValueError: the test split has no query with a relevant catalog item.
    """
    from trainer.tfenv import import_tf

    tf = import_tf()
    from core.towers import Tower
    from trainer import artifacts
    from trainer.evalset import load_catalog, load_queries
    from trainer.metrics import embedding_retrieval_metrics, popularity_scores

    model_dir = model_dir.rstrip("/")
    out_dir = out_dir.rstrip("/")
    ks, ndcg_k = list(config.evaluate.ks), config.evaluate.ndcg_k

    catalog = load_catalog(config, transformed_dir)
    queries = load_queries(config, transformed_dir, "test", ("train", "valid"), catalog)
    if not len(queries):
        raise ValueError(f"{transformed_dir}: the test split has no query with a catalog item")

    query_tower = Tower(f"{model_dir}/query_tower")
    item_tower = Tower(f"{model_dir}/item_tower")
    item_emb = _embed(item_tower, catalog.features)
    query_emb = _embed(query_tower, queries.features)
    model_metrics = embedding_retrieval_metrics(query_emb, item_emb, queries.relevant, queries.masked,
                                                ks=ks, ndcg_k=ndcg_k)

    tokens, counts = artifacts.read_vocab(transformed_dir, "item_id")
    train_counts = dict(zip(tokens, counts))
    pop = popularity_scores([train_counts.get(item, 0) for item in catalog.ids])
    pop_metrics = embedding_retrieval_metrics(None, None, queries.relevant, queries.masked,
                                              ks=ks, ndcg_k=ndcg_k, item_bias=pop)

    metrics = {**model_metrics, "popularity": pop_metrics, "n_queries": len(queries),
               "n_items": len(catalog.ids)}
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(f"{out_dir}/metrics.json", "w") as fh:
        fh.write(json.dumps(metrics, indent=2))
    print(f"[evaluate] {len(queries)} queries x {len(catalog.ids)} items: "
          + " ".join(f"{k}={v:.4f}" for k, v in model_metrics.items())
          + f" | popularity recall_at_{ks[0]}={pop_metrics[f'recall_at_{ks[0]}']:.4f}", flush=True)
    return metrics
