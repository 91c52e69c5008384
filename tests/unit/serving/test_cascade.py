"""The cascade's pre-ranker through gate, publish and serving (train.cascade), on the fixture towers.

The pre-ranker here is a tiny real SavedModel (the fixture query tower, 8 wide = 2 heads x 4) and
seeded item vectors written where the embed stage writes them; what is checked is that the gate
keeps or drops it by its measured gain, that publish ships exactly what serving loads, and that an
answer is retrieval's exact top N re-ordered by core/prerank.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from core.contracts import files as names
from core.prerank import InteractionShape, rerank
from core.similarity import gathered_scores
from indexer.embeddings import load_embeddings, write_embeddings
from indexer.scann_index import exact_topk
from publishing.publish import gate_and_publish
from serving.retriever import Retriever
from tests.support.indexer_models import GOOD_METRICS, build_tower, item_ids, make_config, write_models, write_transformed
from tests.support.stores import publish_tiny_version

SHAPE = InteractionShape(heads=2, item_vectors=3, head_dims=4, scale=0.8, bias=0.0, retrieval_weight=2.0)
TOP_N = 20


def _cascade_metrics(gain: float) -> dict:
    """evaluate's metrics with a cascade section whose paired recall@10 gain is ``gain``."""
    return {**GOOD_METRICS, "cascade": {
        "top_n": TOP_N, "n_queries": 12,
        "retrieval": {"recall_at_10": 0.30, "ci95": {}},
        "cascade": {"recall_at_10": 0.30 + gain, "ci95": {},
                    "diff": {"recall_at_10": {"mean": gain, "ci95": [gain - 0.01, gain + 0.01]}}},
        "latency_ms": {str(TOP_N): {"p50": 0.4, "p90": 0.6}}}}


def _add_prerank(models: str, emb: str) -> np.ndarray:
    """The pre-ranker files train and embed write: prerank/query_tower, prerank.json beside the
    model, prerank/item_embeddings.parquet beside the embeddings. Returns the item vectors [N, 12]."""
    build_tower(os.path.join(models, names.prerank_path(names.QUERY_TOWER_DIR)), "query",
                dims=SHAPE.query_width, seed=11, unit=False)
    with open(os.path.join(models, names.prerank_path(names.PRERANK_FILE)), "w") as fh:
        json.dump({**SHAPE.to_dict(), "top_n": TOP_N}, fh)
    vectors = np.random.default_rng(5).normal(size=(len(item_ids()), SHAPE.item_width)).astype(np.float32)
    write_embeddings(os.path.join(emb, names.PRERANK_DIR), item_ids(), vectors)
    return vectors


def _publish(tmp_path, gain: float):
    config = make_config(tmp_path)
    transformed = write_transformed(config, str(tmp_path / "transformed"))
    models = write_models(str(tmp_path / "model"))
    publish_tiny_version(config, tmp_path, transformed, models)  # v1: no pre-ranker (its run had none)
    vectors = _add_prerank(models, str(tmp_path / "emb"))
    out = gate_and_publish(config, transformed, models, str(tmp_path / "emb"), str(tmp_path / "index"),
                           _cascade_metrics(gain), run_id="r2", lineage={"run_id": "r2"})
    assert out["published"], out["reasons"]
    return config, out, vectors


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    return _publish(tmp_path_factory.mktemp("cascade"), gain=0.05)


def test_a_pre_ranker_that_gained_is_published_and_re_orders_retrievals_top_n(kept, tmp_path):
    config, out, vectors = kept
    assert any("published with the version" in r for r in out["reasons"]), out["reasons"]
    retriever = Retriever.load(config.publish.store)
    manifest_cascade = retriever.manifest["serving"]["cascade"]
    assert manifest_cascade == {"top_n": TOP_N, **SHAPE.to_dict()}
    features = {"user_id": "u-new", "age": 30.0}
    answer = retriever.retrieve({"features": features}, k=5)
    assert answer["reranked"] is True and answer["candidates"] == TOP_N

    # Expected: exact retrieval's top 20, re-scored with the index's scores as the retrieval term.
    ids, matrix = load_embeddings(os.path.join(os.path.dirname(config.publish.store), "emb"))
    query = retriever.tower.embed({n: [features[n]] for n in retriever.tower.input_names})
    top, _ = exact_topk(matrix, query, TOP_N)
    retrieval_scores = gathered_scores(query, matrix[top], "cosine")
    pre_query = retriever.prerank.tower.embed({n: [features[n]] for n in retriever.prerank.tower.input_names})
    row_of = {i: n for n, i in enumerate(item_ids())}
    order, scores = rerank(pre_query, vectors[[row_of[ids[int(i)]] for i in top[0]]][None, :, :].reshape(TOP_N, -1),
                           np.arange(TOP_N)[None, :], SHAPE, retrieval_scores)
    expected = [ids[int(top[0][i])] for i in order[0][:5]]
    assert [it["item_id"] for it in answer["items"]] == expected
    np.testing.assert_allclose(answer["scores"], scores[0][:5], rtol=1e-4, atol=1e-4)
    plain = [ids[int(i)] for i in top[0][:5]]
    assert expected != plain  # the pre-ranker changes the order here, so the check above is not vacuous

    alone = Retriever.load(config.publish.store, rerank=False).retrieve({"features": features}, k=5)
    assert alone["reranked"] is False and "candidates" not in alone
    assert [it["item_id"] for it in alone["items"]] == plain


def test_a_pre_ranker_without_gain_is_left_out_of_the_version(tmp_path):
    config, out, _ = _publish(tmp_path, gain=0.0)
    assert any("NOT published, the version serves retrieval alone" in r for r in out["reasons"]), out["reasons"]
    retriever = Retriever.load(config.publish.store)
    assert retriever.manifest["serving"]["cascade"] is None and retriever.prerank is None
    assert not os.path.exists(os.path.join(retriever.folder, names.PRERANK_DIR))
    assert retriever.retrieve({"user_id": "3"}, k=5)["reranked"] is False


def test_a_pre_ranker_missing_indexed_items_fails_the_load_naming_the_file(kept, tmp_path):
    import shutil

    from serving.retriever import PreRanker

    config, _, vectors = kept
    retriever = Retriever.load(config.publish.store)
    folder = str(tmp_path / "version")
    shutil.copytree(retriever.folder, folder)
    write_embeddings(os.path.join(folder, names.PRERANK_DIR), item_ids()[:-2], vectors[:-2])
    with pytest.raises(ValueError, match=r"2 indexed items have no row in prerank/item_embeddings.parquet"):
        PreRanker.load("v", folder, retriever.manifest["serving"]["cascade"], retriever.item_ids, retriever.tower)
