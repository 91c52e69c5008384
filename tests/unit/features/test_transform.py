"""Beam transform on tiny hand-made data whose splits, vocabularies and fills are worked out by hand.

Two real pipeline runs are shared by every test (module-scoped fixtures): a user-keyed
leave-last-out set and a search-keyed hashed set.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from core.config import Config  # noqa: E402
from core.records import decode_example, interaction_specs, item_specs  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.transform import hashed_bucket, item_bucket, run_transform  # noqa: E402
from tests.support.transform_data import INTERACTIONS, ITEMS, USERS, USER_SCHEMA, read_vocab  # noqa: E402


SEARCH_SCHEMA = {
    "query_key": "query",
    "query_features": [{"name": "query", "type": "text"}],
    "item_features": [{"name": "brand", "type": "categorical"}, {"name": "price", "type": "numeric"}],
}


def _config(path: Path, schema: dict, **overrides) -> Config:
    raw = {"data": {"path": str(path)}, "schema": schema, "publish": {"store": str(path / "store")}}
    cfg = Config.model_validate(raw)
    return cfg.with_overrides(overrides) if overrides else cfg


def _records(out: Path, name: str, specs) -> list[dict]:
    import tensorflow as tf

    files = sorted(glob.glob(str(out / f"{name}-*.tfrecord")))
    assert files, f"no {name}-*.tfrecord"
    return [decode_example(r.numpy(), specs) for r in tf.data.TFRecordDataset(files)]


def _pairs(rows: list[dict], key: str = "user_id") -> set[tuple[str, str]]:
    return {(r[key], r["item_id"]) for r in rows}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """(config, out_dir, stats) of one leave-last-out run over the tables above."""
    return _run_user_tables(tmp_path_factory.mktemp("user"), INTERACTIONS, **{"transform.split": "auto"})


def _run_user_tables(root: Path, interactions: pd.DataFrame, **overrides):
    """Write ITEMS, USERS and ``interactions`` as CSV under ``root``, ingest and transform them
    with USER_SCHEMA and ``overrides``; returns (config, out_dir, stats)."""
    src = root / "src"
    src.mkdir()
    ITEMS.to_csv(src / "items.csv", index=False)
    USERS.to_csv(src / "users.csv", index=False)
    interactions.to_csv(src / "interactions.csv", index=False)
    cfg = _config(src, USER_SCHEMA, **overrides)
    ingest(cfg, str(root / "ingested"))
    stats = run_transform(cfg, str(root / "ingested"), str(root / "out"))
    return cfg, root / "out", stats


def _search_tables(n: int = 3000) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(7)
    items = pd.DataFrame({"item_id": [f"p{i}" for i in range(50)],
                          "brand": [f"B{i % 5}" for i in range(50)], "price": rng.random(50)})
    inter = pd.DataFrame({
        "query": [f"Query #{i % 400}" for i in range(n)],
        "item_id": [f"p{i}" for i in rng.integers(0, 50, n)],
        "rating": rng.integers(1, 6, n).astype(float),
    })
    return {"items": items, "interactions": inter}


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """(config, out_dir, stats, interactions) of one hashed run with a min_rating filter."""
    root = tmp_path_factory.mktemp("search")
    src = root / "src"
    src.mkdir()
    tables = _search_tables()
    for name, df in tables.items():
        df.to_parquet(src / f"{name}.parquet", index=False)
    cfg = _config(src, SEARCH_SCHEMA, **{"data.min_rating": 3, "transform.seed": 11})
    ingest(cfg, str(root / "ingested"))
    stats = run_transform(cfg, str(root / "ingested"), str(root / "out"))
    return cfg, root / "out", stats, tables["interactions"]


# ------------------------------------------------------------------ leave-last-out run


def test_display_table_keeps_raw_values(user_run):
    _, out, _ = user_run
    rows = {r["item_id"]: r for r in _jsonl(out / "items_display.jsonl")}
    assert sorted(rows) == ["i1", "i2", "i3", "i4", "i5"]
    # as ingested: not normalised (the towers see "the matrix"), a missing price stays null
    assert rows["i1"] == {"item_id": "i1", "title": "The Matrix!", "price": 10.0}
    assert rows["i2"]["title"] == "Toy  Story"
    assert rows["i3"]["price"] is None


def test_outputs_are_exactly_the_contract_files(user_run):
    _, out, _ = user_run
    names = sorted(os.path.relpath(p, out) for p in glob.glob(str(out / "**"), recursive=True)
                   if os.path.isfile(p))
    assert names == [
        "cold_items.txt", "items-00000-of-00001.tfrecord", "items_display.jsonl", "query_table.jsonl",
        "seen.jsonl", "stats.json",
        "test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
        "train_negatives-00000-of-00001.tfrecord", "valid-00000-of-00001.tfrecord",
        "vocab/gender.tsv", "vocab/genres.tsv", "vocab/item_id.tsv", "vocab/title.tsv", "vocab/user_id.tsv",
    ]


def test_leave_last_out_split_membership(user_run):
    cfg, out, stats = user_run
    specs = interaction_specs(cfg.schema)
    assert _pairs(_records(out, "train", specs)) == {
        ("u1", "i4"), ("u1", "i1"), ("u2", "i1"), ("u2", "i2"), ("u4", "i3"), ("u5", "i2"),
        ("u6", "i3")}
    assert _pairs(_records(out, "valid", specs)) == {("u1", "i2"), ("u6", "i1")}
    assert _pairs(_records(out, "test", specs)) == {("u1", "i3"), ("u6", "i2")}
    assert stats["split"] == "leave_last_out"
    assert stats["counts"] == {"train": 7, "valid": 2, "test": 2, "train_negatives": 1,
                               "items": 5, "queries": 6, "cold_items": 0}
    assert (out / "cold_items.txt").read_text() == ""  # no cold items unless asked for


def test_label_zero_rows_only_in_train_negatives(user_run):
    cfg, out, _ = user_run
    negatives = _records(out, "train_negatives", interaction_specs(cfg.schema))
    assert _pairs(negatives) == {("u1", "i2")}
    assert negatives[0]["title"] == "toy story"  # negatives carry the item features too


def test_features_are_cleaned_and_numerics_filled(user_run):
    cfg, out, stats = user_run
    # age: train rows u1, u1 (30), u5 (60); u2/u4/u6 missing -> mean 40 (not the users' mean 46.7).
    assert stats["numeric"]["age"]["mean"] == pytest.approx(40.0)
    assert stats["numeric"]["price"]["mean"] == pytest.approx(25.0)
    train = {(r["user_id"], r["item_id"]): r for r in _records(out, "train", interaction_specs(cfg.schema))}
    assert train[("u1", "i1")] == {"user_id": "u1", "age": 30.0, "gender": "F", "item_id": "i1",
                                   "title": "the matrix", "genres": "Action|Sci-Fi", "price": 10.0}
    assert train[("u2", "i2")]["age"] == pytest.approx(40.0)
    assert train[("u4", "i3")]["gender"] == "" and train[("u4", "i3")]["age"] == pytest.approx(40.0)
    assert train[("u4", "i3")]["price"] == pytest.approx(25.0)
    items = {r["item_id"]: r for r in _records(out, "items", item_specs(cfg.schema))}
    assert sorted(items) == ["i1", "i2", "i3", "i4", "i5"]
    assert items["i2"]["title"] == "toy story"
    assert items["i3"]["price"] == pytest.approx(25.0)
    assert items["i5"]["genres"] == ""


def test_vocabularies_by_hand(user_run):
    _, out, stats = user_run
    assert read_vocab(out, "user_id") == [("u1", 2), ("u2", 2), ("u4", 1), ("u5", 1), ("u6", 1)]
    assert read_vocab(out, "gender") == [("M", 3), ("F", 2)]  # u4's missing gender is not a token
    # The whole catalog with train counts, zero included (the popularity table).
    assert read_vocab(out, "item_id") == [("i1", 2), ("i2", 2), ("i3", 2), ("i4", 1), ("i5", 0)]
    assert read_vocab(out, "genres") == [("Action", 2), ("Animation", 1), ("Comedy", 1), ("Drama", 1),
                                     ("Sci-Fi", 1)]
    assert read_vocab(out, "title") == [("matrix", 2), ("alien", 1), ("heat", 1), ("reloaded", 1),
                                    ("story", 1), ("the", 1), ("toy", 1)]
    assert stats["vocab_sizes"] == {"gender": 2, "genres": 5, "item_id": 5, "title": 7, "user_id": 5}


def test_seen_lists_positives_per_split(user_run):
    _, out, _ = user_run
    assert _jsonl(out / "seen.jsonl") == [
        {"key": "u1", "train": ["i1", "i4"], "valid": ["i2"], "test": ["i3"]},
        {"key": "u2", "train": ["i1", "i2"], "valid": [], "test": []},
        {"key": "u4", "train": ["i3"], "valid": [], "test": []},
        {"key": "u5", "train": ["i2"], "valid": [], "test": []},
        {"key": "u6", "train": ["i3"], "valid": ["i1"], "test": ["i2"]},
    ]


def test_query_table_includes_users_without_interactions(user_run):
    _, out, _ = user_run
    assert _jsonl(out / "query_table.jsonl") == [
        {"user_id": "u1", "age": 30.0, "gender": "F"},
        {"user_id": "u2", "age": 40.0, "gender": "M"},
        {"user_id": "u3", "age": 50.0, "gender": "F"},
        {"user_id": "u4", "age": 40.0, "gender": ""},
        {"user_id": "u5", "age": 60.0, "gender": "M"},
        {"user_id": "u6", "age": 40.0, "gender": ""},
    ]


def test_stats_json_matches_return_value(user_run):
    _, out, stats = user_run
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk == {k: v for k, v in stats.items() if k not in ("seconds", "beam_workers")}
    assert stats["beam_workers"] == 1  # the default: in-process
    assert set(on_disk["numeric"]["age"]) == {"mean", "std", "min", "max", "count"}
    assert stats["seconds"] > 0


# ------------------------------------------------------------------ cold items (leave-last-out)

# transform.seed 3, cold_item_fraction 0.2: item buckets md5("3\x1f<id>") are
# i1 0.412, i2 0.580, i3 0.185, i4 0.695, i5 0.334 -> only i3 is cold.
COLD_SEED, COLD_FRACTION = 3, 0.2
# Plus a label-0 row on the cold item, which must not reach train_negatives.
COLD_INTERACTIONS = pd.concat([INTERACTIONS, pd.DataFrame({
    "user_id": ["u2"], "item_id": ["i3"], "label": [0], "timestamp": [500]})], ignore_index=True)


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    """(config, out_dir, stats) of a leave-last-out run holding i3 out as a cold item."""
    return _run_user_tables(tmp_path_factory.mktemp("cold"), COLD_INTERACTIONS, **{
        "transform.split": "leave_last_out", "transform.seed": COLD_SEED,
        "transform.cold_item_fraction": COLD_FRACTION})


def test_item_bucket_matches_the_hand_computed_cold_draw():
    buckets = {i: item_bucket(i, COLD_SEED) for i in ("i1", "i2", "i3", "i4", "i5")}
    assert [i for i, u in buckets.items() if u < COLD_FRACTION] == ["i3"]
    assert item_bucket("i3", COLD_SEED) != hashed_bucket("", "i3", COLD_SEED)  # not the split's draw


def test_cold_items_go_to_test_only(cold_run):
    cfg, out, stats = cold_run
    specs = interaction_specs(cfg.schema)
    # i3 removed before ordering: u1 keeps i4@50, i1@100, i2@200 (3 positives) -> train i4,
    # valid i1, test i2; u6 keeps i2@9, i1@9 (2 positives) -> both train; u4's only
    # positive is i3. Every i3 positive (u1, u4, u6) is then appended to test.
    assert _pairs(_records(out, "train", specs)) == {
        ("u1", "i4"), ("u2", "i1"), ("u2", "i2"), ("u5", "i2"), ("u6", "i1"), ("u6", "i2")}
    assert _pairs(_records(out, "valid", specs)) == {("u1", "i1")}
    assert _pairs(_records(out, "test", specs)) == {("u1", "i2"), ("u1", "i3"), ("u4", "i3"), ("u6", "i3")}
    # The label-0 (u2, i3) row is dropped; (u1, i2) is a warm item's negative and stays.
    assert _pairs(_records(out, "train_negatives", specs)) == {("u1", "i2")}
    assert stats["counts"] == {"train": 6, "valid": 1, "test": 4, "train_negatives": 1,
                               "items": 5, "queries": 6, "cold_items": 1}


def test_cold_items_stay_in_the_catalog_with_zero_train_count(cold_run):
    cfg, out, _ = cold_run
    assert (out / "cold_items.txt").read_text() == "i3\n"
    items = {r["item_id"] for r in _records(out, "items", item_specs(cfg.schema))}
    assert items == {"i1", "i2", "i3", "i4", "i5"}
    assert read_vocab(out, "item_id") == [("i2", 3), ("i1", 2), ("i4", 1), ("i3", 0), ("i5", 0)]
    # The item's content still reaches the item vocabularies (it is how a cold item is embedded).
    assert ("reloaded", 1) in read_vocab(out, "title")
    seen = {line["key"]: line for line in _jsonl(out / "seen.jsonl")}
    assert seen["u4"] == {"key": "u4", "train": [], "valid": [], "test": ["i3"]}


def test_item_tower_gives_cold_items_no_id_embedding(cold_run):
    """The item tower's id encoder reads the transform's item vocabulary: only items with
    train positives (i2, i1, i4) get an id row; the cold i3 and the never-rated i5 encode
    as zeros (content only), and item id dropout zeroes rows only in training."""
    from trainer.features import ItemIdEncoder, tf, trained_item_ids

    _, out, _ = cold_run
    assert trained_item_ids(str(out)) == ["i2", "i1", "i4"]
    enc = ItemIdEncoder(trained_item_ids(str(out)), 4, dropout=0.5, name="item_id_encoder")
    ids = tf.constant(["i1", "i2", "i3", "i4", "i5", "unknown"] * 100)
    zero = lambda e: tf.reduce_all(tf.equal(e, 0.0), axis=1).numpy().reshape(100, 6)  # noqa: E731
    served = zero(enc(ids))
    assert not served[:, [0, 1, 3]].any() and served[:, [2, 4, 5]].all()
    trained = zero(enc(ids, training=True))
    assert trained[:, [2, 4, 5]].all()
    assert 0.35 < trained[:, [0, 1, 3]].mean() < 0.65  # each warm row dropped with p = 0.5


def test_cold_items_in_hashed_split():
    """SplitInteractions(hashed) with cold items on a tiny in-process pipeline: cold rows are
    all test, the others follow the (key, item) hash exactly."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from core.beam import make_pipeline
    from core.config import TransformConfig
    from features.transform import SPLIT, SplitInteractions

    rows = [{"_key": f"k{k}", "item_id": item} for k in range(6) for item in ("i1", "i2", "i3", "i4", "i5")]

    def expected(row):
        if item_bucket(row["item_id"], COLD_SEED) < COLD_FRACTION:
            return "test"
        u = hashed_bucket(row["_key"], row["item_id"], COLD_SEED)
        return "test" if u < 0.2 else "valid" if u < 0.5 else "train"

    want = [(r["_key"], r["item_id"], expected(r)) for r in rows]
    assert {s for _, i, s in want if i == "i3"} == {"test"}
    assert {s for _, i, s in want if i != "i3"} == {"train", "valid", "test"}  # the hash still splits
    with make_pipeline(TransformConfig()) as p:
        got = (p | beam.Create(rows)
               | SplitInteractions("hashed", 0.3, 0.2, COLD_SEED, cold_item_fraction=COLD_FRACTION)
               | beam.Map(lambda r: (r["_key"], r["item_id"], r[SPLIT])))
        assert_that(got, equal_to(want))


