"""Graded actions (issue 12, item 5): a weight per interaction scales its positive's loss.

The loss checks use fixed "towers" (id -> a chosen vector) at temperature 1, so every logit is
a dot product read off the vectors below, and a row's softmax cross-entropy with positive score
s and kept negatives n_j is ``log(e^s + sum_j e^{n_j}) - s`` (TFRS's, accidental hits removed).
The data checks run ingest + transform once on a 10-row CSV whose weights, labels and splits
are worked out by hand in the comments.
"""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from core.config import Config, ConfigError  # noqa: E402
from core.records import WEIGHT_KEY, decode_example, interaction_specs  # noqa: E402
from tests.conftest import fixed_tower  # noqa: E402

E = math.e
ACTIONS = {"view": 0.0, "click": 1.0, "purchase": 5.0}


@pytest.fixture(scope="module")
def tf():
    from trainer.tfenv import import_tf

    return import_tf()


# --------------------------------------------------------------------------- the loss by hand

QUERIES = {"q0": [1.0, 0.0], "q1": [0.0, 1.0], "q2": [1.0, 1.0]}
ITEMS = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.0, 0.0]}


def _numpy_ce(queries: list[str], items: list[str]) -> np.ndarray:
    """Per-row softmax cross-entropy [B]: row i's positive is items[i]; a column j != i with
    the same id is an accidental hit, removed from row i."""
    q = np.array([QUERIES[n] for n in queries])
    c = np.array([ITEMS[n] for n in items])
    logits = q @ c.T
    out = []
    for i in range(len(queries)):
        kept = [j for j in range(len(items)) if j == i or items[j] != items[i]]
        out.append(np.log(np.exp(logits[i, kept]).sum()) - logits[i, i])
    return np.array(out)


# Distinct ids: row 0 logits [1, 0, 0] (positive a), row 1 [0, 1, 0] (b), row 2 [1, 1, 0] (c).
DISTINCT = (["q0", "q1", "q2"], ["a", "b", "c"])
DISTINCT_CE = [math.log(E + 2) - 1, math.log(E + 2) - 1, math.log(2 * E + 1)]
# A repeated id: rows 0 and 2 both bought a. Row 0 logits [1, 0, 1], its column 2 is an
# accidental hit; row 1 [0, 1, 0]; row 2 [1, 1, 1], its column 0 an accidental hit.
REPEATED = (["q0", "q1", "q2"], ["a", "b", "a"])
REPEATED_CE = [math.log(E + 1) - 1, math.log(E + 2) - 1, math.log(2.0)]


def _losses(tf, queries, items, weights):
    """(deduplicated_softmax_loss, TFRS Retrieval with sample_weight) of one batch; weights None = unweighted."""
    import tensorflow_recommenders as tfrs

    from trainer.model import deduplicated_softmax_loss, hash_item_ids

    q = tf.constant([QUERIES[n] for n in queries])
    c = tf.constant([ITEMS[n] for n in items])
    ids = hash_item_ids(tf.constant(items))
    w = None if weights is None else tf.constant(weights, tf.float32)
    dedup = deduplicated_softmax_loss(q, c, ids, 1.0, row_weights=w)
    task = tfrs.tasks.Retrieval(temperature=1.0, remove_accidental_hits=True)
    tfrs_loss = task(q, c, sample_weight=w, candidate_ids=ids, compute_metrics=False, compute_batch_metrics=False)
    return float(dedup), float(tfrs_loss)


@pytest.mark.parametrize("batch, by_hand", [(DISTINCT, DISTINCT_CE), (REPEATED, REPEATED_CE)],
                         ids=["distinct", "repeated"])
def test_weighted_loss_is_the_weighted_sum_of_row_cross_entropies(tf, batch, by_hand):
    queries, items = batch
    ce = _numpy_ce(queries, items)
    np.testing.assert_allclose(ce, by_hand, rtol=1e-12)
    weights = [1.0, 5.0, 0.0] if batch is DISTINCT else [2.0, 1.0, 5.0]
    want = float(np.dot(weights, ce))
    if batch is DISTINCT:  # 1 * (log(e + 2) - 1) + 5 * (log(e + 2) - 1) + 0
        assert want == pytest.approx(6 * (math.log(E + 2) - 1))
    dedup, tfrs_loss = _losses(tf, queries, items, weights)
    assert dedup == pytest.approx(want, rel=1e-5)
    assert tfrs_loss == pytest.approx(want, rel=1e-5)
    # Each row's own term, as the unweighted function counts it: a one-hot weight picks it out.
    for i in range(3):
        one_hot = [float(j == i) for j in range(3)]
        assert _losses(tf, queries, items, one_hot)[0] == pytest.approx(ce[i], rel=1e-5)
    # Weights all 1 = the unweighted loss.
    unweighted = _losses(tf, queries, items, None)
    assert unweighted[0] == pytest.approx(ce.sum(), rel=1e-5)
    assert unweighted[1] == pytest.approx(ce.sum(), rel=1e-5)
    ones = _losses(tf, queries, items, [1.0, 1.0, 1.0])
    assert ones[0] == pytest.approx(unweighted[0], rel=1e-6) and ones[1] == pytest.approx(unweighted[1], rel=1e-6)


