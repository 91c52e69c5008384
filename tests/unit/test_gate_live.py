"""The quality gate against the LIVE version: evaluate scores the store's CURRENT version
on the same test split and protocol (``metrics["live"]``) and the gate refuses a candidate
more than ``gate.max_relative_regression`` below it.

Reuses the tiny transform folder of test_evaluate and the tiny towers of test_indexer.
The "good" model's query tower maps user u straight onto item(u + 4)'s item-tower vector
(its test item), so it ranks that item first; the "random" model (test_indexer's
``write_models``) scores items at random.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tests.unit.test_evaluate import _brute_ranks, _expected, _model_scores, _write_folder
from tests.unit.test_indexer import DIMS, build_tower, item_ids, make_config, write_models

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

METRIC_KEYS = ("recall_at_5", "recall_at_10", "ndcg_at_10")


def build_good_query_tower(path: str, dims: int = DIMS, seed: int = 0) -> str:
    """Query tower: user u -> the item tower's vector of item(u + 4) (same table as ``build_tower(seed)``)."""
    import tensorflow as tf

    buckets = 1 << 14
    table = tf.constant(np.random.default_rng(seed).normal(size=(buckets, dims)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)])
    def serve(user_id, age):
        del age
        target = tf.strings.to_number(user_id, out_type=tf.int64) + 4
        item = tf.strings.join(["item", tf.strings.as_string(target, width=3, fill="0")])
        vec = tf.gather(table, tf.strings.to_hash_bucket_fast(item, buckets))
        return {"embedding": tf.math.l2_normalize(vec, axis=1)}

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Transform folder, good + random models, one embed/index, and a store whose first
    (and live) version is the good model, published through the gate."""
    from indexer.build import build_index_stage
    from indexer.embed import embed_items
    from indexer.publish import gate_and_publish
    from trainer.evaluate import evaluate_model

    tmp = tmp_path_factory.mktemp("gate_live")
    config = make_config(tmp, evaluate={"ks": [5, 10], "ndcg_k": 10, "per": "query", "mask_seen": True},
                         gate={"must_beat_popularity": False})
    folder = str(tmp / "transformed")
    _write_folder(config, folder)
    good = str(tmp / "good")
    build_tower(os.path.join(good, "item_tower"), "item")
    build_good_query_tower(os.path.join(good, "query_tower"))
    rand = write_models(str(tmp / "random"))  # same item tower, random query tower
    emb = str(tmp / "emb")
    embed_items(config, folder, good, emb)
    index_dir = str(tmp / "index")
    build_index_stage(config, emb, index_dir)

    store = config.publish.store
    first_metrics = evaluate_model(config, folder, good, str(tmp / "eval-first"), live_store=store)
    first = gate_and_publish(config, folder, good, emb, index_dir, first_metrics, "r1", {})
    return {"tmp": tmp, "config": config, "folder": folder, "good": good, "rand": rand, "emb": emb,
            "index": index_dir, "store": store, "first_metrics": first_metrics, "first": first}


def _store_state(root: str) -> tuple:
    from core.store import VersionStore

    store = VersionStore(root)
    return store.current(), [v["id"] for v in store.versions()]


def test_first_publish_has_no_baseline(world):
    from core.store import VersionStore

    assert world["first_metrics"]["live"] is None
    first = world["first"]
    assert first["published"]
    assert "no live version: first publish has no baseline" in first["reasons"]
    manifest = VersionStore(world["store"]).read_manifest(first["version"])
    assert manifest["gate"]["baseline"] is None and manifest["gate"]["publish"] is True
    assert manifest["metrics"]["live"] is None


def test_evaluate_without_store_writes_no_live_key_and_gate_says_so(world):
    from indexer.gate import decide
    from trainer.evaluate import evaluate_model

    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-none"))
    assert "live" not in metrics
    decision = decide(world["config"], metrics)
    assert decision.publish and decision.baseline is None
    assert any("no live comparison" in r for r in decision.reasons)
    strict = world["config"].with_overrides({"gate.require_live_comparison": True})
    assert not decide(strict, metrics).publish


def test_live_metrics_equal_evaluating_the_live_model_directly(world):
    """Candidate == live: the live block equals the candidate's own metrics and a brute-force
    evaluation of the live towers; the gate passes and records the baseline."""
    from indexer.gate import decide
    from trainer.evaluate import evaluate_model

    version = world["first"]["version"]
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-same"),
                             live_store=world["store"])
    live = metrics["live"]
    assert live["version"] == version and live["n_items_missing"] == 0
    direct = _expected(_brute_ranks(_model_scores(world["good"]), mask_seen=True), "query")
    assert {k: live[k] for k in METRIC_KEYS} == pytest.approx(direct)
    assert {k: live[k] for k in METRIC_KEYS} == pytest.approx({k: metrics[k] for k in METRIC_KEYS})
    assert live["recall_at_10"] > 0.5  # the good model really is good

    decision = decide(world["config"], metrics)
    assert decision.publish
    assert decision.baseline == {"version": version, "recall_at_10": live["recall_at_10"]}
    assert decision.to_dict()["baseline"] == decision.baseline


def test_much_worse_candidate_is_refused_and_store_unchanged(world):
    from indexer.gate import decide
    from indexer.publish import gate_and_publish
    from trainer.evaluate import evaluate_model

    before = _store_state(world["store"])
    metrics = evaluate_model(world["config"], world["folder"], world["rand"], str(world["tmp"] / "eval-rand"),
                             live_store=world["store"])
    cand, live = metrics["recall_at_10"], metrics["live"]["recall_at_10"]
    assert cand < live * 0.95
    out = gate_and_publish(world["config"], world["folder"], world["rand"], world["emb"], world["index"],
                           metrics, "r-bad", {})
    assert out["published"] is False and out["version"] is None
    reason = next(r for r in out["reasons"] if "live version" in r)
    assert f"{cand:.4f}" in reason and f"{live:.4f}" in reason and "allowed 5.0%" in reason
    assert before[0] in reason
    assert _store_state(world["store"]) == before

    # A looser change threshold lets the same candidate through.
    loose = world["config"].with_overrides({"gate.max_relative_regression": 1.0})
    assert decide(loose, metrics).publish


def test_corrupt_live_version_is_reported_and_refused_by_default(world):
    """A live items.parquet that cannot be read: recorded as live.error, and the gate refuses
    by default (a broken comparison never publishes silently); publish_when_live_unusable lets
    it through, saying so; require_live_comparison refuses too."""
    from core.store import VersionStore
    from indexer.gate import decide
    from trainer.evaluate import evaluate_model

    root = str(world["tmp"] / "store-corrupt")
    shutil.copytree(world["store"], root)
    version = VersionStore(root).current()
    with open(os.path.join(VersionStore(root).version_path(version), "items.parquet"), "ab") as fh:
        fh.write(b"garbage")
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-corrupt"),
                             live_store=root)
    live = metrics["live"]
    assert live["version"] == version and "items.parquet" in live["error"]
    assert "recall_at_10" not in live

    default = decide(world["config"], metrics)
    assert not default.publish
    assert any(f"live version {version} could not be evaluated" in r and "refused" in r
               and "gate.publish_when_live_unusable" in r for r in default.reasons)
    assert default.baseline["version"] == version and default.baseline["recall_at_10"] is None
    lenient = decide(world["config"].with_overrides({"gate.publish_when_live_unusable": True}), metrics)
    assert lenient.publish
    assert any(f"live version {version} could not be evaluated" in r and "publishing without" in r
               for r in lenient.reasons)
    strict = decide(world["config"].with_overrides({"gate.require_live_comparison": True}), metrics)
    assert not strict.publish
    assert any("require_live_comparison" in r for r in strict.reasons)


def test_live_version_with_a_corrupt_query_tower_is_not_published_past(world, tmp_path, capfd):
    """CURRENT names a version whose query tower is damaged: evaluate records the error (with
    the traceback in its log) and publish, with default settings, refuses and leaves the store
    as it was."""
    from core.store import VersionStore
    from indexer.publish import gate_and_publish
    from trainer.evaluate import evaluate_model

    root = str(tmp_path / "store")
    shutil.copytree(world["store"], root)
    version = VersionStore(root).current()
    with open(os.path.join(VersionStore(root).version_path(version), "query_tower", "saved_model.pb"), "wb") as fh:
        fh.write(b"not a SavedModel")
    config = world["config"].with_overrides({"publish.store": root})
    metrics = evaluate_model(config, world["folder"], world["good"], str(tmp_path / "eval"), live_store=root)
    assert metrics["live"]["version"] == version and metrics["live"]["error"]
    assert f"live version {version} of {root} cannot be evaluated" in capfd.readouterr().err
    before = _store_state(root)
    out = gate_and_publish(config, world["folder"], world["good"], world["emb"], world["index"], metrics, "r-c", {})
    assert out["published"] is False and out["version"] is None
    assert any("could not be evaluated" in r and "refused" in r for r in out["reasons"])
    assert _store_state(root) == before


def test_a_bug_in_the_live_comparison_is_recorded_and_refused(world, monkeypatch, capfd):
    """Not only data problems: a bug (here a TypeError planted in the live scoring) is recorded
    with its type and traceback, and the default gate refuses on it."""
    import trainer.evaluate
    from indexer.gate import decide
    from trainer.evaluate import evaluate_model

    def broken(items_path, catalog_ids):
        raise TypeError("planted bug")

    monkeypatch.setattr(trainer.evaluate, "_live_item_embeddings", broken)
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-bug"),
                             live_store=world["store"])
    assert metrics["live"] == {"version": world["first"]["version"], "error": "TypeError: planted bug"}
    err = capfd.readouterr().err
    assert "Traceback" in err and "planted bug" in err
    decision = decide(world["config"], metrics)
    assert not decision.publish and any("TypeError: planted bug" in r for r in decision.reasons)


def test_a_store_without_current_is_the_only_silent_case(world, tmp_path):
    """No CURRENT (nothing published yet): live is None and the gate publishes as a first publish."""
    from indexer.gate import decide
    from trainer.evaluate import evaluate_model

    empty = str(tmp_path / "empty-store")
    os.makedirs(empty)
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(tmp_path / "eval"),
                             live_store=empty)
    assert metrics["live"] is None
    decision = decide(world["config"], metrics)
    assert decision.publish and "no live version: first publish has no baseline" in decision.reasons


def _publish_fake_live(root: str, query_tower: str, ids: list[str], matrix: np.ndarray) -> str:
    """A minimal live version: query_tower/ + items.parquet (item_id, embedding)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.store import VersionStore

    staging = os.path.join(os.path.dirname(root), os.path.basename(root) + "-staging")
    shutil.copytree(query_tower, os.path.join(staging, "query_tower"))
    n, d = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    table = pa.table({"item_id": pa.array(ids, type=pa.string()),
                      "embedding": pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=pa.float32()))})
    pq.write_table(table, os.path.join(staging, "items.parquet"))
    store = VersionStore(root)
    version = store.new_version_id()
    store.publish(version, staging, {})
    return version