# ------------------------------------------------------------------ hashed run (search keys)


def test_hashed_bucket_is_stable_and_uniform():
    assert hashed_bucket("q", "p1", 0) == hashed_bucket("q", "p1", 0)
    assert hashed_bucket("q", "p1", 0) != hashed_bucket("q", "p1", 1)
    values = np.array([hashed_bucket(f"k{i}", "x", 0) for i in range(20000)])
    assert 0.0 <= values.min() and values.max() < 1.0
    assert abs((values < 0.1).mean() - 0.1) < 0.01


def test_hashed_split_is_deterministic_and_proportional(search_run):
    cfg, out, stats, raw = search_run
    specs = interaction_specs(cfg.schema)
    splits = {s: _records(out, s, specs) for s in ("train", "valid", "test")}
    positives = raw[raw["rating"] >= 3]
    assert sum(len(v) for v in splits.values()) == len(positives)
    assert stats["split"] == "hashed"
    # Membership is exactly what the stable hash predicts (the seed is part of the hash).
    for name, rows in splits.items():
        for row in rows:
            u = hashed_bucket(row["query"], row["item_id"], 11)
            expected = "test" if u < 0.1 else "valid" if u < 0.2 else "train"
            assert expected == name
    for name, fraction in (("valid", 0.1), ("test", 0.1)):
        assert abs(len(splits[name]) / len(positives) - fraction) < 0.04


