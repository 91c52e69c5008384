"""The gs:// code path through the real google-cloud-storage client against a fake GCS server.

The fake (tests/fakes/gcs_server.py) enforces generation preconditions like the real
service, so the compare-and-swap tests here can fail; the first test proves that.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud.storage.exceptions import DataCorruption

import core.store
from core import storage
from core.store import IntegrityError, PublishConflictError, VersionStore
from tests.fakes.gcs_server import FakeGcsServer

BUCKET = "bucket"
UNICODE = "dir with space/ünï cødé ✓.txt"


@pytest.fixture
def gcs(monkeypatch):
    with FakeGcsServer(buckets=[BUCKET]) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        storage.reset_gcs_client()
        yield server
    storage.reset_gcs_client()


def _gs(name: str) -> str:
    return f"gs://{BUCKET}/{name}"


def _uploads(gcs: FakeGcsServer) -> list[str]:
    return [path for method, path, _ in gcs.requests if path.startswith("/upload/")]


def _is_upload(method: str, path: str) -> bool:
    return method == "POST" and path.startswith("/upload/")


# --------------------------------------------------------------------------- the fake itself


def test_the_fake_enforces_generation_preconditions_through_the_client(gcs):
    bucket = storage.gcs_client().bucket(BUCKET)
    blob = bucket.blob("obj")
    blob.upload_from_string(b"one", if_generation_match=0)
    first = blob.generation
    with pytest.raises(gexc.PreconditionFailed) as err:  # 0 = must not exist
        bucket.blob("obj").upload_from_string(b"two", if_generation_match=0)
    assert err.value.code == 412 and "pre-conditions" in err.value.message
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("obj").upload_from_string(b"two", if_generation_match=first + 1)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("obj").upload_from_string(b"two", if_generation_not_match=first)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("missing").upload_from_string(b"two", if_generation_match=first)
    assert bucket.blob("obj").download_as_bytes() == b"one"

    bucket.blob("obj").upload_from_string(b"two", if_generation_match=first)
    second = bucket.get_blob("obj")
    assert second.generation > first and second.metageneration == 1 and second.size == 3
    with pytest.raises(gexc.PreconditionFailed):  # stale generation on read and on delete
        bucket.blob("obj").download_as_bytes(if_generation_match=first)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("obj").reload(if_generation_match=first)
    with pytest.raises(gexc.NotModified):  # the real service answers 304 to a read's NotMatch
        bucket.blob("obj").reload(if_generation_not_match=second.generation)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("obj").delete(if_generation_match=first)
    old = bucket.blob("obj", generation=first)  # no object versioning: replaced = gone
    with pytest.raises(gexc.NotFound):
        old.download_as_bytes()
    bucket.blob("obj").delete(if_generation_match=second.generation)
    with pytest.raises(gexc.NotFound):
        bucket.blob("obj").download_as_bytes()
    with pytest.raises(gexc.NotFound):
        storage.gcs_client().get_bucket("no-such-bucket")
    assert storage.gcs_client().get_bucket(BUCKET).name == BUCKET


def test_the_fake_lists_with_prefix_delimiter_and_pages(gcs):
    for name in ["a/1", "a/2", "a/b/3", "a/c/4", "a/c/5", "z"]:
        gcs.put_object(BUCKET, name, name.encode())
    client = storage.gcs_client()
    it = client.list_blobs(BUCKET, prefix="a/", delimiter="/", page_size=1)
    pages = [[b.name for b in page] for page in it.pages]
    assert sum(pages, []) == ["a/1", "a/2"] and len(pages) == 4  # prefixes count toward a page
    assert it.prefixes == {"a/b/", "a/c/"}
    assert [b.name for b in client.list_blobs(BUCKET, page_size=2)] == ["a/1", "a/2", "a/b/3", "a/c/4", "a/c/5", "z"]
    assert [b.name for b in client.list_blobs(BUCKET, max_results=3)] == ["a/1", "a/2", "a/b/3"]


# --------------------------------------------------------------------------- core.storage round trips


def test_write_read_exists_list_delete_round_trip(gcs):
    gcs.max_page = 2  # core.storage must follow pages (and collect prefixes across them)
    files = {"top.txt": b"t", "a/one.bin": b"\x00\x01", "a/b/two.txt": b"2", "a/b/c/three.txt": b"3",
             UNICODE: "héllo".encode(), "a/x y/z.txt": b"z"}
    for rel, data in files.items():
        storage.write_bytes(_gs(f"root/{rel}"), data)
    storage.write_text(_gs("other/keep.txt"), "keep")
    for rel, data in files.items():
        assert storage.read_bytes(_gs(f"root/{rel}")) == data
    assert storage.read_text(_gs(f"root/{UNICODE}")) == "héllo"
    assert storage.exists(_gs(f"root/{UNICODE}")) and storage.exists(_gs("root/a/b"))
    assert storage.exists(_gs("root/dir with space")) and not storage.exists(_gs("root/a/nope"))
    assert not storage.exists(_gs("root/a/b/two"))  # a name prefix is not a folder
    assert storage.list_files(_gs("root/a")) == sorted(_gs(f"root/{r}") for r in files if r.startswith("a/"))
    assert storage.list_files(_gs("root/")) == sorted(_gs(f"root/{r}") for r in files)
    assert storage.list_children(_gs("root")) == ["a", "dir with space", "top.txt"]
    assert storage.list_children(_gs("root/a")) == ["b", "one.bin", "x y"]
    assert storage.list_children(_gs("root/dir with space")) == ["ünï cødé ✓.txt"]
    assert storage.list_children(_gs("nothing")) == []
    assert list(storage.iter_lines(_gs("root/top.txt"))) == ["t"]
    with pytest.raises(FileNotFoundError, match="root/missing"):
        storage.read_bytes(_gs("root/missing"))
    assert storage.generation(_gs("root/missing")) is None

    storage.delete_tree(_gs("root/a"))
    assert storage.list_files(_gs("root")) == [_gs(f"root/{UNICODE}"), _gs("root/top.txt")]
    storage.delete_tree(_gs("root"))
    assert gcs.object_names(BUCKET) == ["other/keep.txt"]


def test_upload_and_download_tree_round_trip(gcs, tmp_path):
    src = tmp_path / "src"
    files = {"m.json": b"{}", "index/scann/data.npy": os.urandom(5000), UNICODE: "ü".encode(),
             "deep/a/b/c/d.txt": b"d"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    rels = storage.upload_tree(str(src), _gs("tree"))
    assert sorted(rels) == sorted(files)
    assert gcs.object_names(BUCKET) == sorted(f"tree/{r}" for r in files)
    assert gcs.get_object(BUCKET, "tree/index/scann/data.npy").data == files["index/scann/data.npy"]
    out = tmp_path / "out"
    assert storage.download_tree(_gs("tree/"), str(out)) == str(out)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    assert storage.download_tree(str(src), "unused") == str(src)  # local stays local


def test_large_files_go_through_chunked_resumable_uploads(gcs, tmp_path, monkeypatch):
    import google.cloud.storage.blob as gblob

    # Uploads up to 8 MiB are multipart whatever the chunk size; lower the limit to test sessions.
    monkeypatch.setattr(gblob, "_MAX_MULTIPART_SIZE", 1024)
    data = os.urandom(600 * 1024)
    blob = storage.gcs_client().bucket(BUCKET).blob("big/chunked.bin", chunk_size=256 * 1024)
    blob.upload_from_string(data, if_generation_match=0)
    puts = [(path, headers["content-range"]) for method, path, headers in gcs.requests if method == "PUT"]
    assert [r for _, r in puts] == ["bytes 0-262143/614400", "bytes 262144-524287/614400",
                                    "bytes 524288-614399/614400"]
    assert storage.read_bytes(_gs("big/chunked.bin")) == data
    with pytest.raises(gexc.PreconditionFailed):  # the precondition holds for resumable sessions too
        storage.gcs_client().bucket(BUCKET).blob("big/chunked.bin", chunk_size=256 * 1024).upload_from_string(
            data, if_generation_match=0)

    # core.storage's upload_tree switches to a resumable upload above the multipart limit.
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f.bin").write_bytes(data[:5000])
    storage.upload_tree(str(tmp_path / "t"), _gs("viaresumable"))
    assert any("uploadType=resumable" in p for p in _uploads(gcs))
    assert storage.read_bytes(_gs("viaresumable/f.bin")) == data[:5000]


# --------------------------------------------------------------------------- compare-and-swap


def test_create_if_absent_succeeds_once(gcs):
    path = _gs("store/CURRENT")
    storage.write_bytes_if_generation(path, b"v1", None)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes_if_generation(path, b"v2", None)
    assert storage.read_bytes(path) == b"v1"


def test_a_stale_generation_raises_and_changes_nothing(gcs):
    path = _gs("store/CURRENT")
    storage.write_bytes(path, b"v1")
    stale = storage.generation(path)
    storage.write_bytes_if_generation(path, b"v2", stale)
    fresh = storage.generation(path)
    assert fresh > stale
    with pytest.raises(storage.PreconditionFailed, match=str(stale)):
        storage.write_bytes_if_generation(path, b"v3", stale)
    assert storage.read_bytes(path) == b"v2" and storage.generation(path) == fresh


def test_racing_cas_from_the_same_generation_has_exactly_one_winner(gcs):
    path = _gs("store/CURRENT")
    storage.write_bytes(path, b"v0")
    for round_ in range(3):
        expected = storage.generation(path)
        n = 4
        barrier = threading.Barrier(n)
        results: dict[int, str] = {}

        def racer(i: int) -> None:
            barrier.wait()
            try:
                storage.write_bytes_if_generation(path, f"r{round_}-w{i}".encode(), expected)
                results[i] = "won"
            except storage.PreconditionFailed:
                results[i] = "lost"

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        winners = [i for i, r in results.items() if r == "won"]
        assert len(results) == n and len(winners) == 1, results
        assert storage.read_text(path) == f"r{round_}-w{winners[0]}"


# --------------------------------------------------------------------------- VersionStore on gs://


from tests.support.version_staging import staging_folder  # noqa: E402  (the same tiny version layout)


def test_publish_rollback_gc_on_gs(gcs, tmp_path):
    store = VersionStore(_gs("store/"))
    assert store.current() is None and store.versions() == []
    store.publish("v1", staging_folder(tmp_path, "v1", "one"), {"metrics": {"recall_at_10": 0.5}})
    assert store.current() == "v1" and gcs.get_object(BUCKET, "store/CURRENT").data == b"v1"
    assert set(gcs.object_names(BUCKET)) == {"store/CURRENT", "store/versions/v1/manifest.json",
                                            "store/versions/v1/index/scann/dataset.npy",
                                            "store/versions/v1/index/item_ids.txt",
                                            "store/versions/v1/items.parquet"}
    for version in ("v2", "v3"):
        store.publish(version, staging_folder(tmp_path, version, version), {})
    assert store.current() == "v3"
    assert [(v["id"], v["live"]) for v in store.versions()] == [("v1", False), ("v2", False), ("v3", True)]
    local = store.fetch_version("v2", str(tmp_path / "cache"))
    assert Path(local, "index", "scann", "dataset.npy").read_bytes() == b"v2" * 100

    store.rollback("v1")
    assert store.current() == "v1"
    with pytest.raises(core.store.VersionNotFoundError):
        store.rollback("v9")
    assert store.current() == "v1"

    # An orphan (upload without manifest, older than the newest complete version) goes too.
    gcs.put_object(BUCKET, "store/versions/v0-orphan/items.parquet", b"half")
    assert store.gc(keep=1) == ["v0-orphan", "v2"]  # v3 newest, v1 live
    assert [v["id"] for v in store.versions()] == ["v1", "v3"]
    assert not any(n.startswith("store/versions/v2/") for n in gcs.object_names(BUCKET))
    store.verify("v1")
    store.verify("v3")


def test_concurrent_publishers_exactly_one_wins(gcs, tmp_path, monkeypatch):
    store = VersionStore(_gs("store"))
    store.publish("v1", staging_folder(tmp_path, "v1"), {})
    barrier = threading.Barrier(2)
    real_upload = storage.upload_tree

    def upload_then_wait_for_the_other(src, dest):
        # Both publishers read CURRENT's generation (before uploading) before either swaps.
        # Not at the swap itself: that runs under the store lock, which only one holds at a time.
        out = real_upload(src, dest)
        barrier.wait(timeout=30)
        return out

    monkeypatch.setattr(core.store.storage, "upload_tree", upload_then_wait_for_the_other)
    outcome: dict[str, BaseException | None] = {}

    def publisher(version: str) -> None:
        try:
            VersionStore(_gs("store")).publish(version, staging_folder(tmp_path, version, version), {})
            outcome[version] = None
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted below
            outcome[version] = exc

    threads = [threading.Thread(target=publisher, args=(v,)) for v in ("v2a", "v2b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [v for v, exc in outcome.items() if exc is None]
    losers = [v for v, exc in outcome.items() if exc is not None]
    assert len(winners) == 1 and len(losers) == 1, outcome
    assert isinstance(outcome[losers[0]], PublishConflictError)
    assert f"now {winners[0]!r}" in str(outcome[losers[0]]) and "NOT live" in str(outcome[losers[0]])
    assert store.current() == winners[0]
    store.verify(losers[0])  # complete, verified, just not live


def test_verify_names_a_corrupted_file_on_gs(gcs, tmp_path):
    store = VersionStore(_gs("store"))
    store.publish("v1", staging_folder(tmp_path, "v1"), {})
    gcs.put_object(BUCKET, "store/versions/v1/index/item_ids.txt", b"a\nc\n")  # same size, new bytes
    with pytest.raises(IntegrityError, match="index/item_ids.txt sha256"):
        store.verify("v1")
    with pytest.raises(IntegrityError, match="index/item_ids.txt"):
        store.rollback("v1")
    gcs.put_object(BUCKET, "store/versions/v1/extra.bin", b"!")
    gcs.put_object(BUCKET, "store/versions/v1/index/item_ids.txt", b"a\nb\n")
    with pytest.raises(IntegrityError, match="extra.bin is not listed"):
        store.verify("v1")

    # Silent corruption behind the service's back (stored checksums kept): the client's own
    # crc32c check refuses the bytes before our sha256 check ever sees them.
    store.publish("v2", staging_folder(tmp_path, "v2"), {})
    gcs.put_object(BUCKET, "store/versions/v2/items.parquet", b"PAR1y", keep_hashes=True)
    with pytest.raises(DataCorruption, match="items.parquet"):
        store.verify("v2")


# --------------------------------------------------------------------------- the store lock on gs://

LOCK = "store/store.lock"


def _lock_doc(gcs: FakeGcsServer) -> dict:
    return json.loads(gcs.get_object(BUCKET, LOCK).data)


def _dead_holder(expires_at: float) -> bytes:
    return json.dumps({"owner": "dead", "write": "w0", "host": "gone", "pid": 1, "purpose": "publish v9",
                       "acquired_at": "2026-01-01T00:00:00Z", "lease_seconds": 30, "expires_at": expires_at}).encode()


def test_the_gs_lock_is_created_only_if_absent_and_released_by_a_generation_matched_delete(gcs):
    with storage.exclusive_lock(_gs(LOCK), timeout_seconds=5, lease_seconds=30, purpose="rollback to v1") as lock:
        doc = _lock_doc(gcs)
        generation = gcs.get_object(BUCKET, LOCK).generation
        assert doc["owner"] == lock.owner and doc["purpose"] == "rollback to v1" and doc["lease_seconds"] == 30
        assert 25 < doc["expires_at"] - time.time() <= 30 and doc["pid"] == os.getpid()
        assert "ifGenerationMatch=0" in _uploads(gcs)[0]
    assert gcs.get_object(BUCKET, LOCK) is None
    deletes = [p for m, p, _ in gcs.requests if m == "DELETE"]
    assert len(deletes) == 1 and f"ifGenerationMatch={generation}" in deletes[0]


def test_a_held_gs_lock_makes_a_waiter_time_out_naming_the_holder(gcs):
    with storage.exclusive_lock(_gs(LOCK), timeout_seconds=5, lease_seconds=30, purpose="gc v3"):
        started = time.monotonic()
        with pytest.raises(storage.LockTimeout, match=r"held by .*\(gc v3\).*gave up after 0.3 s.*retry"):
            with storage.exclusive_lock(_gs(LOCK), timeout_seconds=0.3, lease_seconds=30):
                pass
        assert 0.3 <= time.monotonic() - started < 5


def test_an_expired_gs_lock_is_taken_over_by_a_generation_matched_rewrite(gcs, caplog):
    gcs.put_object(BUCKET, LOCK, _dead_holder(time.time() - 1))  # its holder died a while ago
    stale = gcs.get_object(BUCKET, LOCK).generation
    with storage.exclusive_lock(_gs(LOCK), timeout_seconds=5, lease_seconds=30) as lock:
        assert _lock_doc(gcs)["owner"] == lock.owner
    assert any(f"ifGenerationMatch={stale}" in p for p in _uploads(gcs))
    assert "took over the expired lock" in caplog.text and "publish v9" in caplog.text
    assert gcs.get_object(BUCKET, LOCK) is None

    # A lock object with no readable lease: stale once seen unchanged for a whole lease here.
    gcs.put_object(BUCKET, LOCK, b"\x00garbage")
    started = time.monotonic()
    with storage.exclusive_lock(_gs(LOCK), timeout_seconds=5, lease_seconds=0.3):
        assert time.monotonic() - started >= 0.3


def test_a_holder_whose_lease_ran_out_stops_and_never_deletes_the_new_holders_lock(gcs, caplog):
    first = storage.exclusive_lock(_gs(LOCK), timeout_seconds=5, lease_seconds=0.3)
    old = first.__enter__()
    time.sleep(0.15)
    old.refresh()  # past a third of the lease: renewed (a new generation, a later expiry)
    assert _lock_doc(gcs)["expires_at"] > time.time() + 0.2
    time.sleep(0.4)  # hung past its lease
    second = storage.exclusive_lock(_gs(LOCK), timeout_seconds=5, lease_seconds=30)
    new = second.__enter__()
    with pytest.raises(storage.LockLost, match="took the lock over"):
        old.refresh()
    first.__exit__(None, None, None)
    assert _lock_doc(gcs)["owner"] == new.owner  # the old holder's release is generation-matched
    assert "was taken over before we released it" in caplog.text
    second.__exit__(None, None, None)
    assert gcs.get_object(BUCKET, LOCK) is None


def test_a_lost_reply_to_the_lock_create_is_not_a_conflict(gcs):
    gcs.fail_next(1, status=503, after_commit=True, match=lambda m, p: _is_upload(m, p) and "ifGenerationMatch=0" in p)
    started = time.monotonic()
    with storage.exclusive_lock(_gs(LOCK), timeout_seconds=5, lease_seconds=30) as lock:
        assert _lock_doc(gcs)["owner"] == lock.owner  # our own create, met by the client's retry
    assert time.monotonic() - started < 4 and gcs.get_object(BUCKET, LOCK) is None


def test_racing_gs_lockers_are_mutually_exclusive(gcs):
    inside, overlaps, done = [], [], []

    def worker(i: int) -> None:
        for _ in range(5):
            with storage.exclusive_lock(_gs(LOCK), timeout_seconds=30, lease_seconds=30):
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                time.sleep(0.002)
                inside.remove(i)
        done.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(done) == [0, 1, 2, 3] and overlaps == []


# --------------------------------------------------------------------------- faults


def test_an_injected_503_on_upload_is_retried(gcs):
    gcs.fail_next(1, status=503, match=_is_upload)
    storage.write_bytes(_gs("plain"), b"data")
    assert storage.read_bytes(_gs("plain")) == b"data"
    assert len(_uploads(gcs)) == 2  # the 503, then the retry

    gcs.fail_next(1, status=503, match=_is_upload)
    storage.write_bytes_if_generation(_gs("cas"), b"one", None)  # conditional: safe to retry
    assert storage.read_bytes(_gs("cas")) == b"one" and len(_uploads(gcs)) == 4


def test_a_lost_response_to_a_winning_cas_is_not_reported_as_a_conflict(gcs):
    """The write commits but the reply is a 503: the client's retry then meets its own generation (412)."""
    path = _gs("store/CURRENT")
    storage.write_bytes(path, b"v1")
    expected = storage.generation(path)
    gcs.fail_next(1, status=503, match=_is_upload, after_commit=True)
    storage.write_bytes_if_generation(path, b"v2", expected)  # must not raise: we won
    assert storage.read_bytes(path) == b"v2"
    # A genuinely lost race still raises.
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes_if_generation(path, b"v3", expected)


