"""serving.Retriever on a tiny published version built from the fixture towers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from indexer.embeddings import load_embeddings
from indexer.scann_index import exact_topk
from serving.retriever import NoLiveVersionError, RequestError, Retriever, UnknownKeyError
from tests.support.indexer_models import N_USERS, build_tower, make_config, write_models, write_transformed
from tests.support.stores import publish_tiny_version


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    config = make_config(tmp)
    transformed = write_transformed(config, str(tmp / "transformed"))
    models = write_models(str(tmp / "model"))
    version = publish_tiny_version(config, tmp, transformed, models)
    retriever = Retriever.load(config.publish.store)
    ids, matrix = load_embeddings(str(tmp / "emb"))
    seen = {json.loads(line)["key"]: json.loads(line) for line in open(os.path.join(transformed, "seen.jsonl"))}
    return retriever, version, ids, matrix, seen, config


def _expected(retriever, ids, matrix, features, k, exclude=()):
    q = retriever.tower.embed({n: [features[n]] for n in retriever.tower.input_names})
    order, _ = exact_topk(matrix, q, len(ids))
    return [ids[i] for i in order[0] if ids[i] not in exclude][:k]


def test_a_request_is_cleaned_as_the_training_data_was(published):
    """A padded id and a number sent as a string are the values the model learned (core/cleaning.py),
    not the out-of-vocabulary row: the answer equals the clean request's."""
    retriever, *_ = published
    clean = retriever.retrieve({"features": {"user_id": "1", "age": 41.0}}, k=5)
    padded = retriever.retrieve({"features": {"user_id": " 1\t", "age": " 41 "}}, k=5)
    assert padded["items"] == clean["items"] and padded["scores"] == clean["scores"]
    assert retriever.retrieve({"user_id": " 1 "}, k=5)["items"] == retriever.retrieve({"user_id": 1}, k=5)["items"]
    other = retriever.retrieve({"features": {"user_id": "no-such-user", "age": 41.0}}, k=5)
    assert other["scores"] != clean["scores"]  # the id matters, so the equality above is not vacuous


def test_load_without_live_version_is_a_clear_error(tmp_path):
    with pytest.raises(NoLiveVersionError, match="no live version"):
        Retriever.load(str(tmp_path / "empty-store"))


def test_retrieve_by_features_matches_exact_search(published):
    retriever, version, ids, matrix, _, _ = published
    features = {"user_id": "u-new", "age": 41.0}
    out = retriever.retrieve({"features": features}, k=5)
    assert out["version"] == version == retriever.version
    assert [it["item_id"] for it in out["items"]] == _expected(retriever, ids, matrix, features, 5)
    assert out["scores"] == sorted(out["scores"], reverse=True) and len(out["scores"]) == 5
    first = out["items"][0]
    assert set(first) == {"item_id", "title", "price"}
    n = int(first["item_id"][4:])
    assert first["title"] == f"Thing #{n}" and first["price"] == n / 2


def test_retrieve_by_key_uses_the_query_table(published):
    retriever, _, ids, matrix, _, _ = published
    by_key = retriever.retrieve({"user_id": "3"}, k=7)
    by_int = retriever.retrieve({"user_id": 3}, k=7)
    by_features = retriever.retrieve({"features": {"user_id": "3", "age": 23.0}}, k=7)
    assert by_key["items"] == by_int["items"] == by_features["items"]
    assert [it["item_id"] for it in by_key["items"]] == _expected(retriever, ids, matrix,
                                                                    {"user_id": "3", "age": 23.0}, 7)


def test_exclude_seen_filters_train_valid_and_test_items(published):
    retriever, _, ids, matrix, seen, _ = published
    for user in map(str, range(N_USERS)):
        row = seen[user]
        history = set(row["train"]) | set(row["valid"]) | set(row["test"])
        out = retriever.retrieve({"user_id": user}, k=10, exclude_seen=True)
        got = [it["item_id"] for it in out["items"]]
        assert len(got) == 10 and not history & set(got)
        assert got == _expected(retriever, ids, matrix, {"user_id": user, "age": 20.0 + int(user)}, 10,
                                exclude=history)
    # Without the flag seen items do come back, so the filter above is doing the work.
    plain = [{it["item_id"] for it in retriever.retrieve({"user_id": str(u)}, k=10)["items"]}
             for u in range(N_USERS)]
    assert any(top & (set(seen[str(u)]["train"]) | set(seen[str(u)]["test"])) for u, top in enumerate(plain))


