"""Evaluate (with its live comparison) and serve against gs:// through the fake GCS server.

Every path of the evaluate stage (transform folder, model folder, output folder, the
store whose live version it compares against) and the query service's store are gs://
prefixes on the fake of tests/fakes/gcs_server.py, reached through the real
google-cloud-storage client (``STORAGE_EMULATOR_HOST``). TensorFlow's own GCS filesystem
ignores that variable, so these tests fail if any stage lets TF (or pyarrow, or open())
read a gs:// path itself rather than going through core.storage.

Data: the tiny transform folder of test_evaluate, test_gate_live's "good" model as the
live version, test_indexer's random model as the candidate.
"""

from __future__ import annotations

import json
import os

import pytest

from core import storage
from core.store import VersionStore
from tests.fakes.gcs_server import FakeGcsServer
from tests.support.evaluation import build_good_query_tower, write_eval_folder
from tests.support.http_client import FAST_POLL, call, retrieve, wait_for
from tests.support.indexer_models import GOOD_METRICS, build_tower, make_config, write_models
from tests.support.stores import publish_tiny_version

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

BUCKET = "bucket"
STORE = f"gs://{BUCKET}/store"


def _gs(name: str) -> str:
    return f"gs://{BUCKET}/{name}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fake GCS holding the transform folder, the candidate model and a store whose live
    version (published through the gate) is the good model; the local originals beside them."""
    tmp = tmp_path_factory.mktemp("gcs_stages")
    with FakeGcsServer(buckets=[BUCKET]) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", server.url)
        storage.reset_gcs_client()
        config = make_config(tmp, evaluate={"ks": [5, 10], "ndcg_k": 10, "per": "query", "mask_seen": True},
                             gate={"must_beat_popularity": False},
                             publish={"store": STORE, "keep_versions": 10})
        folder = str(tmp / "transformed")
        write_eval_folder(config, folder)
        good = str(tmp / "good")
        build_tower(os.path.join(good, "item_tower"), "item")
        build_good_query_tower(os.path.join(good, "query_tower"))
        candidate = write_models(str(tmp / "random"))
        first = publish_tiny_version(config, tmp, folder, good)  # embed + index locally, publish into gs://
        storage.upload_tree(folder, _gs("transformed"))
        # A training shard evaluation must not download (the bulk of a real transform folder).
        storage.write_bytes(_gs("transformed/train-00000-of-00001.tfrecord"), b"not read by evaluate")
        storage.upload_tree(candidate, _gs("model"))
        try:
            yield {"tmp": tmp, "server": server, "config": config, "folder": folder, "good": good,
                   "candidate": candidate, "first": first}
        finally:
            storage.reset_gcs_client()


def _local_copy_of_store(world, name: str) -> str:
    """The gs:// store as it is now, downloaded into a local folder (same version ids, CURRENT)."""
    dest = str(world["tmp"] / name)
    storage.download_tree(STORE, dest)
    return dest


def test_store_and_inputs_live_in_the_fake(world):
    assert VersionStore(STORE).current() == world["first"]
    assert not os.path.exists(world["config"].publish.store)  # nothing local stands in for the store
    names = world["server"].object_names(BUCKET)
    assert "transformed/test-00000-of-00001.tfrecord" in names and "model/query_tower/saved_model.pb" in names
    assert f"store/versions/{world['first']}/manifest.json" in names


def test_evaluate_on_gcs_equals_the_local_run_including_the_live_comparison(world):
    from evaluation.evaluate import evaluate_model

    config = world["config"]
    local_store = _local_copy_of_store(world, "store-copy-eval")
    live_version = VersionStore(STORE).current()
    local = evaluate_model(config, world["folder"], world["candidate"], str(world["tmp"] / "eval-local"),
                           live_store=local_store)
    remote = evaluate_model(config, _gs("transformed"), _gs("model/"), _gs("eval"), live_store=STORE)

    written = json.loads(storage.read_text(_gs("eval/metrics.json")))
    with open(world["tmp"] / "eval-local" / "metrics.json", encoding="utf-8") as fh:
        local_written = json.load(fh)
    assert written == local_written == json.loads(json.dumps(remote))
    assert json.loads(json.dumps(local)) == written
    live = written["live"]
    assert live is not None and "error" not in live, live
    assert live["version"] == live_version and live["n_items_missing"] == 0
    assert live["recall_at_10"] > 0.5 > written["recall_at_10"]  # the live (good) model vs the random one
    # Evaluation downloads only the parts it reads: never a training shard.
    downloaded = [raw for method, raw, _ in world["server"].requests if method == "GET" and "alt=media" in raw]
    assert any("test-00000" in raw for raw in downloaded)
    assert not any("train-00000" in raw for raw in downloaded)


