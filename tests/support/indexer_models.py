"""Tiny tower SavedModels and a tiny transform-output folder (the indexer's fixtures).

The towers here are tiny real SavedModels (``build_tower``) with the trainer's contract:
raw named inputs -> {"embedding": float32 [B, D]}, L2-normalised. The item tower hashes
item_id to a fixed random vector, so its output is fully determined and cheap.
Used by test_indexer, test_retriever, test_server, test_evaluate, test_gate_live and others.
"""

from __future__ import annotations

import json
import os

import numpy as np

from core.config import Config
from core.records import encode_example, item_specs


DIMS = 8
N_ITEMS = 60
N_USERS = 12


def build_tower(path: str, side: str, dims: int = DIMS, seed: int = 0, unit: bool = True) -> str:
    """Export a tiny tower SavedModel (rows L2-normalised when ``unit``, as a cosine model's are;
    raw otherwise, as a dot or euclidean model's are).

    side="item": inputs item_id (str), title (str), price (float32) -> table[hash(item_id)].
    side="query": inputs user_id (str), age (float32) -> table[hash(user_id)] + age * w.
    side="text": input query (str) -> table[hash(lower(query))].
    """
    import tensorflow as tf

    buckets = 1 << 14
    table = tf.constant(np.random.default_rng(seed).normal(size=(buckets, dims)).astype(np.float32))
    w = tf.constant(np.random.default_rng(seed + 1).normal(size=(dims,)).astype(np.float32))

    def _norm(x):
        return tf.math.l2_normalize(x, axis=1) if unit else x

    def _lookup(strings):
        return tf.gather(table, tf.strings.to_hash_bucket_fast(strings, buckets))

    S, F = tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)
    module = tf.Module()
    if side == "item":
        @tf.function(input_signature=[S, S, F])
        def serve(item_id, title, price):
            del title, price  # declared inputs the tower ignores, like unused columns
            return {"embedding": _norm(_lookup(item_id))}
    elif side == "query":
        @tf.function(input_signature=[S, F])
        def serve(user_id, age):
            return {"embedding": _norm(_lookup(user_id) + age[:, None] * w[None, :] * 0.01)}
    elif side == "text":
        @tf.function(input_signature=[S])
        def serve(query):
            return {"embedding": _norm(_lookup(tf.strings.lower(query)))}
    else:
        raise ValueError(side)
    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


def make_config(tmp_path, **sections) -> Config:
    raw = {
        "data": {"path": str(tmp_path / "data")},
        "schema": {
            "query_key": "user_id",
            "query_features": [{"name": "user_id", "type": "id"}, {"name": "age", "type": "numeric"}],
            "item_features": [{"name": "title", "type": "text"}, {"name": "price", "type": "numeric"}],
            "display_fields": ["title", "price"],
        },
        "publish": {"store": str(tmp_path / "store"), "keep_versions": 2},
        "index": {"eval_queries": 50},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Config.model_validate(raw)


def item_ids(n: int = N_ITEMS) -> list[str]:
    return [f"item{i:03d}" for i in range(n)]


def write_transformed(config: Config, folder: str, n_items: int = N_ITEMS, shards: int = 2) -> str:
    """A transform-output folder: items-*.tfrecord shards, items_display.jsonl, query_table.jsonl, seen.jsonl."""
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    ids = item_ids(n_items)
    specs = item_specs(config.schema)
    for s in range(shards):
        with tf.io.TFRecordWriter(os.path.join(folder, f"items-{s:05d}-of-{shards:05d}.tfrecord")) as w:
            for i in range(s, n_items, shards):
                w.write(encode_example({"item_id": ids[i], "title": f"thing {i}", "price": float(i) / 2},
                                       specs))
    with open(os.path.join(folder, "items_display.jsonl"), "w") as fh:
        for i in range(n_items):  # raw, un-normalised display values (as the transform writes them)
            fh.write(json.dumps({"item_id": ids[i], "title": f"Thing #{i}", "price": float(i) / 2}) + "\n")
    with open(os.path.join(folder, "query_table.jsonl"), "w") as fh:
        for u in range(N_USERS):
            fh.write(json.dumps({"user_id": str(u), "age": float(20 + u)}) + "\n")
    with open(os.path.join(folder, "seen.jsonl"), "w") as fh:
        for u in range(N_USERS):
            fh.write(json.dumps({"key": str(u), "train": ids[u:u + 3], "valid": [ids[u + 3]],
                                 "test": [ids[u + 4]]}) + "\n")
    ages = [20.0 + u for u in range(N_USERS)]
    with open(os.path.join(folder, "stats.json"), "w") as fh:  # the numeric stats publish's defaults read
        fh.write(json.dumps({"numeric": {"age": {"mean": float(np.mean(ages)), "std": float(np.std(ages)),
                                                 "min": min(ages), "max": max(ages), "count": len(ages)}}}))
    return folder


def write_models(folder: str, unit: bool = True) -> str:
    build_tower(os.path.join(folder, "item_tower"), "item", unit=unit)
    build_tower(os.path.join(folder, "query_tower"), "query", seed=7, unit=unit)
    return folder


GOOD_METRICS = {"recall_at_10": 0.3, "recall_at_50": 0.5, "recall_at_100": 0.6, "ndcg_at_10": 0.2,
                "popularity": {"recall_at_10": 0.1}, "n_queries": 12}