def test_a_publish_whose_cas_reply_is_lost_still_succeeds(gcs, tmp_path):
    store = VersionStore(_gs("store"))
    store.publish("v1", staging_folder(tmp_path, "v1"), {})
    gcs.fail_next(1, status=503, after_commit=True,
                  match=lambda m, p: _is_upload(m, p) and "ifGenerationMatch" in p)
    store.publish("v2", staging_folder(tmp_path, "v2"), {})
    assert store.current() == "v2"


def test_delete_tree_survives_a_retried_delete(gcs):
    for name in ("t/a", "t/b"):
        storage.write_bytes(_gs(name), b"x")
    gcs.fail_next(1, status=503, after_commit=True, match=lambda m, p: m == "DELETE")
    storage.delete_tree(_gs("t"))
    assert gcs.object_names(BUCKET) == []


def test_a_slow_response_times_out_and_is_retried(gcs):
    storage.write_bytes(_gs("slow"), b"payload")
    gcs.delay_next(1.0, match=lambda m, p: "alt=media" in p)
    blob = storage.gcs_client().bucket(BUCKET).blob("slow")
    started = time.perf_counter()
    assert blob.download_as_bytes(timeout=0.3) == b"payload"
    assert time.perf_counter() - started >= 0.3
    assert sum("alt=media" in p for _, p, _ in gcs.requests) >= 2  # timed out, then retried


