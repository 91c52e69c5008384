"""Ingest streams interactions in chunks: the result is the one of a single whole-file chunk.

Every test runs ingest twice on the same folder, once with INGEST_CHUNK_ROWS = 3 and once with
the default (one chunk), and compares the artifacts byte for byte / frame for frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import features.ingest as ingest_module
from features.ingest import IngestError, ingest
from tests.support.ingest_tables import good_tables, make_config, write_tables

CHUNK = 3


def run_both(src: Path, tmp_path: Path, monkeypatch, **data) -> dict[str, dict]:
    """Ingest ``src`` in one chunk and in chunks of CHUNK rows -> {"whole"|"chunked": artifacts}."""
    runs = {}
    for name, chunk in (("whole", ingest_module.INGEST_CHUNK_ROWS), ("chunked", CHUNK)):
        monkeypatch.setattr(ingest_module, "INGEST_CHUNK_ROWS", chunk)
        out = tmp_path / f"out-{name}"
        stats = ingest(make_config(src, **data), str(out))
        stats.pop("seconds")
        runs[name] = {
            "stats": stats,
            "stats_file": (out / "ingest_stats.json").read_text(),
            "dead": (out / "dead_letter.jsonl").read_text(),
            "frame": pd.read_parquet(out / "interactions.parquet"),
            "schema": pq.read_schema(out / "interactions.parquet"),
            "row_groups": pq.ParquetFile(out / "interactions.parquet").metadata.num_row_groups,
        }
    return runs


def assert_same(runs: dict[str, dict]) -> None:
    whole, chunked = runs["whole"], runs["chunked"]
    assert chunked["stats"] == whole["stats"]
    assert chunked["stats_file"] == whole["stats_file"]
    assert chunked["dead"] == whole["dead"]
    pd.testing.assert_frame_equal(chunked["frame"], whole["frame"])
    assert chunked["schema"].remove_metadata().equals(whole["schema"].remove_metadata())
    assert whole["row_groups"] == 1 and chunked["row_groups"] > 1


def interaction_rows(n: int) -> list[dict]:
    users, items = ["u1", "u2"], ["i1", "i2", "i3"]
    return [{"user_id": users[k % 2], "item_id": items[k % 3], "label": 1, "rating": 4.0,
             "timestamp": 1_000 + k} for k in range(n)]


def dead_rows(text: str) -> list[tuple[int, str]]:
    return [(d["row"], d["field"]) for d in map(json.loads, text.splitlines())
            if d["file"].endswith(("interactions.csv", "interactions.jsonl", "interactions.parquet"))]


def test_csv_in_chunks_gives_the_whole_file_result(tmp_path, monkeypatch):
    src = write_tables(tmp_path / "src", good_tables(), "csv")
    lines = [f"{r['user_id']},{r['item_id']},{r['label']},{r['rating']},{r['timestamp']}"
             for r in interaction_rows(14)]
    lines[0] = "u1,i1,1,4.0"                 # row 1: wrong field count (the reader's dead letter)
    lines[2] = "u1,i9,1,4.0,1002"            # row 3: unknown item, last row of chunk 1
    lines[3] = "u1,i1,2,4.0,1003"            # row 4: bad label, first row of chunk 2
    lines[4] = ",i1,1,4.0,1004"              # row 5: empty user_id
    lines[5] = "u1,i1,1,4.0,10.5"            # row 6: fractional timestamp: chunk 2 has no clean row
    lines[8] = 'u1,"i1" x,1,4.0,1008'        # row 9: text after a closing quote
    lines[13] = "u2,i2,1,4.0,-3"             # row 14: negative timestamp, alone in the last chunk
    body = "user_id,item_id,label,rating,timestamp\n" + "\n".join(lines[:7]) + "\n\n" + "\n".join(lines[7:]) + "\n"
    (src / "interactions.csv").write_text(body)  # a blank line after row 7: lines and rows differ
    runs = run_both(src, tmp_path, monkeypatch, max_bad_fraction=0.9)
    assert_same(runs)
    assert dead_rows(runs["whole"]["dead"]) == [(1, "*"), (3, "item_id"), (4, "label"), (5, "user_id"),
                                                (6, "timestamp"), (9, "*"), (14, "timestamp")]
    assert runs["whole"]["stats"]["files"]["interactions"]["rows"] == 14


def test_jsonl_in_chunks_gives_the_whole_file_result_even_with_late_keys(tmp_path, monkeypatch):
    src = write_tables(tmp_path / "src", good_tables(), "jsonl")
    rows = interaction_rows(13)
    for r in rows[:7]:
        del r["rating"]                      # "rating" first appears in row 8 (chunk 3)...
    rows[11]["note"] = "late"                # ...and a column nothing reads in row 12 (chunk 4)
    lines = [json.dumps(r) for r in rows]
    lines[1] = "not json"                    # row 2
    lines[2] = "[1, 2]"                      # row 3: not an object
    lines[3] = json.dumps({**rows[3], "item_id": {"a": 1}})  # row 4: an object cell
    lines[6] = json.dumps({**rows[6], "label": 7})           # row 7: bad label
    lines[9] = json.dumps({**rows[9], "rating": "lots"})     # row 10: rating not a number
    (src / "interactions.jsonl").write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    key_reads = []
    real = ingest_module._jsonl_columns
    monkeypatch.setattr(ingest_module, "_jsonl_columns", lambda *a: key_reads.append(a) or real(*a))
    runs = run_both(src, tmp_path, monkeypatch, max_bad_fraction=0.9)
    assert_same(runs)
    assert len(key_reads) == 1  # the chunked run met "rating" late and read the keys once
    # Line numbers are rows in jsonl (the blank line 6 is skipped, not renumbered).
    assert dead_rows(runs["whole"]["dead"]) == [(2, "*"), (3, "*"), (4, "item_id"), (8, "label"),
                                                (11, "rating")]
    # A dead letter read before "note" turned up still names it, as in a whole-file read.
    label_dead = [d for d in map(json.loads, runs["chunked"]["dead"].splitlines()) if d["row"] == 8][0]
    assert label_dead["raw"]["note"] is None and label_dead["raw"]["rating"] is None
    frame = runs["chunked"]["frame"]
    assert np.isnan(frame["rating"][0]) and frame["rating"].dtype == np.float64


def test_parquet_in_chunks_gives_the_whole_file_result(tmp_path, monkeypatch):
    src = write_tables(tmp_path / "src", good_tables(), "parquet")
    frame = pd.DataFrame(interaction_rows(11))
    frame["rating"] = frame["rating"].astype(object)
    frame.loc[3:5, "rating"] = None          # chunk 2's ratings are all null
    frame.loc[0, "item_id"] = "i9"           # row 1: unknown item
    frame.loc[2, "label"] = 3                # row 3
    frame.loc[3, "user_id"] = "u\x00"        # row 4: a NUL (the reader's check)
    frame.loc[7, "timestamp"] = -1           # row 8
    frame.loc[10, "item_id"] = ""            # row 11: empty item id, alone in the last chunk
    frame["rating"] = frame["rating"].astype("float64")
    frame.index = range(100, 111)            # an index in the pandas metadata, as pandas writes it
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=True), src / "interactions.parquet",
                   row_group_size=4)         # row groups that do not line up with the chunks
    runs = run_both(src, tmp_path, monkeypatch, max_bad_fraction=0.9)
    assert_same(runs)
    assert dead_rows(runs["whole"]["dead"]) == [(1, "item_id"), (3, "label"), (4, "user_id"),
                                                (8, "timestamp"), (11, "item_id")]
    assert "__index_level_0__" not in runs["chunked"]["frame"].columns
    assert runs["chunked"]["frame"]["rating"].isna().sum() == 2  # rows 5 and 6


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_bad_rows_only_in_later_chunks_are_refused_by_the_threshold(tmp_path, monkeypatch, fmt):
    tables = good_tables()
    rows = interaction_rows(12)
    for r in rows[9:]:
        r["item_id"] = "nope"                # rows 10-12 (the 4th chunk): 25% bad
    tables["interactions"] = pd.DataFrame(rows)
    src = write_tables(tmp_path / "src", tables, fmt)
    messages, dead = {}, {}
    for name, chunk in (("whole", ingest_module.INGEST_CHUNK_ROWS), ("chunked", CHUNK)):
        monkeypatch.setattr(ingest_module, "INGEST_CHUNK_ROWS", chunk)
        with pytest.raises(IngestError) as err:
            ingest(make_config(src, max_bad_fraction=0.2), str(tmp_path / name))
        messages[name] = str(err.value)
        dead[name] = (tmp_path / name / "dead_letter.jsonl").read_text()
    assert messages["chunked"] == messages["whole"]
    assert "3 of 12 rows are bad" in messages["chunked"] and "row 10 item_id: unknown item_id" in messages["chunked"]
    assert dead["chunked"] == dead["whole"] and len(dead["chunked"].splitlines()) == 3


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_no_valid_row_in_any_chunk_is_the_same_error(tmp_path, monkeypatch, fmt):
    tables = good_tables()
    tables["interactions"] = pd.DataFrame([{**r, "item_id": "nope"} for r in interaction_rows(7)])
    src = write_tables(tmp_path / "src", tables, fmt)
    messages = {}
    for name, chunk in (("whole", ingest_module.INGEST_CHUNK_ROWS), ("chunked", CHUNK)):
        monkeypatch.setattr(ingest_module, "INGEST_CHUNK_ROWS", chunk)
        with pytest.raises(IngestError, match="no valid rows out of 7") as err:
            ingest(make_config(src, max_bad_fraction=1.0), str(tmp_path / name))
        messages[name] = str(err.value)
    assert messages["chunked"] == messages["whole"]


def test_timestamp_unit_is_decided_on_the_first_chunk_with_timestamps(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "INGEST_CHUNK_ROWS", CHUNK)
    tables = good_tables()
    rows = interaction_rows(9)
    for r in rows[:3]:
        r["timestamp"] = None                # chunk 1 holds no timestamp: not the sample
    for r in rows[3:6]:
        r["timestamp"] = (881250949 + r["timestamp"]) * 1000  # chunk 2: milliseconds
    tables["interactions"] = pd.DataFrame(rows)
    src = write_tables(tmp_path / "src", tables, "csv")
    with pytest.raises(IngestError, match="timestamps look like milliseconds"):
        ingest(make_config(src, max_bad_fraction=0.9), str(tmp_path / "out"))
