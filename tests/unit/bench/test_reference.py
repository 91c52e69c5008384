"""bench/reference.py: the TFRS tutorial reference model and its SavedModel export.

Tiny planted data worked out by hand: 4 groups x 6 users x 6 items; every user only
ever interacts with the items of its own group, so a model that learnt anything ranks
its group's 6 items (of 24) first, while a random ranking puts 5/24 of them in the top 5.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from core.config import Config
from core.records import encode_example, interaction_specs, item_specs
from tests.conftest import REPO

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP = 4, 6, 6


def make_config(path: str) -> Config:
    return Config.model_validate({
        "data": {"path": path},
        "schema": {
            "query_key": "user_id",
            "query_features": [{"name": "user_id", "type": "id"}, {"name": "age", "type": "numeric"},
                               {"name": "gender", "type": "categorical"}],
            "item_features": [{"name": "title", "type": "text"}, {"name": "price", "type": "numeric"}],
        },
        "publish": {"store": "unused"},
    })


def write_transformed(root: Path, config: Config) -> dict:
    """train / test TFRecords and the catalog, in the transform's layout."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    items = [{"item_id": f"i{g}{k}", "title": f"movie {g} {k}", "price": float(k), "group": g}
             for g in range(GROUPS) for k in range(ITEMS_PER_GROUP)]
    users = [{"user_id": f"u{g}{k}", "age": float(20 + k), "gender": "mf"[k % 2], "group": g}
             for g in range(GROUPS) for k in range(USERS_PER_GROUP)]
    train, test = [], []
    for user in users:
        own = [it for it in items if it["group"] == user["group"]]
        for _ in range(30):
            train.append({**user, **own[rng.integers(len(own))]})
        test.append({**user, **own[rng.integers(len(own))]})
    root.mkdir(parents=True, exist_ok=True)

    def write(name, rows, specs):
        with tf.io.TFRecordWriter(str(root / f"{name}-00000-of-00001.tfrecord")) as writer:
            for row in rows:
                writer.write(encode_example(row, specs))

    write("items", items, item_specs(config.schema))
    write("train", train, interaction_specs(config.schema))
    write("test", test, interaction_specs(config.schema))
    return {"items": items, "users": users, "train": train, "test": test}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from bench.reference import ReferenceSettings, train_reference

    root = tmp_path_factory.mktemp("transformed")
    config = make_config(str(root))
    data = write_transformed(root, config)
    out = tmp_path_factory.mktemp("reference")
    # Small batches and more epochs than the tutorial's 3: 720 examples would be one batch.
    settings = ReferenceSettings(batch_size=64, epochs=15)
    summary = train_reference(config, str(root), str(out), seed=1, settings=settings, verbose=False)
    return {"config": config, "data": data, "out": out, "summary": summary, "settings": settings}


def _columns(rows, specs):
    return {s.name: [r[s.name] for r in rows] for s in specs}


@pytest.mark.slow
def test_training_json_and_vocabularies(reference):
    summary = json.loads((reference["out"] / "training.json").read_text())
    assert summary == reference["summary"]
    assert summary["n_train"] == len(reference["data"]["train"])
    assert summary["query_vocab_size"] == GROUPS * USERS_PER_GROUP
    assert summary["item_vocab_size"] == GROUPS * ITEMS_PER_GROUP
    assert len(summary["history"]) == reference["settings"].epochs
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    assert summary["examples_per_second"] > 0


@pytest.mark.slow
def test_export_contract_matches_the_trainer(reference):
    """Same signature contract as trainer/export.py: every raw feature by name -> embedding."""
    from core.towers import Tower

    import tensorflow as tf

    config = reference["config"]
    query = Tower(str(reference["out"] / "query_tower"))
    item = Tower(str(reference["out"] / "item_tower"))
    assert query.input_dtypes == {"user_id": tf.string, "age": tf.float32, "gender": tf.string}
    assert item.input_dtypes == {"item_id": tf.string, "title": tf.string, "price": tf.float32}
    users = reference["data"]["users"]
    emb = query.embed(_columns(users, config.schema.query_features))
    assert emb.shape == (len(users), reference["settings"].embedding_dims) and emb.dtype == np.float32
    # Raw dot-product embeddings, as in the tutorial: not L2-normalised.
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    # Only the key matters: changing the other features changes nothing.
    other = _columns(users, config.schema.query_features)
    other["age"] = [0.0] * len(users)
    other["gender"] = ["x"] * len(users)
    np.testing.assert_array_equal(query.embed(other), emb)


@pytest.mark.slow
def test_reload_gives_the_same_embeddings(reference, tmp_path):
    """A tower exported, reloaded and exported again embeds exactly like the first export."""
    from bench.reference import build_reference_model, export_reference_tower
    from core.towers import Tower

    config = reference["config"]
    users = reference["data"]["users"]
    vocab = [u["user_id"] for u in users]
    _, query_tower, _ = build_reference_model(vocab, ["i00"])
    ids = vocab + ["never-seen"]
    import tensorflow as tf

    in_memory = query_tower(tf.constant(ids)).numpy()
    path = export_reference_tower(query_tower, list(config.schema.query_features), "user_id",
                                  str(tmp_path / "q"))
    loaded = Tower(path).embed({"user_id": ids, "age": [1.0] * len(ids), "gender": ["f"] * len(ids)})
    np.testing.assert_allclose(loaded, in_memory, rtol=0, atol=0)
    # And the trained export is deterministic across two loads.
    a = Tower(str(reference["out"] / "item_tower")).embed(
        _columns(reference["data"]["items"], item_specs(config.schema)))
    b = Tower(str(reference["out"] / "item_tower")).embed(
        _columns(reference["data"]["items"], item_specs(config.schema)))
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_trained_reference_beats_random(reference):
    from core.towers import Tower
    from core.metrics import embedding_retrieval_metrics

    config, data = reference["config"], reference["data"]
    items = data["items"]
    index = {it["item_id"]: i for i, it in enumerate(items)}
    item_emb = Tower(str(reference["out"] / "item_tower")).embed(_columns(items, item_specs(config.schema)))
    users = data["users"]
    query_emb = Tower(str(reference["out"] / "query_tower")).embed(_columns(users, config.schema.query_features))
    # Relevant = the user's whole group (what the planted structure says it likes).
    relevant = [np.array([index[it["item_id"]] for it in items if it["group"] == u["group"]]) for u in users]
    masked = [np.zeros(0, np.int64)] * len(users)
    m = embedding_retrieval_metrics(query_emb, item_emb, relevant, masked, ks=(5,), ndcg_k=5)
    chance = 5 / len(items)
    assert m["recall_at_5"] >= 0.6 > chance + 0.3, m
