"""Ingest: schema validation, dead letters, error messages, format parity (tiny hand-made data)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import Config
from features.ingest import MAX_FIELD_CHARS, IngestError, ingest
from tests.support.ingest_tables import good_tables, make_config, write_tables


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


# --------------------------------------------------------------------------- hostile input
# Most tests below failed on the reader before hardening (a raw exception, a numpy warning, or
# silently wrong data); every failure now is an IngestError naming the file (and row/line), or
# a dead letter for just the row at fault. The others guard what must keep working (a UTF-8
# BOM, multi-line quoted fields, unnamed columns, CRLF/CR line ends).

ITEMS_HEADER = "item_id,title,genres,price\n"
GOOD_ITEM_ROWS = "i1,The Matrix,Action,10\ni2,Toy Story,Comedy,20\ni3,Heat,Action,30\n"


def src_with_items(tmp_path: Path, items: "str | bytes", fmt: str = "csv") -> Path:
    """The good tables in ``fmt``, with items.<fmt> replaced by ``items`` (text or bytes)."""
    src = write_tables(tmp_path / "src", good_tables(), fmt)
    path = src / f"items.{fmt}"
    path.write_bytes(items) if isinstance(items, bytes) else path.write_text(items, encoding="utf-8")
    return src


def ingest_loose(src: Path, out: Path, **data) -> dict:
    """Ingest with a bad-row threshold high enough that the dead letters are the result."""
    return ingest(make_config(src, **{"max_bad_fraction": 0.9, **data}), str(out))


def dead_rows(out: Path, name: str) -> dict[int, dict]:
    return {d["row"]: d for d in read_dead(out) if Path(d["file"]).name == name}


def ingested(out: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(out / f"{table}.parquet")


# 1. bytes that are not UTF-8, NUL, byte-order marks

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_non_utf8_row_is_a_dead_letter_naming_line_field_and_byte_offset(tmp_path, fmt):
    if fmt == "csv":
        head = (ITEMS_HEADER + GOOD_ITEM_ROWS).encode()
        body = head + b"i4,Caf\xe9,Drama,5\ni5,Alien,Horror,6\n"  # row 4, line 5
        line, offset = 5, len(head) + len(b"i4,Caf")
    else:
        head = b"".join(json.dumps({"item_id": f"i{k}", "title": "t", "genres": "g", "price": 1}).encode() + b"\n"
                        for k in (1, 2, 3))
        bad = b'{"item_id": "i4", "title": "Caf\xe9", "genres": "g", "price": 1}\n'
        body = head + bad + b'{"item_id": "i5", "title": "Alien", "genres": "g", "price": 1}\n'
        line, offset = 4, len(head) + bad.index(b"\xe9")
    src = src_with_items(tmp_path, body, fmt)
    ingest_loose(src, tmp_path / "out")
    dead = dead_rows(tmp_path / "out", f"items.{fmt}")
    assert list(dead) == [4]
    assert dead[4]["field"] == "title"
    assert f"line {line} is not valid UTF-8" in dead[4]["reason"] and f"byte offset {offset}" in dead[4]["reason"]
    assert dead[4]["file"] == str(src / f"items.{fmt}")
    if fmt == "csv":
        assert dead[4]["raw"]["title"] == "Caf\ufffd"  # the bad byte shown as U+FFFD
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3", "i5"]


def test_non_utf8_header_raises_naming_file_and_offset(tmp_path):
    src = src_with_items(tmp_path, b"item_id,t\xeftle,genres,price\n" + GOOD_ITEM_ROWS.encode())
    with pytest.raises(IngestError, match=r"header: line 1 is not valid UTF-8 \(byte 0xef at byte offset 9\)") \
            as err:
        ingest_loose(src, tmp_path / "out")
    assert str(src / "items.csv") in str(err.value)


def test_utf16_file_raises_naming_it(tmp_path):
    src = src_with_items(tmp_path, (ITEMS_HEADER + GOOD_ITEM_ROWS).encode("utf-16"))
    with pytest.raises(IngestError, match="UTF-16") as err:
        ingest_loose(src, tmp_path / "out")
    assert str(src / "items.csv") in str(err.value)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_utf8_byte_order_mark_is_accepted(tmp_path, fmt):
    src = write_tables(tmp_path / "src", good_tables(), fmt)
    path = src / f"items.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    stats = ingest(make_config(src), str(tmp_path / "out"))
    assert stats["files"]["items"]["bad"] == 0
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3"]


@pytest.mark.parametrize("fmt,items", [
    ("csv", ITEMS_HEADER + GOOD_ITEM_ROWS + "i4\x00,Alien,Horror,6\n"),
    ("jsonl", "".join(json.dumps({"item_id": i, "title": "t", "genres": "g", "price": 1}) + "\n"
                      for i in ("i1", "i2", "i3", "i4\x00"))),  # json.dumps writes \u0000
])
def test_nul_in_a_cell_is_a_dead_letter(tmp_path, fmt, items):
    ingest_loose(src_with_items(tmp_path, items, fmt), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", f"items.{fmt}")
    assert list(dead) == [4] and dead[4]["field"] == "item_id" and "NUL" in dead[4]["reason"]
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3"]


def test_nul_in_a_parquet_string_is_a_dead_letter(tmp_path):
    tables = good_tables()
    tables["items"].loc[1, "title"] = "Toy\x00Story"
    src = write_tables(tmp_path / "src", tables, "parquet")
    ingest_loose(src, tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.parquet")
    assert list(dead) == [2] and dead[2]["field"] == "title" and "NUL" in dead[2]["reason"]


# 2. field and line sizes

def test_csv_field_over_csvs_default_limit_is_read(tmp_path):
    long_title = "x" * 200_000  # csv's default field limit is 131,072 characters
    src = src_with_items(tmp_path, ITEMS_HEADER + GOOD_ITEM_ROWS + f'i4,"{long_title}",Drama,5\n')
    stats = ingest(make_config(src), str(tmp_path / "out"))
    assert stats["files"]["items"]["bad"] == 0
    assert ingested(tmp_path / "out", "items")["title"].tolist()[3] == long_title


def test_csv_field_over_the_limit_is_a_dead_letter_naming_the_field(tmp_path):
    huge_price = "9" * (MAX_FIELD_CHARS + 1)
    items = ITEMS_HEADER + GOOD_ITEM_ROWS + f"i4,Alien,Horror,{huge_price}\ni5,Heat 2,Action,7\n"
    src = src_with_items(tmp_path, items)
    ingest_loose(src, tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.csv")
    assert list(dead) == [4] and dead[4]["field"] == "price"
    assert dead[4]["reason"] == (f"field of {MAX_FIELD_CHARS + 1} characters, over the "
                                 f"{MAX_FIELD_CHARS}-character limit (line 5)")
    assert len(dead[4]["raw"]["price"]) < 300  # quoted, not copied whole
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3", "i5"]


def test_jsonl_string_over_the_limit_is_a_dead_letter_naming_the_field(tmp_path):
    rows = [{"item_id": f"i{k}", "title": "t", "genres": "g", "price": 1} for k in (1, 2, 3)]
    rows.append({"item_id": "i4", "title": "t", "genres": "g" * (MAX_FIELD_CHARS + 1), "price": 1})
    ingest_loose(src_with_items(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), "jsonl"), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.jsonl")
    assert list(dead) == [4] and dead[4]["field"] == "genres" and "limit" in dead[4]["reason"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_over_long_line_is_skipped_as_a_dead_letter(tmp_path, monkeypatch, fmt):
    import features.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "MAX_LINE_CHARS", 200)  # the real limit is 16 MiB
    if fmt == "csv":
        items = ITEMS_HEADER + GOOD_ITEM_ROWS + "i4," + "y" * 1000 + ",Drama,5\ni5,Alien,Horror,6\n"
    else:
        rows = [{"item_id": f"i{k}", "title": "t", "genres": "g", "price": 1} for k in (1, 2, 3)]
        rows += [{"item_id": "i4", "title": "y" * 1000, "genres": "g", "price": 1},
                 {"item_id": "i5", "title": "t", "genres": "g", "price": 1}]
        items = "".join(json.dumps(r) + "\n" for r in rows)
    ingest_loose(src_with_items(tmp_path, items, fmt), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", f"items.{fmt}")
    assert list(dead) == [4] and dead[4]["field"] == "*"
    assert "over the 200-byte limit" in dead[4]["reason"]
    # The rest of the long line was skipped, not read as rows; the next line is a row again.
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3", "i5"]


# 3. duplicate columns

@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_duplicate_column_raises_naming_file_and_column(tmp_path, fmt):
    src = write_tables(tmp_path / "src", good_tables(), fmt)
    path = src / f"items.{fmt}"
    if fmt == "csv":
        path.write_text("item_id,title,genres,price,title\n" + "".join(
            f"{r.rstrip()},again\n" for r in GOOD_ITEM_ROWS.splitlines()))
    elif fmt == "jsonl":  # keys that differ only by spaces name the same column
        path.write_text("".join(json.dumps({"item_id": f"i{k}", "title": "t", " title ": "u", "genres": "g",
                                            "price": 1}) + "\n" for k in (1, 2, 3)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table([pa.array(["i1", "i2", "i3"]), pa.array(["a", "b", "c"]), pa.array(["g"] * 3),
                                 pa.array([1.0, 2.0, 3.0]), pa.array(["x", "y", "z"])],
                                names=["item_id", "title", "genres", "price", "title"]), path)
    with pytest.raises(IngestError, match=r"duplicate column name\(s\) \['title'\]") as err:
        ingest(make_config(src), str(tmp_path / "out"))
    assert str(path) in str(err.value)


def test_unnamed_columns_may_repeat(tmp_path):
    # Trailing commas (spreadsheet exports) make several unnamed columns; none is a schema column.
    src = src_with_items(tmp_path, "item_id,title,genres,price,,\n" + "".join(
        f"{r},,\n" for r in GOOD_ITEM_ROWS.splitlines()))
    assert ingest(make_config(src), str(tmp_path / "out"))["files"]["items"]["ok"] == 3


# 4. input paths that are not files

def test_input_path_that_is_a_directory_raises_naming_it(tmp_path):
    src = write_tables(tmp_path / "src", good_tables(), "csv")
    (src / "items.csv").unlink()
    (src / "items.csv").mkdir()
    with pytest.raises(IngestError, match="is a directory") as err:
        ingest(make_config(src), str(tmp_path / "out"))
    assert str(src / "items.csv") in str(err.value)


def test_input_path_that_is_a_broken_link_raises_naming_it(tmp_path):
    src = write_tables(tmp_path / "src", good_tables(), "csv")
    (src / "users.csv").unlink()
    (src / "users.csv").symlink_to(tmp_path / "gone.csv")
    with pytest.raises(IngestError, match="broken symbolic link") as err:
        ingest(make_config(src), str(tmp_path / "out"))
    assert str(src / "users.csv") in str(err.value)


# 5. timestamps

def interactions_with_timestamps(stamps: list) -> pd.DataFrame:
    n = len(stamps)
    return pd.DataFrame({"user_id": ["u1"] * n, "item_id": ["i1"] * n, "timestamp": stamps})


@pytest.mark.filterwarnings("error")  # no numpy overflow warning on the way
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_out_of_range_timestamps_are_dead_letters_saying_why(tmp_path, fmt):
    good = [881250949 + k for k in range(8)]
    if fmt == "csv":
        bad = ["-5", "99999999999999999999", "1e30", str(2**63), "7258118400"]
    else:  # int64 in the file: the largest values int64 holds, and a negative one
        bad = [-5, 2**63 - 1, 2**62, 10**18, 7258118400]
    tables = good_tables()
    tables["interactions"] = interactions_with_timestamps(good + bad)
    if fmt == "csv":
        tables["interactions"]["timestamp"] = tables["interactions"]["timestamp"].astype(str)
    src = write_tables(tmp_path / "src", tables, fmt)
    ingest_loose(src, tmp_path / "out")
    dead = dead_rows(tmp_path / "out", f"interactions.{fmt}")
    assert sorted(dead) == [9, 10, 11, 12, 13]
    assert {d["field"] for d in dead.values()} == {"timestamp"}
    assert "negative" in dead[9]["reason"]
    for row in (10, 11, 12, 13):
        assert "after 2200-01-01" in dead[row]["reason"], dead[row]
    inter = ingested(tmp_path / "out", "interactions")
    assert inter["timestamp"].tolist() == good and inter["timestamp"].dtype == np.int64


@pytest.mark.parametrize("scale,unit", [(1000, "milliseconds"), (10**9, "nanoseconds")])
def test_timestamps_in_a_finer_unit_are_refused_naming_the_unit(tmp_path, scale, unit):
    tables = good_tables()
    tables["interactions"]["timestamp"] = [(881250949 + k) * scale for k in range(4)]
    src = write_tables(tmp_path / "src", tables, "csv")
    with pytest.raises(IngestError, match=f"timestamps look like {unit}.*divide them by {scale}") as err:
        ingest(make_config(src), str(tmp_path / "out"))
    assert str(src / "interactions.csv") in str(err.value)


@pytest.mark.filterwarnings("error")
def test_label_far_out_of_range_is_a_dead_letter_without_overflow(tmp_path):
    tables = good_tables()
    tables["interactions"]["label"] = ["1", "1e30", "0", "1"]
    ingest_loose(write_tables(tmp_path / "src", tables, "csv"), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "interactions.csv")
    assert list(dead) == [2] and dead[2]["field"] == "label"


@pytest.mark.parametrize("value", ["1e400", "-1e400", "nan", "inf", "12abc"])
def test_numeric_feature_that_is_not_a_finite_number_is_a_dead_letter(tmp_path, value):
    src = src_with_items(tmp_path, ITEMS_HEADER + GOOD_ITEM_ROWS + f"i4,Alien,Horror,{value}\n")
    ingest_loose(src, tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.csv")
    assert list(dead) == [4] and dead[4]["field"] == "price" and "not a number" in dead[4]["reason"]


# 6. csv quoting

def test_unclosed_quote_caught_at_the_next_quoted_field_raises_naming_row_and_line(tmp_path):
    items = (ITEMS_HEADER + "\n"                 # line 2 is blank: rows and lines differ
             + "i1,The Matrix,Action,10\n"       # row 1, line 3
             + 'i4,"Toy Story,Comedy,5\n'        # row 2, line 4: the quote opens here
             + "i2,Heat,Action,20\n"
             + 'i3,"Alien, The",Horror,30\n')
    src = src_with_items(tmp_path, items)
    expected = r"row 2 \(line 4\): the quoted field opened on line 4 .* unclosed quote"
    with pytest.raises(IngestError, match=expected) as err:
        ingest_loose(src, tmp_path / "out")
    assert str(src / "items.csv") in str(err.value)


def test_unclosed_quote_that_closes_cleanly_later_still_raises(tmp_path):
    # The stray quote is only "closed" by the inch mark on line 5; csv itself sees no error and,
    # before hardening, read lines 3-5 into one title and lost i2 and i3.
    items = ITEMS_HEADER + "i1,The Matrix,Action,10\n" + 'i4,"Toy Story,Comedy,5\n' + "i2,Heat,Action,20\n" \
        + 'i3,Box 5",Horror,30\n'
    with pytest.raises(IngestError, match=r"row 2 \(line 3\).*line 4 inside it reads as a row of its own"):
        ingest_loose(src_with_items(tmp_path, items), tmp_path / "out")


def test_unclosed_quote_leaving_a_record_of_the_wrong_width_raises(tmp_path):
    # No whole line is inside the stray field here, but the record it makes has 3 fields, not 4.
    items = ITEMS_HEADER + GOOD_ITEM_ROWS + 'i4,"Toy Story,Comedy,5\ni5,Box 5",Toys\n'
    expected = r"row 4 \(line 5\): the quoted field opened on line 5 spans lines 5-6 and the record has 3 fields"
    with pytest.raises(IngestError, match=expected):
        ingest_loose(src_with_items(tmp_path, items), tmp_path / "out")


def test_unclosed_quote_running_to_the_end_of_the_file_raises(tmp_path):
    items = ITEMS_HEADER + GOOD_ITEM_ROWS + 'i4,"Toy Story,Comedy,5\n' \
        + "i5,Heat 2,Action,20\ni6,Alien,Horror,3\n"  # lines 5-7
    expected = r"row 4 \(line 5\): the quoted field opened on line 5 is still open on line 7"
    with pytest.raises(IngestError, match=expected):
        ingest_loose(src_with_items(tmp_path, items), tmp_path / "out")


def test_unclosed_quote_on_the_last_line_is_a_dead_letter(tmp_path):
    # Nothing after it was swallowed: only that row is at fault.
    items = ITEMS_HEADER + GOOD_ITEM_ROWS + 'i4,"Toy Story,Comedy,5\n'
    ingest_loose(src_with_items(tmp_path, items), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.csv")
    assert list(dead) == [4] and "line 5 is not valid CSV" in dead[4]["reason"]


def test_text_after_a_closing_quote_is_a_dead_letter_and_later_rows_are_read(tmp_path):
    items = ITEMS_HEADER + GOOD_ITEM_ROWS + 'i4,"Toy" Story,Comedy,5\ni5,Alien,Horror,6\n'
    ingest_loose(src_with_items(tmp_path, items), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.csv")
    assert list(dead) == [4] and dead[4]["field"] == "*" and "line 5" in dead[4]["reason"]
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3", "i5"]


def test_quoted_multi_line_field_is_still_accepted(tmp_path):
    title = "Line one\nLine two, with a comma\n\nLine four"
    items = ITEMS_HEADER + f'i1,"{title}",Action,10\n' + "".join(GOOD_ITEM_ROWS.splitlines(True)[1:])
    stats = ingest(make_config(src_with_items(tmp_path, items)), str(tmp_path / "out"))
    assert stats["files"]["items"] == {"path": str(tmp_path / "src" / "items.csv"), "rows": 3, "ok": 3, "bad": 0}
    assert ingested(tmp_path / "out", "items")["title"].tolist()[0] == title


# JSON Lines end at \n only, so a bare \r is a csv-only case.
@pytest.mark.parametrize("fmt,eol", [("csv", b"\r\n"), ("csv", b"\r"), ("jsonl", b"\r\n")])
def test_windows_and_classic_mac_line_ends_read_the_same(tmp_path, fmt, eol):
    src = write_tables(tmp_path / "src", good_tables(), fmt)
    for path in src.iterdir():
        path.write_bytes(path.read_bytes().replace(b"\n", eol))
    stats = ingest(make_config(src), str(tmp_path / "out"))
    assert stats["bad_fraction"] == 0.0
    assert ingested(tmp_path / "out", "items")["title"].tolist() == ["The Matrix", "", "Heat"]


# other parsers of user input: jsonl and parquet cells

def jsonl_items(*extra: str) -> str:
    good = [json.dumps({"item_id": f"i{k}", "title": "t", "genres": "g", "price": 1}) for k in (1, 2, 3)]
    return "".join(line + "\n" for line in [*good, *extra])


@pytest.mark.parametrize("line,field", [
    ('{"item_id": "i4", "title": "\\ud800", "genres": "g", "price": 1}', "title"),   # a lone surrogate
    ('{"item_id": "i4", "title": "t", "genres": {"a": 1}, "price": 1}', "genres"),  # an object
    ('{"item_id": "i4", "title": ["a", "b"], "genres": "g", "price": 1}', "title"),  # an array
    ('{"item_id": "i4", "title": "t", "genres": "g", "price": 1, "\\udc00": 1}', "*"),  # a bad key
])
def test_jsonl_cell_that_is_not_a_storable_scalar_is_a_dead_letter(tmp_path, line, field):
    i5 = '{"item_id": "i5", "title": "t", "genres": "g", "price": 1}'
    ingest_loose(src_with_items(tmp_path, jsonl_items(line, i5), "jsonl"), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.jsonl")
    assert list(dead) == [4] and dead[4]["field"] == field
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3", "i5"]


def test_jsonl_nested_too_deeply_is_a_dead_letter(tmp_path):
    ingest_loose(src_with_items(tmp_path, jsonl_items("[" * 100_000), "jsonl"), tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.jsonl")
    assert list(dead) == [4] and "nested too deeply" in dead[4]["reason"]
    assert len(dead[4]["raw"]["line"]) < 300


def test_jsonl_without_a_valid_line_says_so(tmp_path):
    src = src_with_items(tmp_path, "not json\n[1, 2]\n", "jsonl")
    with pytest.raises(IngestError, match=r"no valid rows out of 2 \(row 1 \*: invalid JSON") as err:
        ingest_loose(src, tmp_path / "out")
    assert str(src / "items.jsonl") in str(err.value)


def test_parquet_binary_cell_that_is_not_utf8_is_a_dead_letter(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = write_tables(tmp_path / "src", good_tables(), "parquet")
    pq.write_table(pa.table({"item_id": pa.array([b"i1", b"i2", b"i3", b"i4\xff"]), "title": ["a", "b", "c", "d"],
                             "genres": ["g"] * 4, "price": [1.0, 2.0, 3.0, 4.0]}), src / "items.parquet")
    ingest_loose(src, tmp_path / "out")
    dead = dead_rows(tmp_path / "out", "items.parquet")
    assert list(dead) == [4] and dead[4]["field"] == "item_id" and "not UTF-8" in dead[4]["reason"]
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["i1", "i2", "i3"]  # bytes read as text


def test_float_ids_beyond_exact_integers_keep_their_spelling(tmp_path):
    tables = good_tables()
    tables["items"]["item_id"] = [1e20, 2.5e20, 3e20]  # casting these to Int64 raised TypeError
    tables["interactions"]["item_id"] = ["1e+20", "2.5e+20", "2.5e+20", "3e+20"]
    ingest(make_config(write_tables(tmp_path / "src", tables, "parquet")), str(tmp_path / "out"))
    assert ingested(tmp_path / "out", "items")["item_id"].tolist() == ["1e+20", "2.5e+20", "3e+20"]
