"""Both towers frozen (index.query_vectors): the embed stage's vector of every query-table key,
published with the version and served by key without running the query tower.

One real run on the ring data (transform, train, the Beam embed stage, index, publish); what is
checked is parity (each precomputed vector is the tower's output on the inputs serving builds
for that key), that a request by key alone is answered from it with the same items, and that a
request carrying anything fresher (a history) still runs the tower.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.contracts import files as names
from serving.retriever import Retriever
from tests.ring_data import publish_run, ring_tables, transform


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("query_vectors")
    cfg, out = transform(root / "run", ring_tables(seed=5, n_items=40, n_users=60),
                         **{"index.query_vectors": True, "train.n_epochs": 4})
    _, _, result = publish_run(cfg, out, root / "run")
    assert result["published"], result["reasons"]
    return cfg, root


def test_every_query_table_key_has_the_vector_serving_would_compute(published):
    cfg, _ = published
    store = str(cfg.publish.store)
    fast = Retriever.load(store)
    assert fast.manifest["serving"]["query_vectors"] == names.QUERY_VECTORS_FILE
    assert names.QUERY_VECTORS_FILE in fast.manifest["files"]
    index, table = fast.query_vectors
    assert set(index) == set(fast.query_table)  # the ring's rows are all complete
    keys = sorted(index)
    resolved = [fast.resolve({"user_id": key}) for key in keys]
    assert all(r.precomputed == index[k] for r, k in zip(resolved, keys))
    tower = fast.tower.embed({n: [r.features[n] for r in resolved] for n in fast.tower.input_names})
    np.testing.assert_allclose(table[[index[k] for k in keys]], tower, atol=1e-5)


def test_a_request_by_key_alone_is_answered_from_the_precomputed_vector(published):
    cfg, _ = published
    store = str(cfg.publish.store)
    fast, slow = Retriever.load(store), Retriever.load(store, query_vectors=False)
    assert slow.query_vectors is None
    users = sorted(fast.query_table)[:12]
    fast_answers = fast.retrieve_batch([{"user_id": u} for u in users], k=5, exclude_seen=True)
    slow_answers = slow.retrieve_batch([{"user_id": u} for u in users], k=5, exclude_seen=True)
    assert {a["query_vector"] for a in fast_answers} == {"precomputed"}
    assert {a["query_vector"] for a in slow_answers} == {"tower"}
    for f, s in zip(fast_answers, slow_answers):
        assert [i["item_id"] for i in f["items"]] == [i["item_id"] for i in s["items"]]
        np.testing.assert_allclose(f["scores"], s["scores"], atol=1e-5)


def test_a_request_with_fresher_clicks_runs_the_tower(published):
    cfg, _ = published
    fast = Retriever.load(str(cfg.publish.store))
    user = sorted(fast.query_table)[0]
    # Mixed in one batch: the precomputed row and the tower row each answer their own request.
    by_key, with_clicks = fast.retrieve_batch([{"user_id": user}, {"user_id": user, "history": ["i3", "i4"]}], k=5)
    assert by_key["query_vector"] == "precomputed" and with_clicks["query_vector"] == "tower"
    assert with_clicks["history"]["used"] >= 2
    alone = fast.retrieve({"user_id": user, "history": ["i3", "i4"]}, k=5)
    assert [i["item_id"] for i in alone["items"]] == [i["item_id"] for i in with_clicks["items"]]
