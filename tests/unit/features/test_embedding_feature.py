"""``type: embedding`` (a precomputed float vector column): the cleaning rule, the config checks,
ingest's dead letters, and a run on the ring data whose item tower reads only such a vector
(each item's ring position as cos / sin) and serves it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import cleaning
from core.config import Config
from serving.query_inputs import RequestError, TowerInputs
from tests.ring_data import N_ITEMS, config, publish_run, ring_tables, transform


def test_a_vector_reads_from_a_list_a_json_array_or_separated_numbers():
    expected = [0.5, -1.0, 0.25]
    for value in ([0.5, -1, 0.25], np.array([0.5, -1.0, 0.25]), "[0.5, -1, 0.25]", " 0.5 -1.0\t0.25 ", "0.5,-1,.25"):
        assert cleaning.clean_embedding(value, 3) == expected, value
    assert cleaning.clean_embedding(None, 3) == [0.0, 0.0, 0.0] == cleaning.clean_embedding(" ", 3)
    third = cleaning.clean_embedding([1 / 3, 0.1, 7], 3)
    assert third == np.float32([1 / 3, 0.1, 7]).astype(np.float64).tolist()  # exactly float32 values
    assert cleaning.clean_embedding(cleaning.embedding_text(third), 3) == third  # the canonical text round-trips


@pytest.mark.parametrize("value, message", [
    ([1.0, 2.0], r"2 values, the feature has dims 3"),
    ("1 2 3 4", r"4 values"),
    ([1.0, float("nan"), 2.0], r"value 1 is not a finite float32"),
    ("1 inf 2", r"not a number in the vector: 'inf'"),
    ([1.0, 2.0, 1e39], r"value 2 is not a finite float32"),
    ([[1.0], [2.0], [3.0]], r"nested list"),
    ({"a": 1}, r"not a vector"),
])
def test_a_bad_vector_says_why(value, message):
    with pytest.raises(cleaning.NotAVector, match=message):
        cleaning.clean_embedding(value, 3)


def _schema(**extra) -> dict:
    return {"query_key": "q", "query_features": [{"name": "q", "type": "id"}],
            "item_features": [{"name": "v", "type": "embedding", "dims": 4}], **extra}


def _config(schema: dict) -> Config:
    return Config.model_validate({"data": {"path": "d"}, "publish": {"store": "s"}, "schema": schema})


def test_config_needs_dims_on_an_embedding_only_and_no_vector_key():
    assert _config(_schema()).schema.item_features[0].dims == 4
    with pytest.raises(ValueError, match=r"type embedding needs dims"):
        _config({**_schema(), "item_features": [{"name": "v", "type": "embedding"}]})
    with pytest.raises(ValueError, match=r"dims only applies to type embedding \(it is numeric\)"):
        _config({**_schema(), "item_features": [{"name": "v", "type": "numeric", "dims": 2}]})
    with pytest.raises(ValueError, match=r"query_key 'q' cannot be embedding"):
        _config({**_schema(), "query_features": [{"name": "q", "type": "embedding", "dims": 2}]})
    dumped = json.loads(_config(_schema()).to_json())["schema"]
    assert dumped["item_features"] == [{"name": "v", "type": "embedding", "dims": 4}]
    assert dumped["query_features"] == [{"name": "q", "type": "id"}]


def test_a_request_vector_is_checked_like_ingest_checks_a_row():
    inputs = TowerInputs(("q", "v"), {"q": "id", "v": "embedding"}, {"v": [0.0] * 3}, None, 0, set(), {"v": 3})
    built, _, _ = inputs.build({"q": "a", "v": [1, 2.5, -3]})
    assert built == {"q": "a", "v": [1.0, 2.5, -3.0]}
    assert inputs.build({"q": "a", "v": None})[0]["v"] == [0.0, 0.0, 0.0]
    for bad, message in (([1, 2], r"feature 'v': 2 values, the feature has dims 3"),
                         ("1 2 3", r"feature 'v' must be a list of 3 numbers, got str"),
                         ([1, True, 2], r"must be a list of 3 numbers"),
                         ([1, 2, float("inf")], r"value 2 is not a finite float32")):
        with pytest.raises(RequestError, match=message):
            inputs.build({"q": "a", "v": bad})


def _ring_vector(i: int) -> list[float]:
    """Item i's place on the ring, as the vector column: cos / sin at two frequencies."""
    angle = 2 * np.pi * i / N_ITEMS
    return [float(np.cos(angle)), float(np.sin(angle)), float(np.cos(2 * angle)), float(np.sin(2 * angle))]


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vectors")
    tables = ring_tables(seed=7)
    items = tables["items"].drop(columns=["genre"])
    items["pos"] = [json.dumps(_ring_vector(int(i[1:]))) for i in items["item_id"]]
    items.loc[3, "pos"] = "[1.0, 2.0, 3.0]"  # one bad row: another length
    items.loc[5, "pos"] = ""  # missing: the zero vector
    tables["items"] = items
    overrides = {"schema.item_features": [{"name": "pos", "type": "embedding", "dims": 4}],
                 "train.n_epochs": 6, "data.max_bad_fraction": 0.05}
    cfg, transformed = transform(root, tables, **overrides)
    training, metrics, result = publish_run(cfg, transformed, root)
    return cfg, root, metrics, result


def test_ingest_keeps_the_bad_vector_row_as_a_dead_letter_naming_file_row_and_field(vector_run):
    _, root, _, _ = vector_run
    dead = [json.loads(line) for line in (root / "ingested" / "dead_letter.jsonl").read_text().splitlines()]
    vectors = [d for d in dead if d["field"] == "pos"]
    assert len(vectors) == 1 and vectors[0]["file"].endswith("items.csv")
    assert vectors[0]["reason"] == "3 values, the feature has dims 4" and vectors[0]["row"] >= 1


def test_the_towers_learn_from_the_vector_alone_and_serve_it(vector_run):
    from core.towers import Tower
    from serving.retriever import Retriever

    cfg, root, metrics, result = vector_run
    assert result["published"], result["reasons"]
    # The item tower sees nothing but the vector (no item ids, no other feature), and the query
    # tower reads the history: learning the ring's next item is only possible through the vector.
    assert metrics["recall_at_10"] > 3 * metrics["popularity"]["recall_at_10"]
    item_tower = Tower(str(root / "model" / "item_tower"))
    assert item_tower.input_names == ["item_id", "pos"]
    spec = item_tower._fn.structured_input_signature[1]["pos"]
    assert spec.shape.as_list() == [None, 4]
    near = item_tower.embed({"item_id": ["", ""], "pos": [_ring_vector(10), _ring_vector(11)]})
    far = item_tower.embed({"item_id": [""], "pos": [_ring_vector(40)]})
    assert float(near[0] @ near[1]) > float(near[0] @ far[0])
    answer = Retriever.load(cfg.publish.store).retrieve({"user_id": "u1"}, k=5)
    assert len(answer["items"]) == 5