def test_k_larger_than_catalog_returns_every_item_once(published):
    retriever, _, ids, _, _, _ = published
    out = retriever.retrieve({"user_id": "1"}, k=1000, exclude_seen=True)
    assert len(out["items"]) == len(ids) - 5
    assert len({it["item_id"] for it in out["items"]}) == len(out["items"])


def test_retrieve_batch_equals_single_requests(published):
    retriever, *_ = published
    requests = [{"user_id": "2"}, {"features": {"user_id": "x", "age": 30}}, {"user_id": "5"}]
    batch = retriever.retrieve_batch(requests, k=4, exclude_seen=True)
    singles = [retriever.retrieve(r, k=4, exclude_seen=True) for r in requests]
    assert [b["items"] for b in batch] == [s["items"] for s in singles]
    for b, s in zip(batch, singles):
        np.testing.assert_allclose(b["scores"], s["scores"], atol=1e-6)


@pytest.mark.parametrize("request_, k, message", [
    ({"user_id": "1"}, 0, "k must be an integer in 1..1000"),
    ({"user_id": "1"}, 1001, "k must be an integer in 1..1000"),
    ({"user_id": "1"}, "5", "k must be an integer"),
    ("user 1", 5, "must be a JSON object"),
    ({}, 5, "exactly one of"),
    ({"user_id": "1", "features": {}}, 5, "exactly one of"),
    ({"user": "1"}, 5, "unknown request field"),
    ({"query": "shoes"}, 5, "free-text 'query' requests need a text query key"),
    ({"user_id": 1.5}, 5, "'user_id' must be a string or integer"),
    ({"features": {"user_id": "1"}}, 5, r"missing query feature\(s\) \['age'\]"),
    ({"features": {"user_id": "1", "age": 3.0, "zip": "x"}}, 5, r"unknown query feature\(s\) \['zip'\]"),
    ({"features": {"user_id": "1", "age": "old"}}, 5, "feature 'age' must be a finite number"),
    ({"features": {"user_id": "1", "age": float("inf")}}, 5, "finite number"),
    ({"features": {"user_id": "1", "age": "inf"}}, 5, "finite number"),
    ({"features": {"user_id": "1", "age": True}}, 5, "finite number"),
    ({"features": {"user_id": 1.0, "age": 3.0}}, 5, "feature 'user_id' must be a string"),
    ({"features": ["user_id"]}, 5, "'features' must be an object"),
])
def test_bad_requests_raise_request_error_with_a_reason(published, request_, k, message):
    retriever, *_ = published
    with pytest.raises(RequestError, match=message):
        retriever.retrieve(request_, k=k)


def test_unknown_key_names_it(published):
    retriever, *_ = published
    with pytest.raises(UnknownKeyError, match="unknown user_id '999'"):
        retriever.retrieve({"user_id": "999"})
    with pytest.raises(RequestError, match="request 1: unknown user_id '998'"):
        retriever.retrieve_batch([{"user_id": "1"}, {"user_id": "998"}])


def test_load_a_pinned_version_and_a_text_query_model(published, tmp_path):
    retriever, version, *_ = published
    config = published[5]
    assert Retriever.load(config.publish.store, version=version).version == version

    # A search model: the key is free text, so {"query": ...} is accepted.
    text_config = make_config(tmp_path, schema={"query_key": "query",
                                                "query_features": [{"name": "query", "type": "text"}]})
    transformed = write_transformed(text_config, str(tmp_path / "transformed"))
    with open(os.path.join(transformed, "query_table.jsonl"), "w") as fh:
        fh.write(json.dumps({"query": "red shoes"}) + "\n")
    with open(os.path.join(transformed, "seen.jsonl"), "w") as fh:
        fh.write(json.dumps({"key": "red shoes", "train": ["item000"], "valid": [], "test": []}) + "\n")
    models = str(tmp_path / "model")
    build_tower(os.path.join(models, "item_tower"), "item")
    build_tower(os.path.join(models, "query_tower"), "text", seed=3)
    publish_tiny_version(text_config, tmp_path, transformed, models)
    search = Retriever.load(text_config.publish.store)
    a = search.retrieve({"query": "Red Shoes"}, k=3)
    b = search.retrieve({"features": {"query": "red shoes"}}, k=3)
    assert a["items"] == b["items"]  # the tower lower-cases, like the real one normalises
    with pytest.raises(RequestError, match="not 'user_id'"):
        search.retrieve({"user_id": "1"})
    # Seen keys may be stored normalised; a raw query still finds its history.
    unseen = search.retrieve({"query": "Red  Shoes!"}, k=59, exclude_seen=True)
    assert "item000" not in [it["item_id"] for it in unseen["items"]] and len(unseen["items"]) == 59


