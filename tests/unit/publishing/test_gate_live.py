"""The quality gate against the LIVE version: evaluate scores the store's CURRENT version
on the same test split and protocol (``metrics["live"]``) and the gate refuses a candidate
more than ``gate.max_relative_regression`` below it.

Uses the planted evaluation folder of ``tests.support.evaluation`` and the tiny towers of
``tests.support.indexer_models``. The "good" model's query tower (``build_good_query_tower``)
maps user u straight onto item(u + 4)'s item-tower vector (its test item), so it ranks that
item first; the "random" model (``write_models``) scores items at random.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tests.support.evaluation import (brute_ranks, build_good_query_tower, expected_metrics, model_scores,
                                      write_eval_folder)
from tests.support.indexer_models import DIMS, build_tower, item_ids, make_config, write_models

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

METRIC_KEYS = ("recall_at_5", "recall_at_10", "ndcg_at_10")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Transform folder, good + random models, one embed/index, and a store whose first
    (and live) version is the good model, published through the gate."""
    from indexer.build import build_index_stage
    from indexer.embed import embed_items
    from publishing.publish import gate_and_publish
    from evaluation.evaluate import evaluate_model

    tmp = tmp_path_factory.mktemp("gate_live")
    config = make_config(tmp, evaluate={"ks": [5, 10], "ndcg_k": 10, "per": "query", "mask_seen": True},
                         gate={"must_beat_popularity": False})
    folder = str(tmp / "transformed")
    write_eval_folder(config, folder)
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
    from publishing.gate import decide
    from evaluation.evaluate import evaluate_model

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
    from publishing.gate import decide
    from evaluation.evaluate import evaluate_model

    version = world["first"]["version"]
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-same"),
                             live_store=world["store"])
    live = metrics["live"]
    assert live["version"] == version and live["n_items_missing"] == 0
    direct = expected_metrics(brute_ranks(model_scores(world["good"]), mask_seen=True), "query")
    assert {k: live[k] for k in METRIC_KEYS} == pytest.approx(direct)
    assert {k: live[k] for k in METRIC_KEYS} == pytest.approx({k: metrics[k] for k in METRIC_KEYS})
    assert live["recall_at_10"] > 0.5  # the good model really is good

    decision = decide(world["config"], metrics)
    assert decision.publish
    assert decision.baseline == {"version": version, "recall_at_10": live["recall_at_10"]}
    assert decision.to_dict()["baseline"] == decision.baseline


def test_much_worse_candidate_is_refused_and_store_unchanged(world):
    from publishing.gate import decide
    from publishing.publish import gate_and_publish
    from evaluation.evaluate import evaluate_model

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
    from publishing.gate import decide
    from evaluation.evaluate import evaluate_model

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
    from publishing.publish import gate_and_publish
    from evaluation.evaluate import evaluate_model

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
    import evaluation.evaluate
    from publishing.gate import decide
    from evaluation.evaluate import evaluate_model

    def broken(items_path, catalog_ids):
        raise TypeError("planted bug")

    monkeypatch.setattr(evaluation.evaluate, "_live_item_embeddings", broken)
    metrics = evaluate_model(world["config"], world["folder"], world["good"], str(world["tmp"] / "eval-bug"),
                             live_store=world["store"])
    assert metrics["live"] == {"version": world["first"]["version"], "error": "TypeError: planted bug"}
    err = capfd.readouterr().err
    assert "Traceback" in err and "planted bug" in err
    decision = decide(world["config"], metrics)
    assert not decision.publish and any("TypeError: planted bug" in r for r in decision.reasons)


def test_a_store_without_current_is_the_only_silent_case(world, tmp_path):
    """No CURRENT (nothing published yet): live is None and the gate publishes as a first publish."""
    from publishing.gate import decide
    from evaluation.evaluate import evaluate_model

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
    from evaluation.evaluate import evaluate_model

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

    scores = model_scores(world["good"]).astype(np.float64)
    scores[:, 1::2] = -np.inf  # never ranked above a known item
    ranks = [(u, p, 0 if p % 2 else r) for u, p, r in brute_ranks(scores, mask_seen=True)]
    want = expected_metrics([(u, p, r if r else 10_000) for u, p, r in ranks], "query")
    assert {k: live[k] for k in METRIC_KEYS} == pytest.approx(want)
    assert live["recall_at_10"] < metrics["recall_at_10"]


def test_incompatible_live_tower_is_an_error(world):
    """A live query tower whose inputs this run's queries lack -> live.error, not a crash."""
    from evaluation.evaluate import evaluate_model

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

    from publishing.publish import gate_and_publish
    from evaluation.evaluate import evaluate_model

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


# ---------------------------------------------------------------- sampled evaluation (evaluate.max_queries)