def test_search_keys_are_normalised_text(search_run):
    _, out, stats, raw = search_run
    table = _jsonl(out / "query_table.jsonl")
    assert table[0] == {"query": "query 0"}
    assert len(table) == raw["query"].nunique() == stats["counts"]["queries"]
    seen_keys = [line["key"] for line in _jsonl(out / "seen.jsonl")]
    assert seen_keys == sorted(seen_keys) and "query 0" in seen_keys
    assert stats["counts"]["train_negatives"] == 0
    assert read_vocab(out, "query")[0][0] == "query"  # every query contributes the token "query"
    assert [tok for tok, _ in read_vocab(out, "brand")] == ["B0", "B1", "B2", "B3", "B4"]


def test_vocab_caps_apply_but_not_to_item_ids():
    """The vocabulary rule (a pure function) with tight caps: categorical / text vocabularies
    take vocab_min_count and max_vocab_size; ids take neither (only max_id_vocab_size)."""
    from core.config import TransformConfig
    from features.transform import format_vocab, plan_vocab, vocab_policy

    entries = [("b", 1, 1), ("a", 3, 3), ("c", 3, 3), ("d", 2, 2)]
    tight = TransformConfig(max_vocab_size=2, vocab_min_count=2)
    kept, cov = plan_vocab(entries, vocab_policy("gender", "categorical", tight))
    assert format_vocab(kept) == "a\t3\nc\t3\n"
    assert (cov["distinct"], cov["kept"], cov["folded"], cov["interactions"]) == (4, 2, 2, None)
    kept, _ = plan_vocab(entries, vocab_policy("title", "text", TransformConfig(max_vocab_size=10,
                                                                                vocab_min_count=2)))
    assert format_vocab(kept) == "a\t3\nc\t3\nd\t2\n"
    # ids: neither the categorical cap nor the min count
    kept, cov = plan_vocab(entries, vocab_policy("user_id", "id", tight))
    assert len(kept) == 4 and cov["folded"] == 0 and cov["interactions"] == 9
    kept, _ = plan_vocab(entries + [("z", 0, 0)], vocab_policy("item_id", "id", TransformConfig(max_vocab_size=1)))
    assert len(kept) == 5  # the whole catalog, count 0 included


