"""Tiny planted training data for the trainer tests (a hand-built transform-output folder).

Tiny planted data (hand-checkable): 4 product categories x 12 items; every query is
"<adjective> <category>" and only ever buys items of its category, so a model that
reads the query text must rank its category first, while popularity cannot.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from core.config import Config
from core.records import encode_example, interaction_specs, item_specs


CATEGORIES = ["shoes", "hats", "bags", "watches"]
ADJECTIVES = ["red", "cheap", "best", "light", "classic", "summer", "winter", "kids", "pro", "smart",
              "soft", "big"]
BRANDS = ["acme", "zenith", "orbit"]
TAGS = ["sale", "new", "eco", ""]
ITEMS_PER_CATEGORY = 12
PER_QUERY = 5  # 3 train, 1 valid, 1 test (leave last out by timestamp)


def make_config(data_path: str, **train) -> Config:
    base = dict(batch_size=16, n_epochs=8, lr=0.02, patience=3, embedding_dims=16, feature_dims=8,
                hidden_dims=[32], temperature=0.1, seed=3, max_eval_queries=1000)
    base.update(train)
    return Config.model_validate({
        "data": {"path": data_path},
        "schema": {
            "query_key": "query",
            "query_features": [{"name": "query", "type": "text"}, {"name": "segment", "type": "categorical"}],
            "item_features": [{"name": "title", "type": "text"}, {"name": "category", "type": "categorical"},
                              {"name": "tags", "type": "multi_categorical"},
                              {"name": "price", "type": "numeric"}],
        },
        "transform": {"text_max_tokens": 6},
        "train": base,
        "evaluate": {"ks": [10, 50, 100], "ndcg_k": 10},
        "publish": {"store": "unused"},
    })


def write_tfrecord(path: Path, rows: list[dict], specs) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            writer.write(encode_example(row, specs))


def write_transformed(root: Path, config: Config) -> dict:
    """A transform-stage output folder per docs/ARCHITECTURE.md, built by hand."""
    rng = np.random.default_rng(7)
    items = []
    for c, cat in enumerate(CATEGORIES):
        for k in range(ITEMS_PER_CATEGORY):
            tags = "|".join(t for t in rng.choice(TAGS, size=2, replace=False) if t)
            items.append({"item_id": f"i{len(items):02d}", "category": cat, "tags": tags,
                          "title": f"{BRANDS[k % 3]} {cat} model {k}", "price": float(10 * (c + 1) + k)})
    by_cat = {cat: [it for it in items if it["category"] == cat] for cat in CATEGORIES}
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    seen = []
    for c, cat in enumerate(CATEGORIES):
        for a, adj in enumerate(ADJECTIVES):
            query = {"query": f"{adj} {cat}", "segment": ["web", "app"][a % 2]}
            bought = rng.choice(ITEMS_PER_CATEGORY, size=PER_QUERY, replace=False)
            rows = [{**query, **by_cat[cat][b]} for b in bought]
            parts = {"train": rows[:3], "valid": rows[3:4], "test": rows[4:]}
            for split, part in parts.items():
                splits[split].extend(part)
            seen.append({"key": query["query"], **{s: [r["item_id"] for r in p] for s, p in parts.items()}})

    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab").mkdir()
    ispecs, xspecs = item_specs(config.schema), interaction_specs(config.schema)
    write_tfrecord(root / "items-00000-of-00001.tfrecord", items, ispecs)
    for split, rows in splits.items():
        write_tfrecord(root / f"{split}-00000-of-00001.tfrecord", rows, xspecs)

    def vocab(name: str, counter: Counter, all_tokens=()) -> None:
        for t in all_tokens:
            counter.setdefault(t, 0)
        lines = [f"{t}\t{n}" for t, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]
        (root / "vocab" / f"{name}.tsv").write_text("\n".join(lines) + "\n")

    train = splits["train"]
    vocab("item_id", Counter(r["item_id"] for r in train), [it["item_id"] for it in items])
    vocab("query", Counter(t for r in train for t in r["query"].split()))
    vocab("segment", Counter(r["segment"] for r in train))
    vocab("title", Counter(t for r in train + items for t in r["title"].split()))
    vocab("category", Counter(r["category"] for r in train + items))
    vocab("tags", Counter(t for r in train + items for t in r["tags"].split("|") if t))
    prices = np.array([r["price"] for r in train])
    (root / "stats.json").write_text(json.dumps({
        "numeric": {"price": {"mean": prices.mean(), "std": prices.std(), "min": prices.min(),
                              "max": prices.max()}},
        "counts": {s: len(r) for s, r in splits.items()} | {"items": len(items), "queries": len(seen)},
        "split": "leave_last_out"}))
    (root / "seen.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seen))
    return {"items": items, "splits": splits}
