"""indexer: ScaNN vs numpy brute force, save/reload, Beam embedding, index stage, gate, publish.

The towers are tiny real SavedModels (``tests.support.indexer_models.build_tower``) with the trainer's contract:
raw named inputs -> {"embedding": float32 [B, D]}, L2-normalised. The item tower hashes
item_id to a fixed random vector, so its output is fully determined and cheap.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from core import storage
from core.config import Config, IndexConfig
from core.records import encode_example, interaction_specs
from tests.support.indexer_models import (DIMS, GOOD_METRICS, N_ITEMS, N_USERS, item_ids, make_config, write_models,
                                          write_transformed)


# ---------------------------------------------------------------- ScaNN vs brute force
def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(200, d))
    x = centers[rng.integers(0, 200, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def tree_index():
    from indexer.build import stand_in_queries
    from indexer.scann_index import build_searcher

    db = _clustered(20_000, 32)
    searcher, kind = build_searcher(db, IndexConfig(brute_force_below=1000), k=10)
    return db, searcher, kind, stand_in_queries(db, 300, seed=1)


def test_exact_mode_matches_numpy_exactly():
    from indexer.scann_index import BRUTE_FORCE, build_searcher, exact_topk, search

    rng = np.random.default_rng(3)
    db = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    searcher, kind = build_searcher(db, IndexConfig(brute_force_below=1000), k=10)
    assert kind == BRUTE_FORCE
    idx, scores = search(searcher, queries, 10, len(db))
    want_idx, want_scores = exact_topk(db, queries, 10)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # k beyond the catalog is clamped instead of padded.
    idx, _ = search(searcher, queries[:2], 900, len(db))
    assert idx.shape == (2, 500)


def test_tree_ah_recall_on_clustered_set(tree_index):
    from indexer.scann_index import TREE_AH, exact_topk, recall_vs_exact, search

    db, searcher, kind, queries = tree_index
    assert kind == TREE_AH
    found, _ = search(searcher, queries, 10, len(db))
    exact, _ = exact_topk(db, queries, 10)
    assert recall_vs_exact(found, exact) >= 0.9


def _tied_catalog() -> tuple[np.ndarray, np.ndarray]:
    """Hand-made ties: (db float32 [40, 4], query float32 [1, 4]).

    Against the query [1, 0, 0, 0]: rows 0, 1, 2 score 0.9, 0.8, 0.7; rows 3..22 are one
    identical vector scoring 0.5 (20 items tied for places 4..10); rows 23..39 score 0.1.
    """
    def unit(score, other):
        v = np.zeros(4)
        v[0], v[other] = score, np.sqrt(1 - score ** 2)
        return v

    rows = [unit(0.9, 1), unit(0.8, 2), unit(0.7, 3)] + [unit(0.5, 1)] * 20 + [unit(0.1, 2)] * 17
    return np.asarray(rows, dtype=np.float32), np.array([[1, 0, 0, 0]], dtype=np.float32)


def test_recall_counts_items_tied_with_the_kth_exact_score():
    from indexer.scann_index import exact_topk, recall_tie_aware, recall_vs_exact

    db, q = _tied_catalog()
    exact, scores = exact_topk(db, q, 10)
    assert exact[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] and scores[0, -1] == pytest.approx(0.5)
    other_ties = np.array([[0, 1, 2, 16, 17, 18, 19, 20, 21, 22]])  # as good: 7 other tied rows
    assert recall_vs_exact(other_ties, exact) == pytest.approx(0.3)
    assert recall_tie_aware(other_ties, exact, db, q) == 1.0
    # A row below the 10th exact score still counts as a miss; repeats and padding never count.
    one_wrong = np.array([[0, 1, 2, 16, 17, 18, 19, 20, 21, 30]])
    assert recall_tie_aware(one_wrong, exact, db, q) == pytest.approx(0.9)
    padded = np.array([[0, 0, 1, 2, 16, 17, 18, -1, 40, 1 << 40]])
    assert recall_tie_aware(padded, exact, db, q) == pytest.approx(0.6)
    assert recall_tie_aware(other_ties[:, :5], exact, db, q) == pytest.approx(0.5)  # fewer returned than k


def test_recall_without_ties_agrees_with_numpy_brute_force(tree_index):
    from indexer.scann_index import TIE_RTOL, exact_topk, exact_topk_chunked, recall_tie_aware, recall_vs_exact

    rng = np.random.default_rng(3)
    db = rng.normal(size=(500, 16))
    db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    scores = queries @ db.T
    ranking = np.argsort(-scores, axis=1, kind="stable")  # numpy brute force, every item
    ranked = np.take_along_axis(scores, ranking, axis=1)
    assert (ranked[:, 9] - ranked[:, 10]).min() > 1e-4  # no ties, not even near ones, at the 10th place
    exact, _ = exact_topk(db, queries, 10)
    # Ranks 3 and 8 swapped for ranks 10 and 11: 8 of the true top-10 under any definition.
    found = np.concatenate([ranking[:, :3], ranking[:, 4:8], ranking[:, 9:12]], axis=1)
    assert recall_vs_exact(found, exact) == recall_tie_aware(found, exact, db, queries) == pytest.approx(0.8)
    reference = exact_topk_chunked(db, queries, 10)  # the chunked argpartition reference is perfect
    assert recall_vs_exact(reference, exact) == recall_tie_aware(reference, exact, db, queries) == 1.0

    # An approximate answer on clustered data: tie-aware recall is the id overlap plus only the
    # retrieved items that score within TIE_RTOL of the 10th exact score (float near-ties).
    db, searcher, _, queries = tree_index
    exact, _ = exact_topk(db, queries, 10)
    # One leaf searched and no re-scoring: surely approximate (with the index's own settings it
    # found every neighbour of the 300 queries in some runs, and the check below had nothing to check).
    found = np.asarray(searcher.search_batched(queries, final_num_neighbors=10, leaves_to_search=1,
                                               pre_reorder_num_neighbors=10)[0], dtype=np.int64)
    extra = 0
    for f, e, q in zip(found, exact, queries.astype(np.float64)):
        exact_scores = db[e].astype(np.float64) @ q
        floor = exact_scores.min() - TIE_RTOL * max(abs(exact_scores.min()), abs(exact_scores[0]))
        extra += sum(float(db[i].astype(np.float64) @ q) >= floor for i in set(f.tolist()) - set(e.tolist()))
    overlap = recall_vs_exact(found, exact)
    assert overlap < 1.0
    assert recall_tie_aware(found, exact, db, queries) == pytest.approx(overlap + extra / found.size, abs=1e-9)


def test_measure_reports_recall_and_throughput(tree_index):
    from indexer.scann_index import measure

    db, searcher, _, queries = tree_index
    m = measure(searcher, db, queries, k=10, repeats=2, max_single_queries=50)
    assert set(m) == {"recall_at_10_vs_exact", "qps_batched", "qps_single", "qps_brute_force",
                      "speedup_vs_brute_force"}
    assert m["recall_at_10_vs_exact"] >= 0.9 and m["qps_batched"] > 0 and m["qps_single"] > 0
    assert m["qps_brute_force"] > 0
    assert m["speedup_vs_brute_force"] == pytest.approx(m["qps_batched"] / m["qps_brute_force"], rel=0.01)


@pytest.mark.parametrize("kind", ["brute_force", "tree_ah"])
def test_save_and_reload_give_identical_results(tmp_path, tree_index, kind):
    from indexer.scann_index import build_searcher, load_searcher, save_searcher

    db, tree, _, queries = tree_index
    searcher = tree if kind == "tree_ah" else build_searcher(db[:2000], IndexConfig(), k=10)[0]
    save_searcher(searcher, str(tmp_path / "scann"))
    # Relative asset paths: the folder still loads after being moved (as publish does).
    os.rename(tmp_path / "scann", tmp_path / "moved")
    reloaded = load_searcher(str(tmp_path / "moved"))
    a_idx, a_d = searcher.search_batched(queries, final_num_neighbors=10)
    b_idx, b_d = reloaded.search_batched(queries, final_num_neighbors=10)
    np.testing.assert_array_equal(a_idx, b_idx)
    np.testing.assert_array_equal(a_d, b_d)


def test_load_searcher_names_a_missing_folder(tmp_path):
    from indexer.scann_index import load_searcher

    with pytest.raises(FileNotFoundError, match="scann_assets.pbtxt"):
        load_searcher(str(tmp_path))


def test_resolve_params_defaults():
    from indexer.scann_index import resolve_params

    assert resolve_params(100, IndexConfig()).kind == "brute_force"
    p = resolve_params(40_000, IndexConfig(training_sample_size=10_000))
    assert (p.kind, p.num_leaves, p.num_leaves_to_search, p.training_sample_size) == ("tree_ah", 200, 20, 10_000)
    p = resolve_params(40_000, IndexConfig(num_leaves=50, num_leaves_to_search=7, reorder_k=33))
    assert (p.num_leaves, p.num_leaves_to_search, p.reorder_k) == (50, 7, 33)


# ---------------------------------------------------------------- embed + index stages
@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory):
    """transformed/, model/ and the Beam embed output, built once for this module."""
    from indexer.embed import embed_items

    tmp = tmp_path_factory.mktemp("stages")
    config = make_config(tmp)
    transformed = write_transformed(config, str(tmp / "transformed"))
    models = write_models(str(tmp / "model"))
    report = embed_items(config, transformed, models, str(tmp / "emb"))
    return config, tmp, transformed, models, str(tmp / "emb"), report


def test_embed_via_beam_equals_the_towers_own_outputs(stage_dirs):
    from core.towers import Tower
    from indexer.embeddings import load_embeddings

    config, _, _, models, emb, report = stage_dirs
    ids, matrix = load_embeddings(emb)
    assert ids == sorted(item_ids())  # every item once, sorted
    assert report["n_items"] == N_ITEMS and report["dims"] == DIMS
    assert report["seconds"] > 0 and report["items_per_second"] > 0
    tower = Tower(os.path.join(models, "item_tower"))
    want = tower.embed({"item_id": ids, "title": [""] * len(ids), "price": [0.0] * len(ids)})
    # Same vectors up to float32 rounding: oneDNN's reductions (the L2 normalisation)
    # round differently for different batch shapes, and Beam picks its own batch sizes.
    np.testing.assert_allclose(matrix, want, rtol=0, atol=1e-6)
    assert matrix.dtype == np.float32


def test_embeddings_round_trip_and_reject_duplicates(tmp_path):
    from indexer.embeddings import load_embeddings, write_embeddings

    m = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_embeddings(str(tmp_path), ["b", "c", "a"], m)
    ids, got = load_embeddings(str(tmp_path))
    assert ids == ["a", "b", "c"]
    np.testing.assert_array_equal(got, m[[2, 0, 1]])
    with pytest.raises(ValueError, match="duplicate"):
        write_embeddings(str(tmp_path), ["a", "a"], m[:2])


def write_split(config: Config, folder: str, split: str, users: list[int], shards: int = 1) -> None:
    """``<split>-*.tfrecord`` interactions: user u (age 20 + u) with items u and u + 1, in ``users`` order."""
    import tensorflow as tf

    specs = interaction_specs(config.schema)
    ids = item_ids()
    rows = [(u, i) for u in users for i in (u, u + 1)]
    for s in range(shards):
        with tf.io.TFRecordWriter(os.path.join(folder, f"{split}-{s:05d}-of-{shards:05d}.tfrecord")) as w:
            for u, i in rows[s::shards]:
                w.write(encode_example({"user_id": str(u), "age": float(20 + u), "item_id": ids[i],
                                        "title": f"thing {i}", "price": float(i) / 2}, specs))


def test_distinct_queries_fall_back_from_valid_to_test_to_train(tmp_path):
    from core.queries import first_split_with_queries

    config = make_config(tmp_path)
    folder = str(tmp_path / "t")
    os.makedirs(folder)
    assert first_split_with_queries(config.schema, folder) == (None, [], {})
    write_split(config, folder, "train", [1, 2])
    write_split(config, folder, "valid", [])  # an empty valid split: files, no examples
    write_split(config, folder, "test", [5, 3, 5], shards=2)
    split, keys, feats = first_split_with_queries(config.schema, folder)
    # Distinct keys in first-seen (file) order, the features of each key's first example.
    assert split == "test" and sorted(keys) == ["3", "5"] and set(feats) == {"user_id", "age"}
    assert [feats["age"][keys.index(k)] for k in ("3", "5")] == [23.0, 25.0]
    assert feats["age"].dtype == np.float32 and list(feats["user_id"]) == keys
    write_split(config, folder, "valid", [7])
    assert first_split_with_queries(config.schema, folder)[:2] == ("valid", ["7"])


def test_split_sample_sizes():
    from indexer.embed import split_sample_sizes

    assert split_sample_sizes(5000, 1000, 500) == (1000, 500)
    assert split_sample_sizes(12, 1000, 500) == (8, 4)  # both shrink in proportion, disjoint
    assert split_sample_sizes(2, 1000, 500) == (1, 1) and split_sample_sizes(1, 1000, 500) == (1, 0)
    assert split_sample_sizes(0, 1000, 500) == (0, 0)


def test_embed_writes_real_query_embeddings_that_the_index_stage_uses(stage_dirs, tmp_path):
    import shutil

    from core.towers import Tower
    from indexer.build import build_index_stage
    from indexer.embed import embed_items
    from indexer.embeddings import EVAL, TUNE, load_query_embeddings

    config, _, transformed, models, _, _ = stage_dirs
    config = config.with_overrides({"index.eval_queries": 500})  # tune_queries stays 1000
    folder = str(tmp_path / "transformed")
    shutil.copytree(transformed, folder)
    write_split(config, folder, "valid", list(range(N_USERS)))
    write_split(config, folder, "train", [0])  # valid wins: held-out queries first
    emb = str(tmp_path / "emb")
    report = embed_items(config, folder, models, emb)
    assert (report["query_split"], report["n_tune_queries"], report["n_eval_queries"]) == ("valid", 8, 4)
    assert report["n_items"] == N_ITEMS and report["query_seconds"] > 0

    got = load_query_embeddings(emb)
    assert got.split == ["valid"] * N_USERS and got.purpose == [TUNE] * 8 + [EVAL] * 4
    assert sorted(got.keys) == sorted(str(u) for u in range(N_USERS))  # disjoint, together all 12
    want = Tower(os.path.join(models, "query_tower")).embed(
        {"user_id": got.keys, "age": [20.0 + int(k) for k in got.keys]})
    np.testing.assert_allclose(got.matrix, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.rows(TUNE), got.matrix[:8])
    # Seeded: a rerun samples the same keys in the same order.
    embed_items(config, folder, models, str(tmp_path / "again"))
    assert load_query_embeddings(str(tmp_path / "again")).keys == got.keys

    metrics = build_index_stage(config, emb, str(tmp_path / "index"))
    assert (metrics["tune_queries"], metrics["query_split"]) == ("real", "valid")
    assert (metrics["n_tune_queries"], metrics["n_eval_queries"]) == (8, 4)
    assert metrics["tuning"]["recall_definition"] == "tie_aware" and metrics["recall_at_10_vs_exact"] == 1.0
    # The embed stage's map of those embeddings (its "eval" queries ringed) is drawn by the index stage.
    drawn = json.loads(storage.read_text(os.path.join(str(tmp_path / "index"), "embedding_map.json")))
    assert drawn == json.loads(storage.read_text(os.path.join(emb, "embedding_map.json")))
    assert len(drawn["items"]["x"]) == N_ITEMS and drawn["queries"]
    assert {q["key"] for q in drawn["queries"]} <= set(got.keys[8:])
    assert storage.read_text(os.path.join(str(tmp_path / "index"), "embedding_map.svg")).startswith("<svg")


def test_index_stage_writes_contract_files(stage_dirs):
    from indexer.build import build_index_stage, read_item_ids
    from indexer.embeddings import load_embeddings
    from indexer.scann_index import exact_topk, load_searcher

    config, tmp, _, _, emb, _ = stage_dirs
    out = str(tmp / "index")
    metrics = build_index_stage(config, emb, out)
    on_disk = json.loads(storage.read_text(os.path.join(out, "index_metrics.json")))
    assert on_disk == metrics
    for key in ("kind", "n_items", "dims", "recall_at_10_vs_exact", "qps_batched", "qps_single",
                "build_seconds"):
        assert key in metrics
    assert metrics["kind"] == "brute_force" and metrics["recall_at_10_vs_exact"] == 1.0
    # This transform output has no interaction splits: no query embeddings, stand-ins, flagged.
    assert metrics["tune_queries"] == "stand_in" and not os.path.exists(os.path.join(emb, "query_embeddings.parquet"))
    ids, matrix = load_embeddings(emb)
    assert read_item_ids(out) == ids
    searcher = load_searcher(os.path.join(out, "scann"))
    got, _ = searcher.search_batched(matrix[:5], final_num_neighbors=3)
    np.testing.assert_array_equal(got, exact_topk(matrix, matrix[:5], 3)[0])


# ---------------------------------------------------------------- gate
def test_gate_pass_and_fail_reasons(tmp_path):
    from publishing.gate import decide

    config = make_config(tmp_path, gate={"min_recall_at_10": 0.2})
    ok = decide(config, GOOD_METRICS)
    assert ok.publish
    assert any("0.3000 meets the minimum 0.2000" in r for r in ok.reasons)
    assert any("beats the popularity baseline's 0.1000" in r for r in ok.reasons)

    bad = decide(config, {**GOOD_METRICS, "recall_at_10": 0.1})
    assert not bad.publish
    assert any("0.1000 is below the minimum 0.2000" in r for r in bad.reasons)
    assert any("does not beat the popularity baseline's 0.1000" in r for r in bad.reasons)

    lenient = make_config(tmp_path, gate={"must_beat_popularity": False})
    assert decide(lenient, {**GOOD_METRICS, "recall_at_10": 0.05}).publish
    with pytest.raises(ValueError, match="popularity.recall_at_10"):
        decide(config, {"recall_at_10": 0.5})


# ---------------------------------------------------------------- gate + publish
def test_publish_skipped_when_gate_fails_leaves_store_untouched(stage_dirs):
    from publishing.publish import gate_and_publish

    config, tmp, transformed, models, emb, _ = stage_dirs
    config = config.with_overrides({"publish.store": str(tmp / "store-fail"), "gate.min_recall_at_10": 0.9})
    out = gate_and_publish(config, transformed, models, emb, str(tmp / "unused-index"), GOOD_METRICS,
                           run_id="r0", lineage={})
    assert out["published"] is False and out["version"] is None
    assert any("below the minimum 0.9000" in r for r in out["reasons"])
    assert not os.path.exists(tmp / "store-fail")


def test_publish_lays_out_a_verified_live_version(stage_dirs):
    import pyarrow.parquet as pq

    from indexer.build import build_index_stage
    from publishing.publish import gate_and_publish
    from indexer.store import VersionStore

    config, tmp, transformed, models, emb, _ = stage_dirs
    index_dir = str(tmp / "index-pub")
    build_index_stage(config, emb, index_dir)
    lineage = {"data_fingerprint": "abc", "config": config.to_json(), "code_version": "test", "run_id": "r1"}
    out = gate_and_publish(config, transformed, models, emb, index_dir, GOOD_METRICS, "r1", lineage)
    assert out["published"] and out["store"] == config.publish.store
    store = VersionStore(config.publish.store)
    assert store.current() == out["version"]
    manifest = store.verify(out["version"])
    assert manifest["run_id"] == "r1" and manifest["lineage"] == lineage
    assert manifest["metrics"] == GOOD_METRICS and manifest["gate"]["publish"] is True
    assert manifest["index"]["kind"] == "brute_force"
    assert manifest["serving"]["query_key"] == "user_id"
    files = set(manifest["files"])
    assert {"index/item_ids.txt", "index/scann/scann_assets.pbtxt", "items.parquet", "query_table.jsonl",
            "seen.jsonl", "query_tower/saved_model.pb"} <= files
    vdir = store.version_path(out["version"])
    table = pq.read_table(os.path.join(vdir, "items.parquet"))
    assert table.column_names == ["item_id", "title", "price", "embedding"]
    rows = table.to_pylist()
    assert [r["item_id"] for r in rows] == sorted(item_ids())
    assert rows[3]["title"] == "Thing #3" and rows[3]["price"] == 1.5 and len(rows[3]["embedding"]) == DIMS