def test_rerun_over_previous_output_is_byte_identical(user_run, tmp_path):
    """Reruns are deterministic, and writing over an earlier output replaces it cleanly."""
    import shutil

    cfg, out, _ = user_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    (again / "seen.jsonl").write_text("stale\n")
    run_transform(cfg, str(out.parent / "ingested"), str(again))
    for rel in ("seen.jsonl", "query_table.jsonl", "stats.json", "vocab/item_id.tsv", "vocab/title.tsv"):
        assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())


# ------------------------------------------------------------------ MovieLens release year


def test_movielens_year_is_an_item_numeric_with_the_catalog_mean_for_unknown_dates(tmp_path):
    """The tiny raw MovieLens folder (tests/unit/datagen/test_datagen.py) through the converter, ingest
    and the transform with the shipped movielens config's schema: items 1, 2, 4 were released in
    1995, 1995, 1996; item 3 has no release date, so its year is the catalog mean
    (1995 + 1995 + 1996) / 3 = 1995.333..., on the item records and on its interaction."""
    from core.config import load_config
    from datagen.movielens import convert_movielens
    from tests.support.movielens_raw import write_raw

    convert_movielens(str(write_raw(tmp_path / "raw")), str(tmp_path / "data"))
    cfg = load_config("movielens",
                      [f"data.path={tmp_path / 'data'}", f"publish.store={tmp_path / 'store'}"])
    assert {"name": "year", "type": "numeric"} in [f.model_dump() for f in cfg.schema.item_features]
    ingest(cfg, str(tmp_path / "ingested"))
    stats = run_transform(cfg, str(tmp_path / "ingested"), str(tmp_path / "out"))
    mean = (1995 + 1995 + 1996) / 3
    assert stats["numeric"]["year"]["count"] == 3
    assert stats["numeric"]["year"]["mean"] == pytest.approx(mean)
    assert (stats["numeric"]["year"]["min"], stats["numeric"]["year"]["max"]) == (1995.0, 1996.0)
    items = {r["item_id"]: r["year"] for r in _records(tmp_path / "out", "items", item_specs(cfg.schema))}
    assert items == pytest.approx({"1": 1995.0, "2": 1995.0, "3": mean, "4": 1996.0})
    rows = [r for split in ("train", "valid", "test")
            for r in _records(tmp_path / "out", split, interaction_specs(cfg.schema))]
    # user 2 rated item 3 (no release date): the interaction carries the filled year too
    assert [r["year"] for r in rows if r["item_id"] == "3"] == pytest.approx([mean])