def test_sampled_live_comparison_uses_the_candidates_keys(world):
    """max_queries 6 of 12: the live version, the candidate and popularity are all scored on
    the same sample_keys users (each equals a brute-force evaluation over those users only);
    the paired difference is candidate minus live on them; the gate follows its noise rule."""
    from publishing.gate import decide
    from evaluation.evaluate import evaluate_model
    from core.sampling import sample_keys

    config = world["config"].with_overrides({"evaluate.max_queries": 6})
    users = {int(k) for k in sample_keys([str(u) for u in range(12)], 6, config.evaluate.seed)}
    metrics = evaluate_model(config, world["folder"], world["rand"], str(world["tmp"] / "eval-sampled"),
                             live_store=world["store"])
    assert (metrics["sampled"], metrics["n_queries"], metrics["n_queries_total"]) == (True, 6, 12)
    live = metrics["live"]

    def on_sample(models: str) -> dict:
        ranks = brute_ranks(model_scores(models), mask_seen=True)
        return expected_metrics([r for r in ranks if r[0] in users], "query")

    assert {k: live[k] for k in METRIC_KEYS} == pytest.approx(on_sample(world["good"]))
    assert {k: metrics[k] for k in METRIC_KEYS} == pytest.approx(on_sample(world["rand"]))
    for k in METRIC_KEYS:
        assert live["diff"][k]["mean"] == pytest.approx(metrics[k] - live[k], abs=1e-12)
        lo, hi = live["diff"][k]["ci95"]
        assert lo <= live["diff"][k]["mean"] <= hi and hi - lo > 0  # sampled: a real interval
        assert live["ci95"][k][0] <= live[k] <= live["ci95"][k][1]

    decision = decide(config, metrics)
    floor = live["recall_at_10"] * 0.95
    allowed = live["recall_at_10"] * 0.05
    assert decision.publish == (metrics["recall_at_10"] >= floor
                                or live["diff"]["recall_at_10"]["ci95"][1] >= -allowed)
    assert decision.baseline["diff_ci95"] == live["diff"]["recall_at_10"]["ci95"]
    reason = next(r for r in decision.reasons if "live version" in r)
    assert "6 of 12 test queries sampled" in reason

    # The candidate == live on the sample: a zero paired difference; 6 sampled queries that all
    # agree bound the unseen ones by the rule of three only (3/6 of the range either way).
    same = evaluate_model(config, world["folder"], world["good"], str(world["tmp"] / "eval-sampled-same"),
                          live_store=world["store"])
    assert same["live"]["diff"]["recall_at_10"] == {"mean": 0.0, "ci95": [-0.5, 0.5]}
    assert decide(config, same).publish


def _sampled_metrics(recall: float, live_recall: float, diff_ci: tuple[float, float], **extra) -> dict:
    """A metrics.json of a sampled evaluation (2,000 of 50,000 keys) against live version v1."""
    lo, hi = diff_ci
    return {"recall_at_10": recall, "ci95": {"recall_at_10": [recall - 0.02, recall + 0.02]},
            "popularity": {"recall_at_10": 0.05, "diff": {"recall_at_10": {"mean": recall - 0.05,
                                                                           "ci95": [recall - 0.07, recall - 0.03]}}},
            "sampled": True, "n_queries": 2000, "n_queries_total": 50_000,
            "live": {"version": "v1", "recall_at_10": live_recall, "ci95": {"recall_at_10": [0.28, 0.32]},
                     "diff": {"recall_at_10": {"mean": recall - live_recall, "ci95": [lo, hi]}}},
            **extra}


def test_paired_gate_refuses_a_clear_regression_and_passes_one_inside_the_noise(tmp_path):
    """Live 0.30, allowed drop 5% (floor 0.285, allowance 0.015)."""
    from publishing.gate import decide

    config = make_config(tmp_path, gate={"must_beat_popularity": True, "max_relative_regression": 0.05})

    # 0.20: 0.10 below live, the whole paired interval far below the allowed -0.015: refused.
    clear = decide(config, _sampled_metrics(0.20, 0.30, (-0.12, -0.08)))
    assert not clear.publish
    reason = clear.reasons[-1]
    assert "not sampling noise" in reason and "[-0.1200, -0.0800]" in reason and "2,000 of 50,000" in reason
    assert clear.baseline == {"version": "v1", "recall_at_10": 0.30, "diff_ci95": [-0.12, -0.08]}

    # Just beyond the floor on the estimate, but the regression beyond it is not established.
    noisy = decide(config, _sampled_metrics(0.28, 0.30, (-0.035, -0.005)))
    assert noisy.publish
    assert "more than the allowed 5.0%" in noisy.reasons[-1] and "may be sampling noise" in noisy.reasons[-1]
    # The same estimates from an exact evaluation are refused: no noise to allow for.
    exact = _sampled_metrics(0.28, 0.30, (-0.02, -0.02), sampled=False, n_queries_total=2000)
    assert not decide(config, exact).publish
    # The interval's upper end just below the allowance: refused.
    assert not decide(config, _sampled_metrics(0.28, 0.30, (-0.035, -0.0151))).publish

    # Within the allowance on the estimate: publishes whatever the interval.
    assert decide(config, _sampled_metrics(0.29, 0.30, (-0.04, 0.02))).publish
    # The other rules quote their intervals.
    assert any("95% interval [0.2600, 0.3000]" in r for r in noisy.reasons)
    assert any("model - popularity 95% interval [+0.2100, +0.2500]" in r for r in noisy.reasons)

    broken = _sampled_metrics(0.28, 0.30, (-0.03, 0.0))
    del broken["live"]["diff"]
    with pytest.raises(ValueError, match="diff.recall_at_10"):
        decide(config, broken)