def test_a_truncated_download_is_detected_not_returned_short(gcs, tmp_path):
    data = os.urandom(100_000)
    storage.write_bytes(_gs("blob.bin"), data)
    generation = storage.generation(_gs("blob.bin"))

    # Without retries the client raises on the short body instead of returning it.
    gcs.truncate_next_download(1000)
    blob = storage.gcs_client().bucket(BUCKET).blob("blob.bin")
    with pytest.raises(Exception) as err:
        blob.download_as_bytes(retry=None)
    assert "IncompleteRead" in repr(err.value) or "ChunkedEncodingError" in type(err.value).__name__, err.value

    # Through core.storage (default retry) the client re-reads: from scratch when the cut came
    # before its first 8 KiB read completed, else with a Range request pinned to the generation
    # it started reading. Either way the caller gets the whole object, never a prefix of it.
    for cut, resumed_at in ((1000, None), (20_000, 16_384)):
        gcs.requests.clear()
        gcs.truncate_next_download(cut)
        assert storage.read_bytes(_gs("blob.bin")) == data
        media = [(p, h) for _, p, h in gcs.requests if "alt=media" in p]
        assert len(media) == 2
        if resumed_at is None:
            assert "range" not in media[1][1]
        else:
            assert media[1][1]["range"] == f"bytes={resumed_at}-"
            assert f"generation={generation}" in media[1][0]

    gcs.truncate_next_download(0)
    storage.download_tree(_gs(""), str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "blob.bin").read_bytes() == data