def _model(tf, **kwargs):
    from trainer.model import TwoTowerModel

    return TwoTowerModel(fixed_tower(tf, "query", QUERIES), fixed_tower(tf, "item_id", ITEMS), 1.0, **kwargs)


@pytest.mark.parametrize("dedupe", [True, False], ids=["dedup", "tfrs"])
def test_model_scales_each_row_by_the_batch_weight(tf, dedupe):
    queries, items = REPEATED
    batch = {"query": tf.constant(queries), "item_id": tf.constant(items)}
    weights = [2.0, 1.0, 5.0]
    model = _model(tf, dedupe_candidates=dedupe)
    assert float(model.compute_loss(batch)) == pytest.approx(sum(REPEATED_CE), rel=1e-5)
    weighted = {**batch, WEIGHT_KEY: tf.constant(weights)}
    assert float(model.compute_loss(weighted)) == pytest.approx(float(np.dot(weights, REPEATED_CE)), rel=1e-5)


def test_labelled_negative_term_weights_the_positive_pairs_only(tf):
    from trainer.data import LABELLED_NEGATIVES, POSITIVES

    queries, items = DISTINCT
    weights = [1.0, 5.0, 0.0]
    positives = {"query": tf.constant(queries), "item_id": tf.constant(items), WEIGHT_KEY: tf.constant(weights)}
    # One label-0 pair q0 x a: logit 1, its BCE term log(1 + e) at weight 1 (a negative is not weighted).
    negatives = {"query": tf.constant(["q0"]), "item_id": tf.constant(["a"]), WEIGHT_KEY: tf.constant([0.0])}
    model = _model(tf, labelled_negative_weight=0.5)
    # Positive pairs' logits 1, 1, 0 -> BCE terms log(1 + e^-1), log(1 + e^-1), log 2, weighted 1, 5, 0.
    bce = 1 * math.log(1 + 1 / E) + 5 * math.log(1 + 1 / E) + 0 * math.log(2.0) + math.log(1 + E)
    want = float(np.dot(weights, DISTINCT_CE)) + 0.5 * bce
    got = float(model.compute_loss({POSITIVES: positives, LABELLED_NEGATIVES: negatives}))
    assert got == pytest.approx(want, rel=1e-5)


# --------------------------------------------------------------------------- config

IDS_SCHEMA = {"query_key": "user_id", "query_features": [{"name": "user_id", "type": "id"}], "item_features": []}


def _config(path: Path, schema: dict = IDS_SCHEMA, **overrides) -> Config:
    raw = {"data": {"path": str(path), "max_bad_fraction": 0.9}, "schema": schema,
           "publish": {"store": str(path / "store")}}
    cfg = Config.model_validate(raw)
    return cfg.with_overrides(overrides) if overrides else cfg


@pytest.mark.parametrize("overrides, message", [
    ({"schema.weight_column": "score", "schema.action_weights": ACTIONS},
     "schema: set at most one of weight_column ('score') and action_weights"),
    ({"schema.action_column": "kind"},
     "schema.action_column: 'kind' only applies with schema.action_weights set"),
    ({"schema.action_weights": {"view": -1}},
     "schema.action_weights: action 'view': weight must be a finite number >= 0, got -1.0"),
    ({"schema.action_weights": {"view": float("inf")}}, "weight must be a finite number >= 0, got inf"),
    ({"schema.action_weights": {" view": 1}}, "action ' view': an action is a non-empty value without surrounding"),
    ({"schema.weight_column": ""}, "schema.weight_column: String should have at least 1 character"),
    ({"schema.weight_column": "score",
      "schema.query_features": [{"name": "user_id", "type": "id"}, {"name": "weight", "type": "numeric"}]},
     "feature 'weight': the name is reserved for the row weight"),
])
def test_config_refuses_contradictory_or_ignored_weight_options(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, **overrides)
    assert message in str(err.value)