# ---------------------------------------------------------------- hostile input through the CLI
def test_cli_query_with_a_lone_surrogate_is_a_one_line_error(published, capsys):
    from pipelines.cli import main

    store = published[-1].publish.store
    # argv decoding turns undecodable bytes into lone surrogates (surrogateescape)
    assert main(["query", "--store", store, "--user-id", "\udced\udca0\udc80"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twotower query: error:") and "Unicode" in err and "Traceback" not in err


@pytest.mark.parametrize("content, reason", [(b'{"user_id": "\\ud800"}\n', "Unicode"),
                                             (b'{"user_id": "1"}\n\xff\xfe{"user_id": "2"}\n', "line 2: not UTF-8"),
                                             (b"[" * 100000 + b"\n", "line 1"),
                                             (b'{"features": {"user_id": "1", "age": 1e39}}\n', "float32")])
def test_cli_retrieve_with_hostile_lines_is_a_one_line_error(published, capsys, tmp_path, content, reason):
    from pipelines.cli import main

    store = published[-1].publish.store
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(content)
    assert main(["retrieve", "--store", store, "--queries", str(queries), "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twotower retrieve: error:") and reason in err and "Traceback" not in err, err


def test_a_tree_index_answers_a_k_larger_than_its_searched_leaves_hold(published):
    """ScaNN pads a tree search whose leaves hold fewer than k points with NaN scores (a 500
    before): the retriever searches every leaf for such a request and answers k items."""
    import copy
    import threading

    from indexer.scann_index import TREE_AH, IndexParams, build_with_params

    retriever, _, ids, matrix, _, _ = published
    tree = copy.copy(retriever)
    params = IndexParams(kind=TREE_AH, num_leaves=6, num_leaves_to_search=1, training_sample_size=len(ids),
                         reorder_k=len(ids))
    tree.searcher = build_with_params(matrix, params)
    tree.reorder_k, tree.num_leaves = params.reorder_k, params.num_leaves
    tree._lock = threading.Lock()
    k = len(ids) - 2  # far more than one leaf of 6 holds
    answer = tree.retrieve({"user_id": "3"}, k=k)
    assert len(answer["items"]) == k and all(np.isfinite(answer["scores"]))
    assert len({it["item_id"] for it in answer["items"]}) == k
    assert answer["scores"] == sorted(answer["scores"], reverse=True)


@pytest.mark.parametrize("name", ["dot", "euclidean"])
def test_a_dot_or_euclidean_version_is_served_by_its_own_score(tmp_path, name):
    """Unnormalised towers published with train.similarity=dot / euclidean: the index uses that
    measure (manifest, index metrics) and answers equal numpy's top-k by q . i / -||q - i||^2,
    scores included (higher is better), where the cosine answer would differ."""
    config = make_config(tmp_path, train={"similarity": name})
    transformed = write_transformed(config, str(tmp_path / "transformed"))
    version = publish_tiny_version(config, tmp_path, transformed, write_models(str(tmp_path / "model"), unit=False))
    retriever = Retriever.load(config.publish.store)
    assert retriever.similarity == name and retriever.manifest["serving"]["similarity"] == name
    assert retriever.manifest["index"]["distance_measure"] == ("squared_l2" if name == "euclidean" else "dot_product")
    ids, matrix = load_embeddings(str(tmp_path / "emb"))
    assert np.linalg.norm(matrix, axis=1).std() > 0.1  # really unnormalised
    features = {"user_id": "3", "age": 23.0}
    query = retriever.tower.embed({n: [features[n]] for n in retriever.tower.input_names}).astype(np.float64)
    numpy_scores = (-((query - matrix) ** 2).sum(axis=1) if name == "euclidean" else matrix @ query[0])
    order = np.argsort(-numpy_scores, kind="stable")[:8]
    out = retriever.retrieve({"features": features}, k=8)
    assert out["version"] == version
    assert [it["item_id"] for it in out["items"]] == [ids[i] for i in order]
    np.testing.assert_allclose(out["scores"], numpy_scores[order], rtol=1e-4, atol=1e-4)
    cosine = matrix @ query[0] / np.linalg.norm(matrix, axis=1)
    assert list(np.argsort(-cosine, kind="stable")[:8]) != list(order)  # the measure decided the answer