def test_items_missing_from_the_live_catalog_cannot_be_hit(world):
    """Live knows only even items: odd relevant items are misses for it, exactly as when
    they are masked out of a brute-force ranking of the live towers."""
    from core.towers import Tower
    from trainer.evaluate import evaluate_model

    ids = item_ids()
    tower = Tower(os.path.join(world["good"], "item_tower"))
    matrix = tower.embed({"item_id": ids, "title": [""] * len(ids), "price": [0.0] * len(ids)})
    keep = list(range(0, len(ids), 2))
    root = str(world["tmp"] / "store-partial")
    version = _publish_fake_live(root, os.path.join(world["good"], "query_tower"),
                                 [ids[i] for i in keep], matrix[keep])
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-partial"),
                             live_store=root)
    live = metrics["live"]
    assert live["version"] == version and live["n_items_missing"] == len(ids) - len(keep)

    scores = _model_scores(world["good"]).astype(np.float64)
    scores[:, 1::2] = -np.inf  # never ranked above a known item
    ranks = [(u, p, 0 if p % 2 else r) for u, p, r in _brute_ranks(scores, mask_seen=True)]
    want = _expected([(u, p, r if r else 10_000) for u, p, r in ranks], "query")
    assert {k: live[k] for k in METRIC_KEYS} == pytest.approx(want)
    assert live["recall_at_10"] < metrics["recall_at_10"]