def test_config_weighted_property_and_json_round_trip(tmp_path):
    from core.config import config_from_json

    plain = _config(tmp_path)
    assert not plain.schema.weighted and [s.name for s in interaction_specs(plain.schema)] == ["user_id", "item_id"]
    # A feature may be called weight when nothing is weighted.
    _config(tmp_path, **{"schema.item_features": [{"name": "weight", "type": "numeric"}]})
    by_action = _config(tmp_path, **{"schema.action_weights": ACTIONS, "schema.action_column": "kind"})
    by_column = _config(tmp_path, **{"schema.weight_column": "score"})
    for cfg in (by_action, by_column):
        assert cfg.schema.weighted
        specs = interaction_specs(cfg.schema)
        assert [(s.name, s.type) for s in specs] == [("user_id", "id"), ("item_id", "id"), (WEIGHT_KEY, "numeric")]
        assert config_from_json(cfg.to_json()) == cfg


# --------------------------------------------------------------------------- ingest

ITEMS_CSV = "item_id\ni1\ni2\ni3\ni4\ni5\n"
# Row (1-based data row): user, item, label, action, timestamp -> weight, label after ingest.
#  1 u1 i1 1 click     100 -> 1, 1
#  2 u1 i2 1 purchase  200 -> 5, 1
#  3 u1 i3 1 view      300 -> 0, 0 (a view is an explicit negative)
#  4 u1 i4 1 click     400 -> 1, 1
#  5 u1 i5 1 purchase  500 -> 5, 1
#  6 u2 i1 1 purchase  100 -> 5, 1
#  7 u2 i2 1 share     200 -> dead letter: unknown action
#  8 u2 i3 1 click     300 -> 1, 1
#  9 u2 i4 0 purchase  400 -> 5, 0 (label 0 stays label 0)
# 10 u3 i5 1 (empty)   600 -> dead letter: empty action
ACTION_CSV = """user_id,item_id,label,action,timestamp
u1,i1,1,click,100
u1,i2,1,purchase,200
u1,i3,1,view,300
u1,i4,1,click,400
u1,i5,1,purchase,500
u2,i1,1,purchase,100
u2,i2,1,share,200
u2,i3,1,click,300
u2,i4,0,purchase,400
u3,i5,1,,600
"""
INGESTED = [("u1", "i1", 1, 1.0), ("u1", "i2", 1, 5.0), ("u1", "i3", 0, 0.0), ("u1", "i4", 1, 1.0),
            ("u1", "i5", 1, 5.0), ("u2", "i1", 1, 5.0), ("u2", "i3", 1, 1.0), ("u2", "i4", 0, 5.0)]


def _source(root: Path, interactions: str) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    (src / "items.csv").write_text(ITEMS_CSV)
    (src / "interactions.csv").write_text(interactions)
    return src


def _dead(out: Path) -> dict[int, dict]:
    return {d["row"]: d for d in map(json.loads, (out / "dead_letter.jsonl").read_text().splitlines())}


def test_ingest_maps_actions_to_weights_and_views_to_negatives(tmp_path):
    from features.ingest import ingest

    src = _source(tmp_path, ACTION_CSV)
    ingest(_config(src, **{"schema.action_weights": ACTIONS}), str(tmp_path / "out"))
    got = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert list(zip(got["user_id"], got["item_id"], got["label"], got[WEIGHT_KEY])) == INGESTED
    assert got[WEIGHT_KEY].dtype == np.float64 and got["label"].dtype == np.int64
    dead = _dead(tmp_path / "out")
    assert sorted(dead) == [7, 10]
    assert dead[7]["file"].endswith("interactions.csv") and dead[7]["field"] == "action"
    assert dead[7]["reason"] == "unknown action 'share' (schema.action_weights has ['click', 'purchase', 'view'])"
    assert dead[10]["field"] == "action" and dead[10]["reason"] == "empty action (schema.action_column)"
    # Not weighted: the action column is ignored and no weight column is written.
    ingest(_config(src), str(tmp_path / "plain"))
    plain = pd.read_parquet(tmp_path / "plain" / "interactions.parquet")
    assert list(plain.columns) == ["user_id", "item_id", "label", "timestamp"] and len(plain) == 10


