"""History features end to end on a tiny planted-sequence dataset: core/history.py's rules, the
Beam transform's history column and query table, the tower's encoder, and serving's
request-time history, checked against one another (train/serve parity) and by hand.

The data (tests/ring_data.py) has a planted sequence: the next item is the last one plus one.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from core import history
from core.config import Config
from tests.ring_data import MAX_LENGTH, N_ITEMS, config as _config, publish_run, records as _records
from tests.ring_data import ring_tables as _ring_tables, transform as _transform

@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """(config, transformed dir, tables) of one leave-last-out transform of the ring data."""
    root = tmp_path_factory.mktemp("ring")
    tables = _ring_tables()
    config, out = _transform(root, tables)
    return config, out, tables, root


# --------------------------------------------------------------------------- core/history.py


def test_timeline_is_strictly_before_and_orders_ties_by_item_id():
    line = history.Timeline([(20, "b"), (10, "z"), (20, "a"), (30, "c")])
    assert line.before(20, 10) == ["z"]  # equal timestamps are not "before"
    assert line.before(21, 10) == ["z", "a", "b"]  # the tie ordered by item id
    assert line.before(31, 2) == ["b", "c"]  # the most recent max_length
    assert line.before(5, 3) == []
    assert line.latest(3) == ["a", "b", "c"] and len(line) == 4


def test_extend_join_and_split():
    assert history.extend(["a", "b"], ["c", "d"], 3) == ["b", "c", "d"]
    assert history.split(history.join(["1", "x y", "é"])) == ["1", "x y", "é"]
    assert history.split(history.join([])) == []
    with pytest.raises(ValueError, match="separator"):
        history.join(["ok", "bad\x1fid"])


def test_history_options_only_on_history_features(tmp_path):
    base = _config(tmp_path, tmp_path / "s").model_dump(by_alias=True)
    base["schema"]["query_features"][0]["pooling"] = "mean"
    with pytest.raises(ValueError, match="pooling only applies to type history"):
        Config.model_validate(base)
    base = _config(tmp_path, tmp_path / "s").model_dump(by_alias=True)
    base["schema"]["query_features"][1]["item_embedding"] = "shared"
    base["train"]["use_item_ids_as_features"] = False
    with pytest.raises(ValueError, match="needs train.use_item_ids_as_features"):
        Config.model_validate(base)


# --------------------------------------------------------------------------- the transform


def _expected_histories(tables: dict, split_of) -> dict[tuple, list[str]]:
    """(user, item, timestamp) -> history, computed from the raw rows with core/history.py's
    rule and the visibility of each split, independently of the transform."""
    inter = tables["interactions"]
    visible = {"train": ("train",), "train_negatives": ("train",), "valid": ("train",), "test": ("train", "valid")}
    out = {}
    for user, rows in inter.groupby("user_id"):
        positives = [(int(r.timestamp), r.item_id, split_of(user, r)) for r in rows.itertuples() if r.label == 1]
        for r in rows.itertuples():
            split = split_of(user, r)
            line = history.Timeline((ts, item) for ts, item, s in positives if s in visible[split])
            out[(user, r.item_id, int(r.timestamp))] = line.before(int(r.timestamp), MAX_LENGTH)
    return out


def _leave_last_out_split(tables):
    inter = tables["interactions"]
    order = {}
    for user, rows in inter[inter.label == 1].groupby("user_id"):
        ranked = sorted((int(r.timestamp), r.item_id) for r in rows.itertuples())
        for i, (ts, item) in enumerate(ranked):
            n = len(ranked)
            order[(user, item, ts)] = ("test" if i == n - 1 else "valid" if i == n - 2 else "train") if n >= 3 else "train"

    def split_of(user, r):
        return "train_negatives" if r.label == 0 else order[(user, r.item_id, int(r.timestamp))]
    return split_of


def test_every_example_carries_the_history_of_its_past(ring):
    config, out, tables, _ = ring
    expected = _expected_histories(tables, _leave_last_out_split(tables))
    # The transform writes no timestamp: match examples by (user, item), unique in this data
    # (a user never repeats an item: the ring has 60 items and 9 steps).
    by_pair = {(u, i): h for (u, i, _), h in expected.items()}
    n = 0
    for split in ("train", "valid", "test", "train_negatives"):
        for row in _records(out, split, config):
            assert history.split(row["recent"]) == by_pair[(row["user_id"], row["item_id"])], (split, row)
            assert row["item_id"] not in history.split(row["recent"])  # never the target itself
            n += 1
    assert n == len(tables["interactions"])


def test_ties_and_label_zero_rows_by_hand(ring):
    config, out, _, _ = ring
    rows = {(r["item_id"], split): r["recent"] for split in ("train", "valid", "test", "train_negatives")
            for r in _records(out, split, config) if r["user_id"] == "tie"}
    # tie: i3@50, i5@50 (tie: i3 first), i9@60, i1@70 -> train i3, i5; valid i9; test i1.
    assert history.split(rows[("i3", "train")]) == []
    assert history.split(rows[("i5", "train")]) == []  # same timestamp: not before
    assert history.split(rows[("i9", "valid")]) == ["i3", "i5"]
    assert history.split(rows[("i1", "test")]) == ["i3", "i5", "i9"]  # a test row sees the valid item
    assert history.split(rows[("i7", "train_negatives")]) == ["i3", "i5"]  # label 0 @65: train items only


def test_query_table_history_is_the_latest_items_of_all_positives(ring):
    _, out, tables, _ = ring
    table = {json.loads(line)["user_id"]: json.loads(line) for line in (out / "query_table.jsonl").read_text().splitlines()}
    inter = tables["interactions"]
    for user, rows in inter[inter.label == 1].groupby("user_id"):
        line = history.Timeline((int(r.timestamp), r.item_id) for r in rows.itertuples())
        assert table[user]["recent"] == line.latest(MAX_LENGTH)
    assert table["tie"]["recent"] == ["i3", "i5", "i9", "i1"]  # by hand; the label-0 i7 is not a click


def test_hashed_split_keeps_held_out_items_out_of_training_histories(tmp_path):
    tables = _ring_tables(seed=5)
    config, out = _transform(tmp_path, tables, **{"transform.split": "hashed", "transform.test_fraction": 0.2,
                                                  "transform.valid_fraction": 0.2})
    held_out = {(r["user_id"], r["item_id"]) for split in ("valid", "test") for r in _records(out, split, config)}
    assert held_out
    test_pairs = {(r["user_id"], r["item_id"]) for r in _records(out, "test", config)}
    for split in ("train", "valid", "test"):
        for row in _records(out, split, config):
            items = history.split(row["recent"])
            if split == "train":
                assert not any((row["user_id"], i) in held_out for i in items), row
            else:  # a held-out row never sees a test item
                assert not any((row["user_id"], i) in test_pairs for i in items), row


# --------------------------------------------------------------------------- the encoder


def _encoder(vocabulary, pooling, dims=3):
    from trainer.features import HistoryEncoder

    enc = HistoryEncoder(vocabulary, dims, MAX_LENGTH, pooling, name="h")
    enc(np.array(["", "a"], dtype=object))  # build
    return enc


def test_encoder_splits_like_core_history_cuts_and_drops_unknown_ids():
    enc = _encoder(["a", "b", "c", "d", "e"], "mean")
    values = [history.join(["a", "zz", "b"]), history.join(["a", "b", "c", "d", "e"]), "", history.join(["zz"])]
    ids, lengths = enc.known_items(np.array(values, dtype=object))
    # index = vocabulary position + 1 (0 = unknown); the last MAX_LENGTH (4) are kept, then
    # unknown ids are dropped.
    assert ids.numpy().tolist() == [[1, 2, 0, 0], [2, 3, 4, 5], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert lengths.numpy().tolist() == [2, 4, 0, 0]


def test_poolings_by_hand():
    import tensorflow as tf

    vocab = ["a", "b", "c"]
    values = np.array([history.join(["a", "b", "c"]), ""], dtype=object)
    for pooling in ("mean", "recency", "attention"):
        enc = _encoder(vocab, pooling)
        table = enc.embedding.embeddings.numpy()
        e = table[[1, 2, 3]]  # a, b, c
        out = enc(values).numpy()
        if pooling == "mean":
            np.testing.assert_allclose(out[0], e.mean(axis=0), rtol=1e-5)
        elif pooling == "recency":
            enc.rank_logits.assign([0.0, np.log(2.0), 0.0, 5.0])  # rank 0 = c, 1 = b, 2 = a; 3 unused
            w = np.array([1.0, 2.0, 1.0]) / 4.0  # softmax over ranks of a, b, c present
            np.testing.assert_allclose(enc(values).numpy()[0], w @ e, rtol=1e-5)
        else:
            wq = enc.query_projection.kernel.numpy()
            wk = enc.key_projection.kernel.numpy()
            scores = (e[2] @ wq) @ (e @ wk).T / np.sqrt(3.0)
            a = np.exp(scores - scores.max())
            a /= a.sum()
            np.testing.assert_allclose(out[0], np.concatenate([e[2], a @ e]), rtol=1e-4, atol=1e-6)
        assert not out[1].any(), f"{pooling}: an empty history must encode as zeros"
        assert np.isfinite(out).all()
    del tf


# --------------------------------------------------------------------------- training and serving


@pytest.fixture(scope="module")
def published_ring(ring):
    """The ring run trained, embedded, indexed and published; (retriever, config, training)."""
    from serving.retriever import Retriever

    config, out, tables, root = ring
    training, metrics, result = publish_run(config, out, root)
    assert result["published"], result["reasons"]
    return Retriever.load(config.publish.store), config, training, metrics


def test_a_history_model_learns_the_planted_sequence(published_ring):
    _, _, _, metrics = published_ring
    # The next item is determined by the last one; popularity finds it about 10 times in 53.
    assert metrics["recall_at_10"] > 0.8, metrics["recall_at_10"]
    assert metrics["recall_at_10"] > 3 * metrics["popularity"]["recall_at_10"]


def test_serving_builds_the_history_the_transform_builds(published_ring, ring):
    retriever, _, _, _ = published_ring
    _, out, tables, _ = ring
    inter = tables["interactions"]
    rows = inter[(inter.user_id == "u7") & (inter.label == 1)]
    line = history.Timeline((int(r.timestamp), r.item_id) for r in rows.itertuples())
    resolved = retriever.resolve({"user_id": "u7"})
    assert history.split(resolved.features["recent"]) == line.latest(MAX_LENGTH)
    # The same items sent as request-time clicks by a user the table does not know.
    alone = retriever.resolve({"history": line.latest(MAX_LENGTH)})
    assert alone.features["recent"] == resolved.features["recent"]
    assert alone.features["user_id"] == ""  # a missing id takes the OOV value, as in training


def test_request_time_history_serves_a_new_user_from_a_few_clicks(published_ring):
    retriever, _, _, _ = published_ring
    answer = retriever.retrieve({"history": ["i10", "i11", "i12"]}, k=3, exclude_seen=True)
    assert answer["items"][0]["item_id"] == "i13", answer
    assert answer["history"] == {"used": 3, "ignored": 0, "cut": 0}
    assert not {"i10", "i11", "i12"} & {i["item_id"] for i in answer["items"]}


def test_clicks_since_the_publish_extend_a_known_users_history(published_ring):
    retriever, _, _, _ = published_ring
    known = retriever.query_table["u7"]["recent"]
    nxt = int(known[-1][1:]) + 1
    clicks = [f"i{(nxt + j) % N_ITEMS}" for j in range(2)]
    resolved = retriever.resolve({"user_id": "u7", "history": clicks})
    assert history.split(resolved.features["recent"]) == history.extend(known, clicks, MAX_LENGTH)
    top = retriever.retrieve({"user_id": "u7", "history": clicks}, k=1)["items"][0]["item_id"]
    assert top == f"i{(nxt + 2) % N_ITEMS}"


def test_unknown_history_items_are_ignored_and_counted_and_long_ones_cut(published_ring):
    retriever, _, _, _ = published_ring
    answer = retriever.retrieve({"history": ["nope", "i1", "i2", "i3", "i4", "i5", 42]}, k=2)
    assert answer["history"] == {"used": MAX_LENGTH, "ignored": 2, "cut": 1}
    resolved = retriever.resolve({"history": ["nope", "i1", "i2", "i3", "i4", "i5"]})
    assert history.split(resolved.features["recent"]) == ["i2", "i3", "i4", "i5"]


def test_bad_history_requests_are_request_errors(published_ring):
    from serving.retriever import RequestError

    retriever, _, _, _ = published_ring
    for request, reason in [({"history": "i1"}, "must be a list"), ({"history": [["i1"]]}, r"\[0\] must be an item id"),
                            ({"history": [True]}, r"\[0\] must be an item id"),
                            ({"user_id": "u1", "features": {}, "history": []}, "exactly one of")]:
        with pytest.raises(RequestError, match=reason):
            retriever.resolve(request)


def test_http_takes_a_history_alone_and_refuses_a_bad_one(published_ring):
    from serving.server import HttpError, parse_retrieve_body

    body, k, _ = parse_retrieve_body(json.dumps({"history": ["i1"], "k": 3}).encode(), 100)
    assert body == {"history": ["i1"]} and k == 3
    with pytest.raises(HttpError, match="exactly one of"):
        parse_retrieve_body(json.dumps({"k": 3}).encode(), 100)


def test_a_model_without_history_refuses_a_history_request(tmp_path):
    from serving.retriever import RequestError, Retriever
    from tests.support.indexer_models import make_config, write_models, write_transformed
    from tests.support.stores import publish_tiny_version

    config = make_config(tmp_path)
    transformed = write_transformed(config, str(tmp_path / "transformed"))
    models = write_models(str(tmp_path / "model"))
    publish_tiny_version(config, tmp_path, transformed, models)
    retriever = Retriever.load(config.publish.store)
    with pytest.raises(RequestError, match="no history feature"):
        retriever.resolve({"user_id": "3", "history": ["item0001"]})


def test_cli_query_takes_a_history(published_ring, capsys):
    from pipelines.cli import main

    retriever, config, _, _ = published_ring
    assert main(["query", "--store", str(config.publish.store), "--history", "i20, i21,nope", "-k", "2",
                 "--exclude-seen"]) == 0
    out = capsys.readouterr().out
    assert "history only  (history: 2 items used, 1 unknown ignored, 0 cut)" in out
    assert "  1. " in out and " i22 " in out.splitlines()[1]
    assert main(["query", "--store", str(config.publish.store)]) == 2
    assert "give --text, --user-id or --history" in capsys.readouterr().err


def test_query_key_dropout_trains_the_unknown_row_only_in_training():
    from trainer.features import IdEncoder

    enc = IdEncoder(["u1", "u2"], 4, unknown_rate=0.5, name="k")
    values = np.array(["u1"] * 2000, dtype=object)
    table = enc(values).numpy() is not None and enc.embedding.embeddings.numpy()
    served = enc(values, training=False).numpy()
    assert np.allclose(served, table[1])  # serving: always the id's own row
    trained = enc(values, training=True).numpy()
    unknown = np.all(np.isclose(trained, table[0]), axis=1).mean()
    assert 0.45 < unknown < 0.55, unknown  # training: half of the rows look the id up as unknown
    with pytest.raises(ValueError, match="unknown_rate"):
        IdEncoder(["u1"], 4, unknown_rate=1.0, name="bad")


def test_anonymous_rows_take_every_serving_default_together_and_keep_their_history():
    """train.anonymous_query_rate: a row is anonymised as a whole (key unknown, categorical unknown,
    numeric at its mean), its history untouched; prepared int64 rows take the default's row;
    serving (training=False) never anonymises."""
    import tensorflow as tf

    from core.config import FeatureSpec
    from trainer.features import HistoryEncoder, IdEncoder, NumericEncoder, TowerModel

    specs = [FeatureSpec(name="user_id", type="id"), FeatureSpec(name="gender", type="categorical"),
             FeatureSpec(name="age", type="numeric"), FeatureSpec(name="history", type="history")]
    encoders = {"user_id": IdEncoder(["u1", "u2"], 3, name="user_id_encoder"),
                "gender": IdEncoder(["F", "M"], 3, name="gender_encoder"),
                "age": NumericEncoder(30.0, 10.0, name="age_encoder"),
                "history": HistoryEncoder(["i1", "i2"], 3, 5, "mean", name="history_encoder")}
    defaults = {"user_id": "", "gender": "", "age": 30.0}
    tower = TowerModel(encoders, specs, [], "relu", 0.0, 4, anonymous_rate=0.5, anonymous_defaults=defaults,
                       name="query_tower")
    n = 4000
    raw = {"user_id": tf.constant(["u1"] * n), "gender": tf.constant(["M"] * n),
           "age": tf.constant([50.0] * n), "history": tf.constant(["i1\x1fi2"] * n)}
    tf.random.set_seed(0)
    out = tower._anonymised(raw)
    anonymous = out["user_id"].numpy() == b""
    assert 0.45 < anonymous.mean() < 0.55
    np.testing.assert_array_equal(out["gender"].numpy() == b"", anonymous)  # the same rows, together
    np.testing.assert_array_equal(out["age"].numpy() == 30.0, anonymous)
    np.testing.assert_array_equal(out["history"].numpy(), raw["history"].numpy())
    prepared = {**raw, "user_id": encoders["user_id"].lookup(raw["user_id"]),
                "gender": encoders["gender"].lookup(raw["gender"])}
    rows = tower._anonymised(prepared)
    np.testing.assert_array_equal(rows["user_id"].numpy() == 0, rows["age"].numpy() == 30.0)  # OOV row 0
    served = tower(raw, training=False).numpy()
    assert np.allclose(served, served[0])  # identical rows: nothing was anonymised at serving
    trained = tower(raw, training=True).numpy()
    assert 0.4 < np.mean(~np.all(np.isclose(trained, served[0], atol=1e-6), axis=1)) < 0.6
    with pytest.raises(ValueError, match="anonymous_rate"):
        TowerModel(encoders, specs, [], "relu", 0.0, 4, anonymous_rate=1.0, name="bad")
    with pytest.raises(ValueError, match="does not encode"):
        TowerModel(encoders, specs, [], "relu", 0.0, 4, anonymous_defaults={"city": ""}, name="bad")


def test_anonymous_defaults_are_the_manifests_serving_defaults(published_ring, ring):
    """The stand-in values train.anonymous_query_rate trains with are what a history-only request
    gets at serving: one definition (trainer.artifacts.query_feature_default)."""
    from trainer.features import build_towers

    retriever, _, _, _ = published_ring
    config, out, _, _ = ring
    query, _ = build_towers(config.with_overrides({"train.anonymous_query_rate": 0.2}), str(out))
    assert query.anonymous_rate == 0.2
    history_name = config.schema.history_feature.name
    assert set(query.anonymous_defaults) == {n for n in retriever.defaults if n != history_name} != set()
    assert query.anonymous_defaults == {n: v for n, v in retriever.defaults.items() if n != history_name}
    assert build_towers(config, str(out))[0].anonymous_defaults == {}


def test_hostile_history_requests_get_a_4xx_with_the_reason_and_never_move_the_service(published_ring):
    """POST /v1/retrieve with histories a hostile or careless client sends: each is a 400 naming
    the field (or, where the ids are merely unknown, a 200 that says how many were ignored); no
    500, and the service answers a good request after all of them."""
    from serving.server import QueryService
    from tests.support.http_client import call

    retriever, config, _, _ = published_ring
    known = sorted(retriever.items)[:3]
    bad = [
        ({"history": None}, "must be a list"),
        ({"history": {"i1": 1}}, "must be a list"),
        ({"history": "i1,i2"}, "must be a list"),
        ({"history": [None]}, r"history'\[0\] must be an item id"),
        ({"history": [known[0], 1.5]}, r"\[1\] must be an item id"),
        ({"history": [[known[0]]]}, r"\[0\] must be an item id"),
        ({"history": [False]}, r"\[0\] must be an item id"),
        ({"history": [known[0], "\ud800"]}, r"\[1\]"),
        ({"history": ["x" * 10]}, None),  # fine: an unknown id
        ({"user_id": "u1", "features": {"user_id": "u1"}, "history": []}, "exactly one of"),
        ({"features": {"user_id": "u1", "recent": known[:1]}, "history": ["i1"], "k": "3"}, "k"),
    ]
    service = QueryService(str(config.publish.store), port=0, poll_seconds=0.05)
    service.start()
    try:
        service.wait_ready(timeout=30)
        for request, reason in bad:
            status, body, _ = call(service.port, "POST", "/v1/retrieve", json.dumps(request).encode())
            if reason is None:
                assert status == 200 and body["history"] == {"used": 0, "ignored": 1, "cut": 0}, body
                continue
            assert status == 400, (request, status, body)
            assert re.search(reason, body["error"]), (request, body)
        raw = [b'{"history": [' + b"9" * 5000 + b']}',  # an integer past Python's 4300-digit str limit
               b'{"history": [' + b"[" * 3000 + b"]" * 3000 + b']}',  # nesting past the parser's stack
               b'{"history": ["' + b"\xff\xfe" + b'"]}',  # not UTF-8
               b'{"history": [1e999]}',  # inf
               ("{\"history\": [" + ",".join(['"' + known[0] + '"'] * 14000) + "]}").encode()]  # > 64 KiB
        for data in raw:
            status, body, _ = call(service.port, "POST", "/v1/retrieve", data)
            assert 400 <= status < 500, (data[:40], status, body)
            assert body and body.get("error"), body
        # Separators and control characters inside an id: the id is not in the catalog, so it is ignored
        # and cannot smuggle two items into the tower's joined history string.
        status, body, _ = call(service.port, "POST", "/v1/retrieve",
                               {"history": [f"{known[0]}\x1f{known[1]}", known[2]], "exclude_seen": True})
        assert status == 200 and body["history"] == {"used": 1, "ignored": 1, "cut": 0}, body
        status, body, _ = call(service.port, "POST", "/v1/retrieve", {"history": known, "k": 3})
        assert status == 200 and len(body["items"]) == 3 and body["history"]["used"] == 3
    finally:
        service.stop()