def test_incompatible_live_tower_is_an_error(world):
    """A live query tower whose inputs this run's queries lack -> live.error, not a crash."""
    from trainer.evaluate import evaluate_model

    text_tower = build_tower(str(world["tmp"] / "text_tower"), "text")
    ids = item_ids()
    root = str(world["tmp"] / "store-incompatible")
    version = _publish_fake_live(root, text_tower, ids, np.ones((len(ids), DIMS), dtype=np.float32))
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-incompat"),
                             live_store=root)
    assert metrics["live"]["version"] == version
    assert "query" in metrics["live"]["error"] and "KeyError" in metrics["live"]["error"]


def test_publish_refuses_a_comparison_made_against_a_version_no_longer_live(world, tmp_path):
    """Evaluate against the live v1, then another run publishes before our publish step:
    our gate verdict is stale, so nothing is published and the reason says why."""
    import shutil

    from indexer.publish import gate_and_publish
    from trainer.evaluate import evaluate_model

    store_root = str(tmp_path / "store")
    shutil.copytree(world["store"], store_root)
    config = world["config"].with_overrides({"publish.store": store_root})
    live_before = world["first"]["version"]
    metrics = evaluate_model(config, world["folder"], world["good"], str(tmp_path / "eval"), live_store=store_root)
    assert metrics["live"]["version"] == live_before
    rival = gate_and_publish(config, world["folder"], world["good"], world["emb"], world["index"], metrics,
                             "rival", {})
    assert rival["published"]  # the rival's comparison was current: it publishes
    before = _store_state(store_root)
    out = gate_and_publish(config, world["folder"], world["good"], world["emb"], world["index"], metrics,
                           "late", {})
    assert out["published"] is False
    assert any(f"compared against {live_before}, now {rival['version']}" in r for r in out["reasons"])
    assert _store_state(store_root) == before