@pytest.mark.slow
def test_two_worker_processes_give_the_in_process_outputs(tmp_path):
    """The transform with 2 Beam worker processes (multi_processing) writes the same vocabularies,
    stats and split contents (as sets of records) as in-process, only sharded differently, on
    small data. (At 10M interactions Beam 2.77's multi-processing runner dropped rows in a join;
    check_rows_conserved refuses that, see test_rows_lost_or_duplicated_by_the_runner_are_an_error.)"""
    from features.transform import run_transform

    config, out, _ = _run_user_tables(tmp_path, INTERACTIONS, **{"transform.split": "auto"})
    ingested = tmp_path / "ingested"
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        stats = run_transform(config.with_overrides({"transform.direct_num_workers": workers}), str(ingested),
                              str(out))
        assert stats["beam_workers"] == workers
        outs[workers] = out
    for rel in ("vocab/item_id.tsv", "vocab/user_id.tsv", "stats.json", "seen.jsonl", "query_table.jsonl"):
        if (outs[1] / rel).exists():
            assert sorted((outs[1] / rel).read_text().splitlines()) == sorted((outs[2] / rel).read_text().splitlines()), rel
    for split, specs in (("train", interaction_specs(config.schema)), ("valid", interaction_specs(config.schema)),
                         ("test", interaction_specs(config.schema)), ("items", item_specs(config.schema))):
        # Decoded: a tf.Example's feature map serialises in an order that differs between processes.
        records = {w: sorted(json.dumps(r, sort_keys=True, default=str) for r in _records(outs[w], split, specs))
                   for w in (1, 2)}
        assert records[1] == records[2] and records[1], split
    assert len(list(outs[2].glob("train-*.tfrecord"))) == 2