def test_evaluate_names_a_missing_gcs_input(world):
    from evaluation.evaluate import evaluate_model

    with pytest.raises(FileNotFoundError, match=r"gs://bucket/nothing-here/stats.json"):
        evaluate_model(world["config"], _gs("nothing-here"), _gs("model"), _gs("eval-missing"))
    with pytest.raises(FileNotFoundError, match=r"gs://bucket/no-model/query_tower"):
        evaluate_model(world["config"], _gs("transformed"), _gs("no-model"), _gs("eval-missing"))
    assert not storage.exists(_gs("eval-missing"))


def test_serve_from_gcs_answers_like_the_local_copy_and_hot_reloads(world):
    from publishing.publish import gate_and_publish
    from serving.retriever import Retriever
    from serving.server import QueryService

    tmp, config = world["tmp"], world["config"]
    v1 = VersionStore(STORE).current()
    service = QueryService(STORE, port=0, poll_seconds=FAST_POLL)
    port = service.start()
    try:
        wait_for(lambda: call(port, "GET", "/readyz")[0] == 200, timeout=60, what="the service to load from gs://")
        assert service.status()["version"] == v1
        assert service.live().folder.startswith(service._cache_root)  # downloaded, not read in place

        want = Retriever.load(_local_copy_of_store(world, "store-copy-serve-1"), version=v1)
        for request in ({"user_id": "3"}, {"features": {"user_id": "30", "age": 41.0}}):
            status, body = retrieve(port, {**request, "k": 7, "exclude_seen": True})
            assert status == 200, body
            expected = want.retrieve(request, k=7, exclude_seen=True)
            assert body["version"] == expected["version"] == v1
            assert body["items"] == expected["items"]
            assert body["scores"] == pytest.approx(expected["scores"], abs=1e-6)

        # A second version (another query tower) published into gs://: the service swaps to it.
        second_model = str(tmp / "model-11")
        build_tower(os.path.join(second_model, "query_tower"), "query", seed=11)
        out = gate_and_publish(config, world["folder"], second_model, str(tmp / "emb"), str(tmp / "index"),
                               GOOD_METRICS, "r2", {"run_id": "r2"})
        assert out["published"], out["reasons"]
        v2 = out["version"]
        assert v2 != v1 and VersionStore(STORE).current() == v2
        wait_for(lambda: service.status()["version"] == v2, timeout=60, what="the hot reload to the new version")
        status, body = retrieve(port, {"user_id": "3", "k": 7})
        assert status == 200 and body["version"] == v2
        want2 = Retriever.load(_local_copy_of_store(world, "store-copy-serve-2"), version=v2)
        expected = want2.retrieve({"user_id": "3"}, k=7)
        assert body["items"] == expected["items"]
        assert body["scores"] == pytest.approx(expected["scores"], abs=1e-6)
        assert service.status()["problem"] is None and service.swaps == 2
    finally:
        service.stop()


def test_retriever_from_a_gcs_folder_downloads_it_first(world):
    """from_folder on a gs:// version folder (not the usual path: load() downloads first)."""
    from serving.retriever import Retriever

    store = VersionStore(STORE)
    version = store.current()
    retriever = Retriever.from_folder(version, store.version_path(version), store.read_manifest(version))
    assert not storage.is_gcs(retriever.folder) and retriever.version == version
    local = Retriever.load(_local_copy_of_store(world, "store-copy-folder"), version=version)
    assert retriever.retrieve({"user_id": "5"}, k=5) == local.retrieve({"user_id": "5"}, k=5)