def test_ingest_reads_a_weight_column_and_dead_letters_bad_weights(tmp_path):
    from features.ingest import ingest

    src = _source(tmp_path, "user_id,item_id,score\nu1,i1,2.5\nu1,i2,0\nu1,i3,-1\nu2,i1,abc\nu2,i2,\n"
                            "u2,i3,inf\nu3,i4,7\n")
    ingest(_config(src, **{"schema.weight_column": "score"}), str(tmp_path / "out"))
    got = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert list(zip(got["item_id"], got["label"], got[WEIGHT_KEY])) == [("i1", 1, 2.5), ("i2", 0, 0.0), ("i4", 1, 7.0)]
    dead = _dead(tmp_path / "out")
    assert {row: (d["field"], d["reason"]) for row, d in dead.items()} == {
        3: ("score", "weight is negative: '-1'"),
        4: ("score", "weight is not a finite number: 'abc'"),
        5: ("score", "empty score (schema.weight_column)"),
        6: ("score", "weight is not a finite number: 'inf'"),
    }
    assert all(d["file"].endswith("interactions.csv") for d in dead.values())


@pytest.mark.parametrize("overrides, column", [({"schema.weight_column": "score"}, "score"),
                                               ({"schema.action_weights": ACTIONS}, "action")])
def test_ingest_refuses_a_missing_weight_source_column_naming_file_and_column(tmp_path, overrides, column):
    from features.ingest import IngestError, ingest

    src = _source(tmp_path, "user_id,item_id\nu1,i1\n")
    with pytest.raises(IngestError, match=rf"interactions\.csv: missing required column\(s\) \['{column}'\]"):
        ingest(_config(src, **overrides), str(tmp_path / "out"))


# --------------------------------------------------------------------------- transform + training


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    """(config, out_dir) of ACTION_CSV ingested and transformed (leave-last-out by timestamp)."""
    from features.ingest import ingest
    from features.transform import run_transform

    root = tmp_path_factory.mktemp("graded")
    src = _source(root, ACTION_CSV)
    cfg = _config(src, **{"schema.action_weights": ACTIONS})
    ingest(cfg, str(root / "ingested"))
    run_transform(cfg, str(root / "ingested"), str(root / "out"))
    return cfg, root / "out"


def _records(out: Path, name: str, specs) -> list[tuple]:
    import tensorflow as tf

    files = sorted(glob.glob(str(out / f"{name}-*.tfrecord")))
    rows = [decode_example(r.numpy(), specs) for r in tf.data.TFRecordDataset(files)]
    return sorted((r["user_id"], r["item_id"], r[WEIGHT_KEY]) for r in rows)


@pytest.mark.slow
def test_transform_writes_weights_to_every_split_and_weight_zero_rows_to_negatives(transformed):
    cfg, out = transformed
    specs = interaction_specs(cfg.schema)
    # u1's positives by time: i1, i2 -> train, i4 -> valid, i5 -> test; u2 has 2 positives: all train.
    assert _records(out, "train", specs) == [("u1", "i1", 1.0), ("u1", "i2", 5.0), ("u2", "i1", 5.0),
                                             ("u2", "i3", 1.0)]
    assert _records(out, "valid", specs) == [("u1", "i4", 1.0)]
    assert _records(out, "test", specs) == [("u1", "i5", 5.0)]
    # The view (weight 0) and the labelled-0 purchase are explicit negatives.
    assert _records(out, "train_negatives", specs) == [("u1", "i3", 0.0), ("u2", "i4", 5.0)]
    # Vocabulary counts stay unweighted: one per train positive.
    vocab = dict(line.split("\t") for line in (out / "vocab" / "item_id.tsv").read_text().splitlines())
    assert vocab == {"i1": "2", "i2": "1", "i3": "1", "i4": "0", "i5": "0"}


@pytest.mark.slow
def test_training_reads_the_weights_and_trains(transformed, tmp_path, tf):
    from trainer.data import InMemoryExamples
    from trainer.train import train_model

    cfg, out = transformed
    examples = InMemoryExamples.from_files(sorted(glob.glob(str(out / "train-*.tfrecord"))),
                                           interaction_specs(cfg.schema))
    assert sorted(examples.columns[WEIGHT_KEY].numpy().tolist()) == [1.0, 1.0, 5.0, 5.0]
    cfg = cfg.with_overrides({"train.batch_size": 2, "train.n_epochs": 2, "train.embedding_dims": 4,
                              "train.feature_dims": 4, "train.hidden_dims": []})
    summary = train_model(cfg, str(out), str(tmp_path / "model"))
    assert summary["n_train"] == 4 and len(summary["history"]) == 2
    assert all(np.isfinite(epoch["loss"]) for epoch in summary["history"])
    assert (tmp_path / "model" / "query_tower").is_dir() and (tmp_path / "model" / "item_tower").is_dir()