def test_rows_lost_or_duplicated_by_the_runner_are_an_error(tmp_path):
    """Outputs must add up to the interactions read: fewer (a runner that dropped rows, as Beam's
    multi-process FnApiRunner was seen to at 10M rows) or more is a TransformError naming both
    counts; fewer is allowed only when data.min_rating or cold items may drop rows."""
    from features.transform import TransformError, check_rows_conserved

    config = _config(tmp_path, USER_SCHEMA)
    exact = {"train": 7, "valid": 1, "test": 1, "train_negatives": 1}
    check_rows_conserved(config, "interactions.parquet", 10, exact)
    with pytest.raises(TransformError, match=r"10 interactions read but 9 written.*lost 1 rows"):
        check_rows_conserved(config, "interactions.parquet", 10, {**exact, "train": 6})
    with pytest.raises(TransformError, match="duplicated 2 rows"):
        check_rows_conserved(config, "interactions.parquet", 10, {**exact, "train": 9})
    check_rows_conserved(config.with_overrides({"data.min_rating": 3.0}), "i", 10, {**exact, "train": 5})
    check_rows_conserved(config.with_overrides({"transform.cold_item_fraction": 0.1}), "i", 10, {**exact, "test": 0})
    with pytest.raises(TransformError, match="duplicated"):
        check_rows_conserved(config.with_overrides({"data.min_rating": 3.0}), "i", 10, {**exact, "train": 8})


