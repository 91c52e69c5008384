"""Ingest: schema validation, dead letters, error messages, format parity (tiny hand-made data)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import Config
from features.ingest import IngestError, ingest

SCHEMA = {
    "query_key": "user_id",
    "query_features": [
        {"name": "user_id", "type": "id"},
        {"name": "age", "type": "numeric"},
        {"name": "gender", "type": "categorical"},
    ],
    "item_features": [
        {"name": "title", "type": "text"},
        {"name": "genres", "type": "multi_categorical"},
        {"name": "price", "type": "numeric"},
    ],
}


def make_config(path: Path, **data) -> Config:
    return Config.model_validate({
        "data": {"path": str(path), **data},
        "schema": SCHEMA,
        "publish": {"store": str(path / "store")},
    })


def good_tables() -> dict[str, pd.DataFrame]:
    """Clean tables; the optional features have gaps (missing is not malformed)."""
    items = pd.DataFrame({
        "item_id": ["i1", "i2", "i3"],
        "title": ["The Matrix", None, "Heat"],
        "genres": ["Action|Sci-Fi", "Comedy", None],
        "price": [10.0, np.nan, 30.0],
    })
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age": [30.0, np.nan], "gender": ["F", None]})
    interactions = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"],
        "item_id": ["i1", "i2", "i2", "i3"],
        "label": [1, 1, 0, 1],
        "rating": [5.0, 4.0, 1.0, 3.5],
        "timestamp": [100, 200, 300, 400],
    })
    return {"items": items, "users": users, "interactions": interactions}


def write_tables(folder: Path, tables: dict[str, pd.DataFrame], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        path = folder / f"{name}.{fmt}"
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_json(path, orient="records", lines=True)
    return folder


def read_dead(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_clean_input_gives_typed_tables(tmp_path, fmt):
    src = write_tables(tmp_path / "src", good_tables(), fmt)
    stats = ingest(make_config(src), str(tmp_path / "out"))

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "dead_letter.jsonl", "ingest_stats.json", "interactions.parquet", "items.parquet", "users.parquet"]
    assert stats["files"]["interactions"] == {
        "path": str(src / f"interactions.{fmt}"), "rows": 4, "ok": 4, "bad": 0}
    assert stats["bad_fraction"] == 0.0
    assert json.loads((out / "ingest_stats.json").read_text())["fingerprint"] == stats["fingerprint"]
    assert (out / "dead_letter.jsonl").read_text() == ""

    inter = pd.read_parquet(out / "interactions.parquet")
    assert inter["label"].dtype == np.int64 and inter["timestamp"].dtype == np.int64
    assert inter["rating"].dtype == np.float64
    assert inter["user_id"].tolist() == ["u1", "u1", "u2", "u2"]
    items = pd.read_parquet(out / "items.parquet")
    # Missing optional values are kept (filled later by the transform), not rejected.
    assert items["title"].tolist() == ["The Matrix", "", "Heat"]
    assert np.isnan(items["price"][1])


def test_csv_parquet_jsonl_give_the_same_tables(tmp_path):
    frames = {}
    for fmt in ("csv", "parquet", "jsonl"):
        src = write_tables(tmp_path / fmt, good_tables(), fmt)
        ingest(make_config(src), str(tmp_path / f"out-{fmt}"))
        frames[fmt] = {t: pd.read_parquet(tmp_path / f"out-{fmt}" / f"{t}.parquet")
                       for t in ("interactions", "items", "users")}
    for fmt in ("parquet", "jsonl"):
        for table in ("interactions", "items", "users"):
            pd.testing.assert_frame_equal(frames[fmt][table], frames["csv"][table])


def test_label_defaults_to_one_and_numeric_ids_read_as_strings(tmp_path):
    tables = good_tables()
    tables["items"]["item_id"] = [1, 2, 3]
    tables["interactions"] = pd.DataFrame({"user_id": [7, 8], "item_id": [1, 3]})
    tables["users"]["user_id"] = [7, 8]
    src = write_tables(tmp_path / "src", tables, "parquet")
    ingest(make_config(src), str(tmp_path / "out"))
    inter = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert inter["user_id"].tolist() == ["7", "8"]
    assert inter["item_id"].tolist() == ["1", "3"]
    assert inter["label"].tolist() == [1, 1]
    assert "timestamp" not in inter.columns


def test_malformed_rows_go_to_dead_letter(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "items.csv").write_text(
        "item_id,title,genres,price\n"
        "i1,The Matrix,Action,10\n"
        "i2,Toy Story,Comedy,cheap\n"      # row 2: bad numeric
        "i1,Duplicate,Drama,5\n"           # row 3: duplicate id
        "i3,Heat,,\n")                     # row 4: missing optionals are fine
    (src / "users.csv").write_text("user_id,age,gender\nu1,30,F\n,40,M\n")  # row 2: empty id
    (src / "interactions.csv").write_text(
        "user_id,item_id,label,timestamp\n"
        "u1,i1,1,100\n"
        "u1,i3,2,200\n"        # row 2: bad label
        "u1,i2,1,300\n"        # row 3: i2 was rejected -> unknown item
        "u1,i9,1,400\n"        # row 4: unknown item
        "u1,,1,500\n"          # row 5: empty item id
        "u1,i3,1,12.5\n"       # row 6: fractional timestamp
        "u1,i3,1,600,extra\n"  # row 7: wrong field count
        "u1,i3,0,700\n")
    stats = ingest(make_config(src, max_bad_fraction=0.9), str(tmp_path / "out"))

    dead = {(Path(d["file"]).name, d["row"]): (d["field"], d["reason"]) for d in read_dead(tmp_path / "out")}
    assert set(dead) == {("items.csv", 2), ("items.csv", 3), ("users.csv", 2)} | {
        ("interactions.csv", r) for r in (2, 3, 4, 5, 6, 7)}
    assert dead[("items.csv", 2)][0] == "price"
    assert dead[("items.csv", 3)][0] == "item_id" and "duplicate" in dead[("items.csv", 3)][1]
    assert dead[("users.csv", 2)][0] == "user_id"
    assert dead[("interactions.csv", 2)][0] == "label"
    assert dead[("interactions.csv", 3)] == ("item_id", "unknown item_id")
    assert dead[("interactions.csv", 4)] == ("item_id", "unknown item_id")
    assert dead[("interactions.csv", 5)][0] == "item_id"
    assert dead[("interactions.csv", 6)][0] == "timestamp"
    first = read_dead(tmp_path / "out")[0]
    assert first["file"] == str(src / "items.csv")
    assert first["raw"] == {"item_id": "i2", "title": "Toy Story", "genres": "Comedy", "price": "cheap"}

    assert stats["files"]["items"] == {"path": str(src / "items.csv"), "rows": 4, "ok": 2, "bad": 2}
    assert stats["files"]["users"]["bad"] == 1
    assert stats["files"]["interactions"] == {
        "path": str(src / "interactions.csv"), "rows": 8, "ok": 2, "bad": 6}
    assert stats["bad_fraction"] == pytest.approx(9 / 14)
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["item_id"].tolist() == ["i1", "i3"] and items["title"].tolist()[0] == "The Matrix"
    inter = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert inter["label"].tolist() == [1, 0]


def test_too_many_bad_rows_raises_naming_file_counts_and_reasons(tmp_path):
    tables = good_tables()
    tables["interactions"].loc[0, "item_id"] = "nope"
    src = write_tables(tmp_path / "src", tables, "csv")
    with pytest.raises(IngestError) as err:
        ingest(make_config(src, max_bad_fraction=0.1), str(tmp_path / "out"))
    msg = str(err.value)
    assert str(src / "interactions.csv") in msg and "1 of 4" in msg and "unknown item_id" in msg
    # The dead letters are written before the error so the failure can be diagnosed.
    assert read_dead(tmp_path / "out")[0]["row"] == 1


@pytest.mark.parametrize("table,column", [("items", "price"), ("interactions", "item_id"), ("users", "gender")])
def test_missing_required_column_names_file_and_column(tmp_path, table, column):
    tables = good_tables()
    tables[table] = tables[table].drop(columns=[column])
    src = write_tables(tmp_path / "src", tables, "csv")
    with pytest.raises(IngestError, match=column) as err:
        ingest(make_config(src), str(tmp_path / "out"))
    assert str(src / f"{table}.csv") in str(err.value)


@pytest.mark.parametrize("content", ["", "user_id,item_id,label,rating,timestamp\n"])
def test_empty_file_raises_naming_it(tmp_path, content):
    src = write_tables(tmp_path / "src", good_tables(), "csv")
    (src / "interactions.csv").write_text(content)
    with pytest.raises(IngestError, match="empty") as err:
        ingest(make_config(src), str(tmp_path / "out"))
    assert str(src / "interactions.csv") in str(err.value)


def test_table_without_valid_rows_raises(tmp_path):
    tables = good_tables()
    tables["items"]["price"] = ["x", "y", "z"]
    src = write_tables(tmp_path / "src", tables, "csv")
    with pytest.raises(IngestError, match="no valid rows") as err:
        ingest(make_config(src, max_bad_fraction=1.0), str(tmp_path / "out"))
    assert str(src / "items.csv") in str(err.value)


def test_missing_users_file_with_user_features_raises(tmp_path):
    tables = good_tables()
    del tables["users"]
    src = write_tables(tmp_path / "src", tables, "csv")
    with pytest.raises(IngestError, match="users") as err:
        ingest(make_config(src), str(tmp_path / "out"))
    assert str(src) in str(err.value)


def test_two_formats_of_one_table_is_ambiguous(tmp_path):
    src = write_tables(tmp_path / "src", good_tables(), "csv")
    good_tables()["items"].to_parquet(src / "items.parquet", index=False)
    with pytest.raises(IngestError, match="items.csv and items.parquet"):
        ingest(make_config(src), str(tmp_path / "out"))
    # An explicit format picks one and is not ambiguous.
    stats = ingest(make_config(src, format="csv"), str(tmp_path / "out"))
    assert stats["files"]["items"]["path"].endswith("items.csv")


def test_fingerprint_follows_the_bytes(tmp_path):
    src = write_tables(tmp_path / "src", good_tables(), "csv")
    first = ingest(make_config(src), str(tmp_path / "o1"))["fingerprint"]
    assert ingest(make_config(src), str(tmp_path / "o2"))["fingerprint"] == first
    with open(src / "items.csv", "a") as fh:
        fh.write("i4,Alien,Horror,5\n")
    assert ingest(make_config(src), str(tmp_path / "o3"))["fingerprint"] != first


def test_search_keyed_data_needs_no_users(tmp_path):
    config = Config.model_validate({
        "data": {"path": str(tmp_path / "src")},
        "schema": {"query_key": "query", "query_features": [{"name": "query", "type": "text"}],
                   "item_features": [{"name": "title", "type": "text"}]},
        "publish": {"store": str(tmp_path / "store")},
    })
    src = tmp_path / "src"
    src.mkdir()
    (src / "items.jsonl").write_text('{"item_id": "a", "title": "Red Shoes"}\n{"item_id": "b", "title": null}\n')
    (src / "interactions.jsonl").write_text(
        '{"query": "red shoes", "item_id": "a"}\n{"query": "", "item_id": "b"}\nnot json\n'
        '{"query": "blue", "item_id": "b"}\n')
    config = config.with_overrides({"data.max_bad_fraction": 0.6})
    stats = ingest(config, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "users.parquet").exists()
    assert stats["files"]["interactions"]["ok"] == 2
    dead = read_dead(tmp_path / "out")
    assert [(d["row"], d["field"]) for d in dead] == [(2, "query"), (3, "*")]


def test_100k_rows_ingest_in_a_couple_of_seconds(tmp_path):
    rng = np.random.default_rng(0)
    n_items, n = 1000, 100_000
    src = tmp_path / "src"
    write_tables(src, {
        "items": pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": "some title",
                               "genres": "A|B", "price": rng.random(n_items)}),
        "users": pd.DataFrame({"user_id": [f"u{i}" for i in range(1000)], "age": 30.0, "gender": "F"}),
        "interactions": pd.DataFrame({"user_id": [f"u{i}" for i in rng.integers(0, 1000, n)],
                                      "item_id": [f"i{i}" for i in rng.integers(0, n_items, n)],
                                      "timestamp": rng.integers(0, 10**9, n)}),
    }, "csv")
    started = time.perf_counter()
    stats = ingest(make_config(src), str(tmp_path / "out"))
    assert stats["files"]["interactions"]["ok"] == n
    assert time.perf_counter() - started < 5.0


def test_gs_path_takes_the_same_code_path(tmp_path, monkeypatch):
    """gs:// in and out through core.storage, with a local folder standing in for the bucket."""
    from core import storage

    bucket = tmp_path / "bucket"
    write_tables(bucket / "data", good_tables(), "csv")
    (bucket / "data" / "interactions.csv").write_text(
        (bucket / "data" / "interactions.csv").read_text() + "u1,i9,1,4.0,500\n")

    def local(path: str) -> Path:
        assert path.startswith("gs://b/")
        return bucket / path[len("gs://b/"):]

    def fake_download(src, local_dir):
        import shutil

        shutil.copytree(local(src), local_dir)
        return local_dir

    def fake_upload(local_dir, dest):
        import shutil

        shutil.copytree(local_dir, local(dest), dirs_exist_ok=True)
        return sorted(p.name for p in Path(local_dir).iterdir())

    monkeypatch.setattr(storage, "download_tree", fake_download)
    monkeypatch.setattr(storage, "upload_tree", fake_upload)
    stats = ingest(make_config(tmp_path, max_bad_fraction=0.5).with_overrides({"data.path": "gs://b/data"}),
                   "gs://b/out")
    assert stats["files"]["interactions"]["path"] == "gs://b/data/interactions.csv"
    dead = read_dead(bucket / "out")
    assert [(d["file"], d["row"], d["field"]) for d in dead] == [("gs://b/data/interactions.csv", 5, "item_id")]
    assert (bucket / "out" / "items.parquet").exists()


def test_input_changed_since_launch_is_refused(tmp_path):
    from features.ingest import fingerprint_input

    folder = write_tables(tmp_path / "in", good_tables(), "csv")
    launched_with = fingerprint_input(str(folder))
    ingest(make_config(folder), str(tmp_path / "ok"), expected_fingerprint=launched_with)  # unchanged: fine
    with open(folder / "interactions.csv", "a") as fh:
        fh.write("u1,i2,1,5\n")  # a late write to the partition after the run was scheduled
    with pytest.raises(IngestError, match=r"fingerprint .* differs .* changed after the run was scheduled"):
        ingest(make_config(folder), str(tmp_path / "late"), expected_fingerprint=launched_with)


def test_data_date_is_recorded(tmp_path):
    folder = write_tables(tmp_path / "in", good_tables(), "csv")
    stats = ingest(make_config(folder), str(tmp_path / "out"), data_date="2026-11-02")
    assert stats["data_date"] == "2026-11-02"
    assert json.loads((tmp_path / "out" / "ingest_stats.json").read_text())["data_date"] == "2026-11-02"