# --------------------------------------------------------------------------- ingest from gs://


def test_ingest_from_gs_matches_the_local_copy(gcs, tmp_path):
    from tests.support.ingest_tables import good_tables, make_config, write_tables
    from features.ingest import ingest

    src = write_tables(tmp_path / "shop", good_tables(), "csv")
    with open(src / "interactions.csv", "a") as fh:
        fh.write("u1,i9,1,4.0,500\n")  # one dead letter (unknown item) to compare as well
    storage.upload_tree(str(src), _gs("shop"))
    config = make_config(src, max_bad_fraction=0.5)

    local = ingest(config, str(tmp_path / "out-local"))
    remote = ingest(config.with_overrides({"data.path": _gs("shop")}), _gs("out"))
    storage.download_tree(_gs("out"), str(tmp_path / "out-gs"))

    for stats in (local, remote):
        stats.pop("seconds")
    assert remote["fingerprint"] == local["fingerprint"]
    assert {t: f["path"] for t, f in remote["files"].items()} == \
        {t: _gs(f"shop/{Path(f['path']).name}") for t, f in local["files"].items()}
    strip = lambda s: {**s, "files": {t: {k: v for k, v in f.items() if k != "path"} for t, f in s["files"].items()}}
    assert strip(remote) == strip(local)
    names = sorted(p.name for p in (tmp_path / "out-local").iterdir())
    assert sorted(p.name for p in (tmp_path / "out-gs").iterdir()) == names
    for name in names:
        a, b = (tmp_path / "out-local" / name).read_bytes(), (tmp_path / "out-gs" / name).read_bytes()
        if name.endswith(".jsonl") or name.endswith(".json"):
            a, b = (x.decode().replace(str(src), _gs("shop")) for x in (a, b))
            if name.endswith(".json"):
                a, b = json.loads(a), json.loads(b)
                a.pop("seconds", None), b.pop("seconds", None)
        assert a == b, name
