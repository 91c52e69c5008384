"""evaluation.evaluate: protocol options (mask_seen, per), popularity slices, metrics.json.

A tiny transform-output folder with hand-known test pairs, popularity slices and seen sets,
and the tiny tower SavedModels: the planted world is described in ``tests.support.evaluation``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.support.evaluation import (COUNTS, brute_ranks, expected_metrics, model_scores, planted_test_pairs,
                                      write_eval_folder)
from tests.support.indexer_models import N_USERS, item_ids, make_config, write_models

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

METRICS = ("recall_at_5", "recall_at_10", "ndcg_at_10")
SLICE_OF = {"head": {0}, "torso": set(range(1, 7)), "tail": set(range(7, 22)), "cold": set(range(22, 60))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    config = make_config(tmp)
    folder = str(tmp / "transformed")
    write_eval_folder(config, folder)
    models = write_models(str(tmp / "models"))
    return {"tmp": tmp, "folder": folder, "models": models}


def _slice_hits(ranks) -> dict[str, float]:
    return {name: np.mean([r <= 10 for _, p, r in ranks if p in members]) for name, members in SLICE_OF.items()}


@pytest.mark.slow
@pytest.mark.parametrize("per,mask_seen", [("query", True), ("interaction", False)])
def test_evaluate_model_follows_the_configured_protocol(setup, per, mask_seen):
    from evaluation.evaluate import evaluate_model

    config = make_config(setup["tmp"], evaluate={"ks": [5, 10], "ndcg_k": 10, "per": per,
                                                 "mask_seen": mask_seen, "slices": True})
    out = setup["tmp"] / f"eval-{per}"
    got = evaluate_model(config, setup["folder"], setup["models"], str(out))
    assert json.loads((out / "metrics.json").read_text()) == got
    assert got["protocol"] == {"per": per, "mask_seen": mask_seen, "split": "leave_last_out"}
    assert (got["n_queries"], got["n_items"], got["n_pairs"]) == (N_USERS, 60, 21)

    model = brute_ranks(model_scores(setup["models"]), mask_seen)
    pop = brute_ranks(np.tile(np.array(COUNTS, dtype=np.float64), (N_USERS, 1)), mask_seen)
    assert ({k: got[k] for k in ("recall_at_5", "recall_at_10", "ndcg_at_10")}
            == pytest.approx(expected_metrics(model, per)))
    assert {k: got["popularity"][k] for k in METRICS} == pytest.approx(expected_metrics(pop, per))
    # Every key scored: exact numbers, zero-width intervals, paired differences = differences.
    assert (got["sampled"], got["n_queries_total"]) == (False, N_USERS)
    assert got["ci95"] == {k: [got[k], got[k]] for k in METRICS}
    assert got["popularity"]["ci95"] == {k: [got["popularity"][k]] * 2 for k in METRICS}
    for k in METRICS:
        diff = got["popularity"]["diff"][k]
        assert diff["mean"] == pytest.approx(got[k] - got["popularity"][k], abs=1e-12)
        assert diff["ci95"] == [diff["mean"], diff["mean"]]

    slices = got["slices"]
    assert {name: s["n"] for name, s in slices.items()} == {"head": 6, "torso": 3, "tail": 9, "cold": 3}
    model_hits, pop_hits = _slice_hits(model), _slice_hits(pop)
    for name, s in slices.items():
        assert s["recall_at_10"] == pytest.approx(model_hits[name]), name
        assert s["popularity_recall_at_10"] == pytest.approx(pop_hits[name]), name
    assert slices["head"]["popularity_recall_at_10"] == 1.0  # item000 always ranks first for popularity
    assert slices["cold"]["popularity_recall_at_10"] == 0.0  # 22 non-zero items fill every top 10
    assert slices["cold"]["chance_recall_at_10"] == pytest.approx(10 / 60)


def test_masking_changes_what_is_ranked(setup):
    """mask_seen=false must not read or apply seen.jsonl: the masked lists are empty."""
    from trainer.evalset import load_catalog, load_queries
    from evaluation.evaluate import mask_splits_for

    config = make_config(setup["tmp"])
    catalog = load_catalog(config, setup["folder"])
    off = load_queries(config, setup["folder"], "test", mask_splits_for(False), catalog)
    on = load_queries(config, setup["folder"], "test", mask_splits_for(True), catalog)
    assert all(len(m) == 0 for m in off.masked)
    index = catalog.index
    u0 = on.keys.index("0")
    # user 0: items 0..3 seen, item000 is also relevant (a repeat) so it stays rankable.
    assert sorted(catalog.ids[i] for i in on.masked[u0]) == ["item001", "item002", "item003"]
    assert sorted(on.relevant[u0].tolist()) == [index["item000"], index["item004"]]


def test_catalog_popularity_slices(setup):
    from trainer.evalset import catalog_popularity, load_catalog

    config = make_config(setup["tmp"])
    catalog = load_catalog(config, setup["folder"])
    counts, slices = catalog_popularity(setup["folder"], catalog)
    by_id = dict(zip(catalog.ids, zip(counts.tolist(), slices.tolist())))
    ids = item_ids()
    for name, members in SLICE_OF.items():
        for pos in members:
            assert by_id[ids[pos]] == (COUNTS[pos], name), ids[pos]


def test_slice_report_adds_popularity_and_chance():
    from evaluation.evaluate import slice_report
    from core.metrics import rank_relevant

    relevant = [np.array([1, 3]), np.array([0])]
    masked = [np.array([0]), np.array([4])]
    model = rank_relevant(np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]]), relevant, masked, 2)
    # Popularity ranks item 3 first for both queries (item 4 masked for q1, item 0 for q0).
    pop = rank_relevant(np.tile([0.1, 0.2, 0.3, 0.9, 0.0], (2, 1)), relevant, masked, 2)
    got = slice_report(model, pop, np.array(["cold", "head", "tail", "head", "torso"]), k=2)
    assert got["head"] == {"recall_at_2": 0.5, "popularity_recall_at_2": 0.5, "n": 2}
    assert got["cold"] == {"recall_at_2": 0.0, "popularity_recall_at_2": 0.0, "n": 1,
                           "chance_recall_at_2": pytest.approx(2 / 5)}
    assert got["torso"]["n"] == 0 and got["torso"]["recall_at_2"] is None


def test_summary_threads_slices_and_keeps_existing_keys():
    from core.summary import build_summary

    metrics = {"recall_at_10": 0.3, "ndcg_at_10": 0.2, "popularity": {"recall_at_10": 0.1}, "n_queries": 5,
               "protocol": {"per": "query", "mask_seen": True, "split": "hashed"},
               "slices": {"head": {"recall_at_10": 0.5, "popularity_recall_at_10": 0.4, "n": 3}}}
    doc = build_summary("r", [{"stage": "evaluate", "seconds": 1.0}], metrics, {}, {"published": True})
    assert doc["metrics"] == {"recall_at_10": 0.3, "ndcg_at_10": 0.2, "popularity_recall_at_10": 0.1,
                              "n_queries": 5}
    assert doc["slices"] == metrics["slices"] and doc["slices"] is not metrics["slices"]
    assert build_summary("r", [], {}, {}, {})["slices"] is None


# ---------------------------------------------------------------- sampled evaluation (evaluate.max_queries)


def test_sample_keys_is_seeded_stable_and_uniform():
    from core.sampling import sample_keys

    keys = [f"user-{i}" for i in range(20)]
    got = sample_keys(keys, 5, seed=7)
    assert len(got) == 5 and got == [k for k in keys if k in set(got)]  # in the given order
    assert sample_keys(keys, 5, seed=7) == got  # same data, same seed: same keys
    assert sorted(sample_keys(keys[::-1], 5, seed=7)) == sorted(got)  # the set, not its order, decides
    assert set(got) <= set(sample_keys(keys, 9, seed=7))  # a larger sample keeps the smaller one
    assert sample_keys(keys, 20, seed=7) == keys and sample_keys(keys, 0, seed=7) == keys
    assert sample_keys(keys, None, seed=7) == keys
    # Uniform: over 2,000 seeds every key is kept about 5 / 20 of the time (binomial sd ~19 of 500).
    counts = {k: 0 for k in keys}
    for seed in range(2000):
        for k in sample_keys(keys, 5, seed):
            counts[k] += 1
    assert all(400 < c < 600 for c in counts.values()), counts


def _sampled_users(n: int, seed: int = 0) -> set[int]:
    from core.sampling import sample_keys

    return {int(k) for k in sample_keys([str(u) for u in range(N_USERS)], n, seed)}


@pytest.mark.parametrize("per", ["query", "interaction"])
def test_sampled_evaluation_scores_model_and_popularity_on_the_same_keys(setup, per):
    """max_queries 5 of 12 keys: both rankers are scored on exactly the sample_keys users
    (brute force over those users only), and the intervals bracket the estimates."""
    from evaluation.evaluate import evaluate_model

    config = make_config(setup["tmp"], evaluate={"ks": [5, 10], "ndcg_k": 10, "per": per, "max_queries": 5,
                                                 "seed": 3})
    got = evaluate_model(config, setup["folder"], setup["models"], str(setup["tmp"] / f"eval-sampled-{per}"))
    users = _sampled_users(5, seed=3)
    assert (got["sampled"], got["n_queries"], got["n_queries_total"]) == (True, 5, N_USERS)
    assert got["n_pairs"] == sum(u in users for u, _ in planted_test_pairs())
    assert got["sampling"]["max_queries"] == 5 and got["sampling"]["seed"] == 3
    model = [r for r in brute_ranks(model_scores(setup["models"]), True) if r[0] in users]
    pop = [r for r in brute_ranks(np.tile(np.array(COUNTS, dtype=np.float64), (N_USERS, 1)), True)
           if r[0] in users]
    assert {k: got[k] for k in METRICS} == pytest.approx(expected_metrics(model, per))
    assert {k: got["popularity"][k] for k in METRICS} == pytest.approx(expected_metrics(pop, per))
    assert sum(s["n"] for s in got["slices"].values()) == got["n_pairs"]  # slices over the same pairs
    for k in METRICS:
        lo, hi = got["ci95"][k]
        assert 0.0 <= lo <= got[k] <= hi <= 1.0
        diff = got["popularity"]["diff"][k]
        assert diff["mean"] == pytest.approx(got[k] - got["popularity"][k], abs=1e-12)
        assert -1.0 <= diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1] <= 1.0
    again = evaluate_model(config, setup["folder"], setup["models"], str(setup["tmp"] / f"eval-again-{per}"))
    assert again == got  # deterministic: the same keys, the same numbers


def test_max_queries_at_or_above_the_keys_is_the_exact_evaluation_bit_for_bit(setup):
    from evaluation.evaluate import evaluate_model

    runs = {}
    for max_queries in (0, N_USERS, 10_000):
        config = make_config(setup["tmp"], evaluate={"ks": [5, 10], "ndcg_k": 10, "max_queries": max_queries})
        got = evaluate_model(config, setup["folder"], setup["models"], str(setup["tmp"] / f"eval-max-{max_queries}"))
        assert got.pop("sampling")["max_queries"] == max_queries
        runs[max_queries] = got
    assert runs[0] == runs[N_USERS] == runs[10_000]  # == on floats: bit for bit
    assert runs[0]["sampled"] is False and runs[0]["n_queries"] == runs[0]["n_queries_total"] == N_USERS


def test_load_queries_keeps_the_sample_keys_sample(setup):
    """The one sampling definition behind evaluate.max_queries and train.max_eval_queries."""
    from trainer.evalset import load_catalog, load_queries
    from core.sampling import sample_keys

    config = make_config(setup["tmp"])
    catalog = load_catalog(config, setup["folder"])
    every = load_queries(config, setup["folder"], "test", ("train", "valid"), catalog)
    some = load_queries(config, setup["folder"], "test", ("train", "valid"), catalog, max_queries=4, seed=11)
    assert some.keys == sample_keys(every.keys, 4, 11) and (some.n_total, some.sampled) == (N_USERS, True)
    assert (every.n_total, every.sampled) == (N_USERS, False)
    for i, key in enumerate(some.keys):
        j = every.keys.index(key)
        assert some.relevant[i].tolist() == every.relevant[j].tolist()
        assert some.masked[i].tolist() == every.masked[j].tolist()
        assert {name: col[i] for name, col in some.features.items()} == \
            {name: col[j] for name, col in every.features.items()}


def test_report_of_a_sampled_evaluation_shows_the_intervals(tmp_path):
    from reports import write_stage_report

    metrics = {"recall_at_10": 0.3, "ndcg_at_10": 0.2,
               "ci95": {"recall_at_10": [0.29, 0.31], "ndcg_at_10": [0.19, 0.21]},
               "popularity": {"recall_at_10": 0.1, "ndcg_at_10": 0.05,
                              "ci95": {"recall_at_10": [0.09, 0.11], "ndcg_at_10": [0.04, 0.06]},
                              "diff": {"recall_at_10": {"mean": 0.2, "ci95": [0.19, 0.21]},
                                       "ndcg_at_10": {"mean": 0.15, "ci95": [0.14, 0.16]}}},
               "sampled": True, "n_queries": 20_000, "n_queries_total": 100_000, "n_items": 100_000,
               "n_pairs": 40_000, "sampling": {"max_queries": 20_000, "seed": 0, "interval": "normal approx"},
               "protocol": {"per": "query", "mask_seen": True, "split": "hashed"},
               "live": {"version": "v1", "recall_at_10": 0.31, "ndcg_at_10": 0.21, "n_items_missing": 0,
                        "ci95": {"recall_at_10": [0.3, 0.32], "ndcg_at_10": [0.2, 0.22]},
                        "diff": {"recall_at_10": {"mean": -0.01, "ci95": [-0.015, -0.005]},
                                 "ndcg_at_10": {"mean": -0.01, "ci95": [-0.02, 0.0]}}}}
    (tmp_path / "stage.json").write_text(json.dumps({"stage": "evaluate", "seconds": 1.0, "result": metrics}))
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    md = open(write_stage_report("evaluate", str(tmp_path))["markdown"]).read().replace("\\", "")  # md escapes
    assert "Sampled queries: 95% intervals" in md and "20,000 of the 100,000 test queries" in md
    assert "[0.2900, 0.3100]" in md and "+0.2000 [0.1900, 0.2100]" in md and "-0.0100 [-0.0150, -0.0050]" in md
