"""Unit tests for datagen/synth_interactions.py and `twotower data synth-interactions`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.config import load_config
from datagen.synth_interactions import (
    END_TIMESTAMP,
    WINDOW_SECONDS,
    SynthInteractionsError,
    category_names,
    check_sizes,
    generate_interactions,
)
from features.ingest import ingest
from pipelines.cli import main

CONFIG = "synth-interactions"
FILES = ("items.parquet", "users.parquet", "interactions.parquet")


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {name.split(".")[0]: pd.read_parquet(folder / name) for name in FILES}


def _bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict, dict[str, pd.DataFrame]]:
    """One small set (3,000 items, 1,500 users, 30,000 rows) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth")
    counts = generate_interactions(str(out), items=3000, users=1500, interactions=30_000,
                                   seed=5, categories=12)
    return out, counts, _tables(out)


def _with_category(data) -> pd.DataFrame:
    _, _, t = data
    return t["interactions"].merge(t["items"][["item_id", "category"]], on="item_id")


# ---------------------------------------------------------------- format


def test_columns_types_and_counts(data):
    _, counts, t = data
    items, users, inter = t["items"], t["users"], t["interactions"]
    assert list(items.columns) == ["item_id", "category", "brand", "title", "price"]
    assert list(users.columns) == ["user_id", "segment"]
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"]
    assert inter["timestamp"].dtype == np.int64 and items["price"].dtype == np.float64
    assert counts == {**counts, "items": 3000, "users": 1500, "interactions": 30_000, "categories": 12}
    assert (len(items), len(users), len(inter)) == (3000, 1500, 30_000)
    assert items["item_id"].str.fullmatch(r"i[1-9]\d*").all() and items["item_id"].is_unique
    assert users["user_id"].str.fullmatch(r"u[1-9]\d*").all() and users["user_id"].is_unique
    assert set(items["category"]) == set(category_names(12))
    assert (items["price"] >= 0.99).all() and (items["price"].round(2) == items["price"]).all()
    # The title is made of the brand, the category and the item's number.
    row = items.iloc[41]
    assert row["title"].startswith(row["brand"] + " " + row["category"].title() + " ")
    assert row["title"].endswith(" 42") and row["item_id"] == "i42"
    assert items[["category", "brand", "title"]].notna().all().all()


def test_referential_integrity_and_no_duplicate_rows(data):
    _, counts, t = data
    inter = t["interactions"]
    assert set(inter["item_id"]) <= set(t["items"]["item_id"])
    assert set(inter["user_id"]) == set(t["users"]["user_id"])
    assert not inter.duplicated(["user_id", "item_id", "timestamp"]).any()
    # Repeats of a (user, item) pair are redrawn; the few left are counted, not hidden.
    assert inter.duplicated(["user_id", "item_id"]).sum() == counts["repeat_pairs"] < 0.01 * len(inter)


def test_every_user_has_three_and_timestamps_increase_within_the_window(data):
    _, _, t = data
    inter = t["interactions"]
    assert inter.groupby("user_id").size().min() >= 3
    ts = inter["timestamp"]
    assert ts.min() >= END_TIMESTAMP - WINDOW_SECONDS and ts.max() < END_TIMESTAMP
    # Rows are grouped by user and strictly increasing within each user.
    same_user = inter["user_id"].to_numpy()[1:] == inter["user_id"].to_numpy()[:-1]
    assert (np.diff(ts.to_numpy())[same_user] > 0).all()
    assert inter["user_id"].ne(inter["user_id"].shift()).sum() == 1500  # one run per user


def test_fewer_interactions_than_three_per_user_spread_evenly(tmp_path):
    counts = generate_interactions(str(tmp_path), items=50, users=40, interactions=80,
                                   categories=5)
    per_user = pd.read_parquet(tmp_path / "interactions.parquet").groupby("user_id").size()
    assert counts["interactions"] == 80 and len(per_user) == 40 and per_user.min() >= 2


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    sizes = dict(items=500, users=300, interactions=3000, categories=6)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert generate_interactions(str(a), seed=3, **sizes) == generate_interactions(str(b), seed=3, **sizes)
    generate_interactions(str(c), seed=4, **sizes)
    assert _bytes(a) == _bytes(b)
    assert all(_bytes(c)[name] != _bytes(a)[name] for name in FILES)


