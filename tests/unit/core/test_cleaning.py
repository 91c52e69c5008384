"""Training and serving clean raw values by one set of rules (core/cleaning.py).

The rules by hand, the pandas twins against the scalar rules, and the parity that matters: the
same adversarial raw values fed through ingest + the Beam transform (the query table it writes
is what the towers see in training) and through the query service's request path
(serving/query_inputs.py) give identical tower inputs, per feature type.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import cleaning, history
from core.config import Config
from core.text import normalize_text
from serving import query_inputs
from serving.query_inputs import RequestError

DECOMPOSED = "Cafe\u0301"  # "Café" as e + combining acute (NFD)
COMPOSED = "Caf\u00e9"


# --------------------------------------------------------------------------- the rules by hand


@pytest.mark.parametrize("raw, cleaned", [
    (" F ", "F"), ("F", "F"), ("f", "f"), (DECOMPOSED, COMPOSED), (f"\t{COMPOSED}\n", COMPOSED),
    (None, ""), (float("nan"), ""), ("", ""), ("   ", ""), (7, "7"), (7.0, "7"), (7.5, "7.5"),
    (np.int64(7), "7"), (True, "1"), (2.0 ** 60, str(2.0 ** 60)),
])
def test_clean_string(raw, cleaned):
    assert cleaning.clean_string(raw) == cleaned


@pytest.mark.parametrize("raw, cleaned", [
    (" Action | Sci-Fi ||", "Action|Sci-Fi"), (f"{DECOMPOSED}|", COMPOSED), ("|", ""), (None, ""),
    ("Drama", "Drama"),
])
def test_clean_multi(raw, cleaned):
    assert cleaning.clean_multi(raw) == cleaned


@pytest.mark.parametrize("raw, cleaned", [
    (" 33 ", 33.0), ("1e3", 1000.0), ("-.5", -0.5), ("+2.", 2.0), (33, 33.0), (33.5, 33.5), (True, 1.0),
])
def test_clean_number(raw, cleaned):
    assert cleaning.clean_number(raw) == cleaned


@pytest.mark.parametrize("raw", [None, float("nan"), "", "  "])
def test_missing_numbers_are_nan(raw):
    assert math.isnan(cleaning.clean_number(raw))


@pytest.mark.parametrize("raw", ["old", "inf", "nan", "Infinity", "1_000", "\u0661\u0662", "0x10", float("inf"),
                                 10 ** 400, [1]])
def test_not_a_number(raw):
    with pytest.raises(cleaning.NotANumber):
        cleaning.clean_number(raw)


def test_text_is_nfkc_then_lower_and_alphanumeric():
    assert normalize_text("\uff2e\uff49\uff4b\uff45 Air") == "nike air"  # full-width letters
    assert normalize_text(DECOMPOSED) == normalize_text(COMPOSED)
    assert normalize_text("\ufb01ne") == "fine"  # the "fi" ligature


# --------------------------------------------------------------------------- pandas twins

ADVERSARIAL_CELLS = [" F ", "F", DECOMPOSED, COMPOSED, "", "  ", None, float("nan"), "7", " 33 ", "1e3", "inf",
                     "old", 7, 7.0, 7.5, True]


@pytest.mark.parametrize("column", [
    pd.Series(ADVERSARIAL_CELLS, dtype=object),
    pd.Series([c for c in ADVERSARIAL_CELLS if isinstance(c, str) or c is None], dtype=object),
    pd.Series([7.0, np.nan, 7.5, 1e20, -0.0, 3.0]),
    pd.Series([1, 2, 3]),
    pd.Series([True, False]),
    pd.Series(["a ", None, DECOMPOSED], dtype="string"),
], ids=["mixed", "strings", "floats", "ints", "bools", "string-dtype"])
def test_column_rules_equal_the_scalar_rules(column):
    strings = cleaning.clean_strings(column).fillna("").tolist()
    assert strings == [cleaning.clean_string(v) for v in column]
    values, bad = cleaning.clean_numbers(column)
    for cell, value, flagged in zip(column, values, bad):
        try:
            expected = cleaning.clean_number(cell)
        except cleaning.NotANumber:
            assert flagged and math.isnan(value), cell
            continue
        assert not flagged, cell
        assert (math.isnan(value) and math.isnan(expected)) or value == expected, cell


# --------------------------------------------------------------------------- training vs serving

SCHEMA = {
    "query_key": "user_id",
    "query_features": [
        {"name": "user_id", "type": "id"},
        {"name": "gender", "type": "categorical"},
        {"name": "tags", "type": "multi_categorical"},
        {"name": "bio", "type": "text"},
        {"name": "age", "type": "numeric"},
        {"name": "history", "type": "history", "max_length": 3},
    ],
    "item_features": [{"name": "genre", "type": "categorical"}],
}
# One user per adversarial case; each column holds the case for its feature type. JSON lines
# keep the types a client sends (numbers, nulls); the CSV copy is all strings.
USERS = [
    {"user_id": " u1 ", "gender": " F ", "tags": " a | b ||", "bio": "\uff2e\uff49\uff4b\uff45  Air!", "age": " 33 "},
    {"user_id": "u2", "gender": DECOMPOSED, "tags": f"{DECOMPOSED}|", "bio": DECOMPOSED.upper(), "age": "1e1"},
    {"user_id": "u3", "gender": "", "tags": "", "bio": "", "age": ""},
    {"user_id": "u4", "gender": "   ", "tags": "|", "bio": "  ", "age": None},
    {"user_id": 7, "gender": 3, "tags": "x", "bio": "Case CASE case", "age": 41},
    {"user_id": "u6", "gender": None, "tags": None, "bio": None, "age": 27.5},
    {"user_id": "u7", "gender": "f", "tags": "A|a", "bio": "tab\tand\nnewline", "age": "-0"},
]
ITEMS = [{"item_id": f" i{n} " if n % 2 else f"i{n}", "genre": "g"} for n in range(6)]
# u1 clicked i0, i1, i2, i3 (i1, i3 written with spaces); u2 i4, i5; the others nothing.
INTERACTIONS = ([{"user_id": " u1 ", "item_id": ITEMS[n]["item_id"], "timestamp": 10 * n} for n in range(4)]
                + [{"user_id": "u2", "item_id": ITEMS[n]["item_id"], "timestamp": 10 * n} for n in (4, 5)]
                + [{"user_id": 7, "item_id": "i0", "timestamp": 5}])


def _write(folder: Path, fmt: str) -> None:
    folder.mkdir(parents=True)
    for name, rows in (("users", USERS), ("items", ITEMS), ("interactions", INTERACTIONS)):
        if fmt == "jsonl":
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            pd.DataFrame(rows).astype(object).where(pd.DataFrame(rows).notna(), "").to_csv(
                folder / f"{name}.csv", index=False)


@pytest.fixture(scope="module", params=["jsonl", "csv"])
def transformed(request, tmp_path_factory):
    """(config, stats, query table rows by key, raw users as the file gives them) of one ingest +
    transform over the adversarial tables."""
    from features.ingest import ingest
    from features.transform import run_transform

    root = tmp_path_factory.mktemp(request.param)
    _write(root / "src", request.param)
    config = Config.model_validate({"data": {"path": str(root / "src")}, "schema": SCHEMA,
                                    "transform": {"split": "hashed"},
                                    "publish": {"store": str(root / "store")}})
    ingest(config, str(root / "ingested"))
    stats = run_transform(config, str(root / "ingested"), str(root / "out"))
    table = {}
    for line in (root / "out" / "query_table.jsonl").read_text().splitlines():
        row = json.loads(line)
        table[row["user_id"]] = row
    raw = USERS if request.param == "jsonl" else [
        {k: ("" if v is None else str(v)) for k, v in user.items()} for user in USERS]
    return config, stats, table, raw


def _serving_inputs(config: Config, stats: dict, raw: dict) -> dict:
    """What the query service feeds the tower for a ``features`` request carrying ``raw``."""
    from trainer.artifacts import query_feature_default

    out = {}
    for spec in config.schema_.query_features:
        if spec.type != "history":
            default = query_feature_default(spec, stats)
            out[spec.name] = query_inputs.feature_input(spec.name, spec.type, raw[spec.name], default)
    return out


@pytest.mark.parametrize("feature", ["user_id", "gender", "tags", "bio", "age"])
def test_a_request_cleans_each_feature_as_training_did(transformed, feature):
    config, stats, table, raw_users = transformed
    for raw in raw_users:
        served = _serving_inputs(config, stats, raw)
        trained = table[served["user_id"]]
        assert served[feature] == pytest.approx(trained[feature]) if feature == "age" else \
            served[feature] == trained[feature], (raw, served[feature], trained[feature])


def test_the_adversarial_users_collapse_as_intended(transformed):
    """Not vacuous: the cases do differ raw and do clean to what the rules say."""
    config, stats, table, raw_users = transformed
    assert sorted(table) == ["7", "u1", "u2", "u3", "u4", "u6", "u7"]
    assert table["u1"]["gender"] == "F" and table["u7"]["gender"] == "f"  # case is kept
    assert table["u2"]["gender"] == COMPOSED and table["u2"]["tags"] == COMPOSED
    assert table["u1"]["tags"] == "a|b" and table["u1"]["bio"] == "nike air"
    assert table["u3"]["age"] == table["u4"]["age"] == pytest.approx(stats["numeric"]["age"]["mean"])
    assert table["u1"]["age"] == 33.0 and table["u2"]["age"] == 10.0


def test_a_request_history_cleans_ids_as_training_did(transformed):
    config, _, table, _ = transformed
    # u1's clicks as the interactions file spells them, oldest first, cut to max_length 3.
    clicks = [ITEMS[n]["item_id"] for n in range(4)]
    served = query_inputs.history_items("'history'", clicks)
    assert history.extend(served, [], 3) == table["u1"]["history"] == ["i1", "i2", "i3"]
    assert query_inputs.history_items("'history'", [f" {DECOMPOSED} ", 7]) == [COMPOSED, "7"]


def test_serving_takes_missing_as_training_does_and_refuses_what_ingest_dead_letters():
    assert query_inputs.feature_input("age", "numeric", float("nan"), 40.0) == 40.0
    assert query_inputs.feature_input("age", "numeric", None, 40.0) == 40.0
    assert query_inputs.feature_input("gender", "categorical", float("nan")) == ""
    for bad in ["old", "inf", True, [33]]:
        with pytest.raises(RequestError, match="feature 'age' must be a finite number"):
            query_inputs.feature_input("age", "numeric", bad, 40.0)
    with pytest.raises(RequestError, match="float32"):
        query_inputs.feature_input("age", "numeric", "1e300", 40.0)
    with pytest.raises(RequestError, match="feature 'gender' must be a string"):
        query_inputs.feature_input("gender", "categorical", {"F": 1})


def test_ingest_dead_letters_a_numeric_the_request_path_refuses(tmp_path):
    from features.ingest import ingest

    src = tmp_path / "src"
    users = [{**USERS[0], "age": "inf"}, {**USERS[1], "age": "old"}, USERS[2]]
    src.mkdir()
    (src / "users.jsonl").write_text("".join(json.dumps(r) + "\n" for r in users))
    (src / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (src / "interactions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in INTERACTIONS))
    config = Config.model_validate({"data": {"path": str(src), "max_bad_fraction": 1.0}, "schema": SCHEMA,
                                    "publish": {"store": str(tmp_path / "store")}})
    ingest(config, str(tmp_path / "ingested"))
    dead = [json.loads(line) for line in (tmp_path / "ingested" / "dead_letter.jsonl").read_text().splitlines()]
    reasons = sorted(d["reason"] for d in dead if d.get("field") == "age")
    assert reasons == ["not a number: 'inf'", "not a number: 'old'"]
