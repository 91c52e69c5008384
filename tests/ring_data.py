"""A tiny planted-sequence dataset and the stages that turn it into a published version, for
the history and warm-start tests.

Items form a ring i0 -> i1 -> ... -> i59 -> i0; each user walks it from a random start, one
step per timestamp, so the next item is the last one plus one: a query tower that reads the
history can learn it, one that knows only the user id cannot for a new user.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import Config
from core.records import decode_example, interaction_specs

N_ITEMS, N_USERS, STEPS, MAX_LENGTH = 60, 240, 9, 4


def ring_tables(seed: int = 3, n_items: int = N_ITEMS, n_users: int = N_USERS, user_prefix: str = "u"
                ) -> dict[str, pd.DataFrame]:
    """items (item_id, genre) and interactions (user_id, item_id, label, timestamp), shuffled,
    plus a user "tie" with two rows at one timestamp and a label-0 row."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "genre": [f"g{i % 3}" for i in range(n_items)]})
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for step in range(STEPS):
            rows.append({"user_id": f"{user_prefix}{u}", "item_id": f"i{(start + step) % n_items}", "label": 1,
                         "timestamp": 1000 + 10 * step})
    inter = pd.DataFrame(rows)
    # Two rows at one timestamp (ties order by item id) and a label-0 row.
    extra = pd.DataFrame([{"user_id": "tie", "item_id": "i5", "label": 1, "timestamp": 50},
                          {"user_id": "tie", "item_id": "i3", "label": 1, "timestamp": 50},
                          {"user_id": "tie", "item_id": "i9", "label": 1, "timestamp": 60},
                          {"user_id": "tie", "item_id": "i1", "label": 1, "timestamp": 70},
                          {"user_id": "tie", "item_id": "i7", "label": 0, "timestamp": 65}])
    # Rows in a shuffled order: nothing may depend on input order.
    inter = pd.concat([inter, extra]).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return {"items": items, "interactions": inter}


def config(src: Path, store: Path, **overrides) -> Config:
    raw = {"data": {"path": str(src)},
           "schema": {"query_key": "user_id",
                      "query_features": [{"name": "user_id", "type": "id"},
                                         {"name": "recent", "type": "history", "max_length": MAX_LENGTH}],
                      "item_features": [{"name": "genre", "type": "categorical"}]},
           "transform": {"split": "leave_last_out"},
           "train": {"batch_size": 64, "n_epochs": 12, "lr": 0.02, "patience": 12, "embedding_dims": 16,
                     "feature_dims": 16, "hidden_dims": [], "temperature": 0.1, "max_eval_queries": 0},
           "index": {"eval_queries": 20, "tune_queries": 20},
           "publish": {"store": str(store)}}
    cfg = Config.model_validate(raw)
    return cfg.with_overrides(overrides) if overrides else cfg


def records(out: Path, name: str, cfg: Config) -> list[dict]:
    """Every example of ``<out>/<name>-*.tfrecord``, decoded."""
    import tensorflow as tf

    files = sorted(glob.glob(str(out / f"{name}-*.tfrecord")))
    specs = interaction_specs(cfg.schema)
    return [decode_example(r.numpy(), specs) for r in tf.data.TFRecordDataset(files)]


def transform(root: Path, tables: dict, store: Path | None = None, **overrides) -> tuple[Config, Path]:
    """Write ``tables`` as CSV under ``root``/src, ingest and transform them; (config, transformed)."""
    from features.ingest import ingest
    from features.transform import run_transform

    src = root / "src"
    src.mkdir(parents=True)
    for name, df in tables.items():
        df.to_csv(src / f"{name}.csv", index=False)
    cfg = config(src, store or root / "store", **overrides)
    ingest(cfg, str(root / "ingested"))
    run_transform(cfg, str(root / "ingested"), str(root / "transformed"))
    return cfg, root / "transformed"


def publish_run(cfg: Config, transformed: Path, root: Path) -> tuple[dict, dict, dict]:
    """Train, evaluate, embed, index and publish; (training.json, metrics, publish result)."""
    from indexer.build import build_index_stage
    from indexer.embed import embed_items
    from publishing.publish import gate_and_publish
    from evaluation.evaluate import evaluate_model
    from trainer.train import train_model

    training = train_model(cfg, str(transformed), str(root / "model"))
    metrics = evaluate_model(cfg, str(transformed), str(root / "model"), str(root / "eval"))
    embed_items(cfg, str(transformed), str(root / "model"), str(root / "emb"))
    build_index_stage(cfg, str(root / "emb"), str(root / "index"))
    result = gate_and_publish(cfg, str(transformed), str(root / "model"), str(root / "emb"), str(root / "index"),
                              metrics, run_id=root.name, lineage={"run_id": root.name})
    return training, metrics, result