def test_row_groups_do_not_change_the_rows(tmp_path):
    # Three user blocks (8,192 users each), written in 997-row groups vs one group per file.
    sizes = dict(items=4000, users=20_000, interactions=60_000, categories=10, seed=1)
    small, whole = tmp_path / "small", tmp_path / "whole"
    generate_interactions(str(small), chunk_rows=997, **sizes)
    generate_interactions(str(whole), chunk_rows=10**7, **sizes)
    meta = pq.ParquetFile(small / "interactions.parquet").metadata
    assert meta.num_row_groups == -(-60_000 // 997)
    assert {meta.row_group(i).num_rows for i in range(meta.num_row_groups - 1)} == {997}
    assert pq.ParquetFile(whole / "interactions.parquet").metadata.num_row_groups == 1
    for name in FILES:
        assert pq.read_table(small / name).equals(pq.read_table(whole / name)), name


# ---------------------------------------------------------------- planted structure


def test_popularity_is_skewed(data):
    _, counts, t = data
    per_item = t["interactions"]["item_id"].value_counts()
    top = per_item.iloc[:30].sum() / per_item.sum()  # the top 1% of 3,000 items
    assert top > 0.10  # ten times their share
    assert counts["top1pct_item_share"] == pytest.approx(top, abs=1e-4)
    assert per_item.iloc[0] > 20 * per_item.median()


def test_users_concentrate_on_a_few_categories(data):
    inter = _with_category(data)

    def top3_share(frame: pd.DataFrame) -> float:
        share = frame.groupby("user_id")["category"].agg(lambda s: s.value_counts().iloc[:3].sum() / len(s))
        return float(share.mean())

    # Chance: the same rows with items shuffled across users (popularity kept, taste gone).
    shuffled = inter.assign(category=np.random.default_rng(0).permutation(inter["category"].to_numpy()))
    assert top3_share(inter) > 0.9
    assert top3_share(inter) - top3_share(shuffled) > 0.2


def test_consecutive_interactions_tend_to_share_a_category(data):
    inter = _with_category(data)
    users, cats = inter["user_id"].to_numpy(), inter["category"].to_numpy()
    same_user = users[1:] == users[:-1]
    run = (cats[1:] == cats[:-1])[same_user].mean()
    # Chance given each user's own mix: the same rows shuffled within each user.
    rng = np.random.default_rng(0)
    mixed = inter.groupby("user_id", sort=False)["category"].transform(lambda s: rng.permutation(s.to_numpy()))
    mixed_run = (mixed.to_numpy()[1:] == mixed.to_numpy()[:-1])[same_user].mean()
    assert run > mixed_run + 0.1


def test_taste_beats_popularity_on_leave_last_out(data):
    """Recall@10 of "most popular unseen items of the user's last category" vs "most popular
    unseen items": the signal a two-tower model can learn and a popularity baseline lacks."""
    inter = _with_category(data)
    last = inter.groupby("user_id").tail(1)
    train = inter.drop(last.index)
    popular = train["item_id"].value_counts()
    category_of = dict(zip(inter["item_id"], inter["category"]))
    by_category = {c: list(items.index) for c, items in popular.groupby(popular.index.map(category_of))}
    seen = train.groupby("user_id")["item_id"].agg(set)
    last_category = train.groupby("user_id")["category"].last()
    hits = {"popularity": 0, "taste": 0}
    for user, item in zip(last["user_id"], last["item_id"]):
        for name, ranked in (("popularity", popular.index), ("taste", by_category[last_category[user]])):
            hits[name] += item in [i for i in ranked[:200] if i not in seen[user]][:10]
    assert hits["taste"] > 2 * hits["popularity"] > 0


# ---------------------------------------------------------------- ingest and config


def test_shipped_config_ingests_with_no_dead_letters(data, tmp_path):
    folder, _, _ = data
    config = load_config(CONFIG, [f"data.path={folder}", f"publish.store={tmp_path / 'store'}"])
    assert [f.name for f in config.schema.query_features] == ["user_id"]
    assert config.schema.display_fields == ["title", "category", "brand", "price"]
    stats = ingest(config, str(tmp_path / "ingested"))
    assert stats["bad_fraction"] == 0.0
    assert {t: stats["files"][t]["bad"] for t in stats["files"]} == {"items": 0, "interactions": 0}
    assert (tmp_path / "ingested" / "dead_letter.jsonl").read_text() == ""
    ingested = pd.read_parquet(tmp_path / "ingested" / "interactions.parquet")
    assert len(ingested) == 30_000 and ingested["timestamp"].dtype == np.int64
    items = pd.read_parquet(tmp_path / "ingested" / "items.parquet")
    assert {"title", "category", "brand", "price"} <= set(items.columns)


def test_a_content_schema_also_ingests_cleanly(data, tmp_path):
    folder, _, _ = data
    overrides = [f"data.path={folder}", f"publish.store={tmp_path / 'store'}",
                 "schema.query_features=[{name: user_id, type: id}, {name: segment, type: categorical}]",
                 "schema.item_features=[{name: category, type: categorical}, {name: brand, type: categorical},"
                 " {name: title, type: text}, {name: price, type: numeric}]"]
    stats = ingest(load_config(CONFIG, overrides), str(tmp_path / "ingested"))
    assert stats["bad_fraction"] == 0.0 and stats["files"]["users"]["ok"] == 1500


# ---------------------------------------------------------------- bad arguments and the CLI


@pytest.mark.parametrize("sizes, flag", [
    (dict(items=0, users=5, interactions=20), "--items"),
    (dict(items=10, users=0, interactions=20), "--users"),
    (dict(items=10, users=5, interactions=4), "--interactions (4) must be >= --users (5)"),
    (dict(items=10, users=5, interactions=20, categories=11), "--categories (11) must be <= --items (10)"),
    (dict(items=10, users=5, interactions=20, categories=2, seed=-1), "--seed"),
    (dict(items=10, users=1, interactions=10**6), "more than 10000 per user"),
])
def test_impossible_sizes_are_refused_naming_the_flag(sizes, flag):
    with pytest.raises(SynthInteractionsError, match=flag.replace("(", r"\(").replace(")", r"\)")):
        check_sizes(**sizes)


def test_a_folder_with_csv_tables_is_refused(tmp_path):
    (tmp_path / "items.csv").write_text("item_id\n1\n")
    with pytest.raises(SynthInteractionsError, match="items.csv"):
        generate_interactions(str(tmp_path), items=10, users=5, interactions=20, categories=2)
    assert not list(tmp_path.glob("*.parquet*"))


def test_cli_writes_the_dataset_and_prints_one_summary_line(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth-interactions", "--out", str(out), "--items", "200", "--users", "50",
                 "--interactions", "400", "--categories", "4", "--seed", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith(f"wrote synthetic interactions dataset to {out}: ")
    counts = json.loads(line.split(": ", 1)[1])
    assert (counts["items"], counts["users"], counts["interactions"]) == (200, 50, 400)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_cli_bad_arguments_exit_2_with_one_clear_line(tmp_path, capsys):
    args = ["data", "synth-interactions", "--out", str(tmp_path), "--items", "10"]
    assert main([*args, "--users", "5", "--interactions", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twotower data synth-interactions: error: --interactions (4) must be >= --users (5)")
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:  # argparse's own check of one value
        main([*args, "--users", "0", "--interactions", "4"])
    assert exc.value.code == 2
    assert "twotower data synth-interactions: error: argument --users: expected an integer >= 1" in \
        capsys.readouterr().err
    assert not list(tmp_path.iterdir())