def test_ids_only_schema_writes_the_same_interactions_without_the_item_join(tmp_path, user_run):
    """No item features: the transform skips the item join, and every split holds the same
    (user, item) rows as the run that joins item features (the planted split above)."""
    schema = {**USER_SCHEMA, "item_features": []}
    src = tmp_path / "src"
    src.mkdir()
    ITEMS.to_csv(src / "items.csv", index=False)
    USERS.to_csv(src / "users.csv", index=False)
    INTERACTIONS.to_csv(src / "interactions.csv", index=False)
    cfg = _config(src, schema, **{"transform.split": "auto"})
    ingest(cfg, str(tmp_path / "ingested"))
    stats = run_transform(cfg, str(tmp_path / "ingested"), str(tmp_path / "out"))
    full_cfg, full_out, full_stats = user_run
    assert stats["counts"] == full_stats["counts"]
    for split in ("train", "valid", "test", "train_negatives"):
        ids_only = _records(tmp_path / "out", split, interaction_specs(cfg.schema))
        joined = _records(full_out, split, interaction_specs(full_cfg.schema))
        assert _pairs(ids_only) == _pairs(joined), split
        assert all(set(r) == {s.name for s in interaction_specs(cfg.schema)} for r in ids_only)


def test_grouped_values_round_trip_whatever_the_ids_hold():
    """What the GroupByKeys hold (pickled rows, one-string seen values) decodes to the original,
    for ids with digits, separators, unicode and the empty string."""
    from features.transform import SPLITS, pack_row, parse_seen_value, seen_value, unpack_row

    row = {"user_id": "u 1", "_key": "u 1", "item_id": "0|a\tb", "label": 1, "rating": float("nan"),
           "timestamp": 1_700_000_000, "title": "Amélie"}
    back = unpack_row(pack_row(row))
    assert back.keys() == row.keys() and back["item_id"] == "0|a\tb" and back["title"] == "Amélie"
    assert isinstance(pack_row(row), bytes)
    for split in SPLITS:
        for item in ("", "7", "12abc", "2\n", "é"):
            assert parse_seen_value(seen_value(split, item)) == (split, item)
