"""indexer.store (core.store): immutable versions, checksummed manifests, CAS pointer, rollback, gc."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

import core.store
from core import storage
from indexer.store import (IntegrityError, PublishConflictError, VersionExistsError, VersionNotFoundError,
                           VersionStore)
from tests.support.version_staging import staging_folder


def _store(tmp_path) -> VersionStore:
    return VersionStore(str(tmp_path / "store"))


def _publish(store: VersionStore, tmp_path, version: str, payload: str = "x") -> None:
    store.publish(version, staging_folder(tmp_path, version, payload), {"metrics": {"recall_at_10": 0.5}})


def test_publish_moves_current_and_writes_a_checksummed_manifest(tmp_path):
    store = _store(tmp_path)
    assert store.current() is None and store.versions() == []
    _publish(store, tmp_path, "v1")
    assert store.current() == "v1"
    assert storage.read_text(os.path.join(store.root, "CURRENT")) == "v1"
    manifest = store.read_manifest("v1")
    assert manifest["version"] == "v1" and manifest["metrics"] == {"recall_at_10": 0.5} and manifest["created"]
    assert sorted(manifest["files"]) == ["index/item_ids.txt", "index/scann/dataset.npy", "items.parquet"]
    vdir = store.version_path("v1")
    for rel, entry in manifest["files"].items():
        path = os.path.join(vdir, rel)
        assert entry == {"sha256": storage.sha256_file(path), "size": os.path.getsize(path)}
    assert store.versions() == [{"id": "v1", "created": manifest["created"], "live": True, "has_manifest": True}]
    assert store.fetch_version("v1", str(tmp_path / "cache")) == vdir


def test_versions_are_immutable(tmp_path):
    store = _store(tmp_path)
    _publish(store, tmp_path, "v1", payload="first")
    before = store.read_manifest("v1")
    with pytest.raises(VersionExistsError, match="v1 already exists"):
        store.publish("v1", staging_folder(tmp_path, "v1-again", payload="second"), {})
    assert store.read_manifest("v1") == before
    store.verify("v1")
    assert store.current() == "v1"


def test_invalid_version_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid version id"):
        _store(tmp_path).publish("../escape", staging_folder(tmp_path, "s"), {})


def test_new_version_ids_sort_in_creation_order():
    ids = []
    for _ in range(5):
        ids.append(VersionStore.new_version_id())
        time.sleep(0.001)
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert ids[0][8] == "T" and ids[0].split("-")[0].endswith("Z")


def test_verify_names_a_corrupted_missing_or_extra_file(tmp_path):
    store = _store(tmp_path)
    _publish(store, tmp_path, "v1")
    vdir = store.version_path("v1")
    target = os.path.join(vdir, "index", "item_ids.txt")
    with open(target, "w") as fh:
        fh.write("a\nc\n")  # same size, different bytes
    with pytest.raises(IntegrityError, match="index/item_ids.txt sha256"):
        store.verify("v1")
    with pytest.raises(IntegrityError, match="index/item_ids.txt"):
        store.fetch_version("v1", str(tmp_path / "cache"))
    os.remove(target)
    with pytest.raises(IntegrityError, match="index/item_ids.txt listed in the manifest is missing"):
        store.verify("v1")

    _publish(store, tmp_path, "v2")
    with open(os.path.join(store.version_path("v2"), "sneaky.bin"), "wb") as fh:
        fh.write(b"!")
    with pytest.raises(IntegrityError, match="sneaky.bin is not listed"):
        store.verify("v2")
    with pytest.raises(VersionNotFoundError, match="v9 does not exist"):
        store.verify("v9")


def test_a_publish_that_loses_the_cas_leaves_current_unchanged(tmp_path, monkeypatch):
    store = _store(tmp_path)
    _publish(store, tmp_path, "v1")
    rival = VersionStore(store.root)
    real_upload = storage.upload_tree

    def upload_then_rival_publishes(src, dest):
        out = real_upload(src, dest)
        if dest.endswith("v2"):
            time.sleep(0.02)  # local generations are mtimes: step past coarse clock ticks
            rival.publish("v3", staging_folder(tmp_path, "v3"), {})
        return out

    monkeypatch.setattr(core.store.storage, "upload_tree", upload_then_rival_publishes)
    with pytest.raises(PublishConflictError, match="CURRENT changed while publishing v2.*NOT live"):
        _publish(store, tmp_path, "v2")
    assert store.current() == "v3"  # the winner's pointer survives
    store.verify("v2")  # the loser's version is complete, just not live
    store.rollback("v3")  # the pointer's lock was released: a later swap goes through


def test_rollback(tmp_path):
    store = _store(tmp_path)
    _publish(store, tmp_path, "v1")
    _publish(store, tmp_path, "v2")
    assert store.current() == "v2"
    store.rollback("v1")
    assert store.current() == "v1"
    with pytest.raises(VersionNotFoundError):
        store.rollback("nope")
    with open(os.path.join(store.version_path("v2"), "items.parquet"), "ab") as fh:
        fh.write(b"corrupt")
    with pytest.raises(IntegrityError, match="items.parquet"):
        store.rollback("v2")
    assert store.current() == "v1"


def test_gc_keeps_n_never_the_live_one_and_collects_orphans(tmp_path):
    store = _store(tmp_path)
    for i in range(1, 6):
        _publish(store, tmp_path, f"v{i}")
    store.rollback("v1")  # the live version is the oldest
    # A failed publish (no manifest) older than the newest complete version: an orphan.
    os.makedirs(os.path.join(store.root, "versions", "v3a", "index"))
    storage.write_text(os.path.join(store.root, "versions", "v3a", "index", "item_ids.txt"), "a\n")
    # A folder newer than every manifest may be a publish in flight: kept.
    storage.write_text(os.path.join(store.root, "versions", "v9", "items.parquet"), "partial")

    deleted = store.gc(keep=2)
    assert deleted == ["v2", "v3", "v3a"]
    listed = store.versions()
    assert [v["id"] for v in listed] == ["v1", "v4", "v5", "v9"]
    assert [v["id"] for v in listed if v["live"]] == ["v1"]
    assert [v["has_manifest"] for v in listed] == [True, True, True, False]
    assert store.gc(keep=2) == []
    with pytest.raises(ValueError, match="keep"):
        store.gc(keep=0)


def test_manifest_is_written_after_the_files(tmp_path, monkeypatch):
    """The manifest marks completeness, so it must be the last object written."""
    store = _store(tmp_path)
    order = []
    real_write = storage.write_text

    def record_write(path, text):
        vdir = os.path.dirname(path)
        order.append((os.path.basename(path), sorted(os.path.relpath(p, vdir) for p in storage.list_files(vdir))))
        return real_write(path, text)

    monkeypatch.setattr(core.store.storage, "write_text", record_write)
    _publish(store, tmp_path, "v1")
    assert order == [("manifest.json", ["index/item_ids.txt", "index/scann/dataset.npy", "items.parquet"])]
    files = json.loads(storage.read_text(os.path.join(store.version_path("v1"), "manifest.json")))["files"]
    assert "manifest.json" not in files


# ---------------------------------------------------------------- gs:// through the same code path
class _FakeBlob:
    def __init__(self, client, bucket, name):
        self._c, self._bucket, self.name = client, bucket, name
        self.generation = None

    def _key(self):
        return (self._bucket, self.name)

    def exists(self):
        return self._key() in self._c.objects

    def _check(self, if_generation_match):
        from google.api_core.exceptions import PreconditionFailed

        current = self._c.objects.get(self._key(), (None, 0))[1]
        if if_generation_match is not None and if_generation_match != current:
            raise PreconditionFailed(f"{self.name}: generation {current} != {if_generation_match}")

    def download_as_bytes(self, if_generation_match=None):
        from google.api_core.exceptions import NotFound

        if not self.exists():
            raise NotFound(self.name)
        self._check(if_generation_match)
        return self._c.objects[self._key()][0]

    def download_to_filename(self, path):
        with open(path, "wb") as fh:
            fh.write(self.download_as_bytes())

    def upload_from_string(self, data, if_generation_match=None):
        self._check(if_generation_match)
        self._c.counter += 1
        self._c.objects[self._key()] = (data if isinstance(data, bytes) else data.encode(), self._c.counter)
        self.generation = self._c.counter

    def upload_from_filename(self, path):
        with open(path, "rb") as fh:
            self.upload_from_string(fh.read())

    def reload(self):
        from google.api_core.exceptions import NotFound

        if not self.exists():
            raise NotFound(self.name)
        self.generation = self._c.objects[self._key()][1]
        self.size = len(self._c.objects[self._key()][0])

    def delete(self, if_generation_match=None):
        from google.api_core.exceptions import NotFound

        if not self.exists():
            raise NotFound(self.name)
        self._check(if_generation_match)
        del self._c.objects[self._key()]


class _FakeBucket:
    def __init__(self, client, name):
        self._c, self.name = client, name

    def blob(self, name):
        return _FakeBlob(self._c, self.name, name)


class _Listing(list):
    prefixes: set


class _FakeGcs:
    """Enough of google.cloud.storage.Client for core.storage, enforcing generations (unlike the emulator)."""

    def __init__(self):
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.counter = 0

    def bucket(self, name):
        return _FakeBucket(self, name)

    def list_blobs(self, bucket, prefix="", delimiter=None, max_results=None):
        out, prefixes = _Listing(), set()
        for (b, name) in sorted(self.objects):
            if b != bucket or not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                continue
            out.append(_FakeBlob(self, b, name))
        out.prefixes = prefixes
        return out[:max_results] if max_results else out


def test_gcs_store_publish_cas_fetch_and_gc(tmp_path, monkeypatch):
    fake = _FakeGcs()
    monkeypatch.setattr(storage, "_client", fake)
    store = VersionStore("gs://bucket/models/store")
    _publish(store, tmp_path, "v1")
    _publish(store, tmp_path, "v2")
    assert store.current() == "v2"
    assert [v["id"] for v in store.versions()] == ["v1", "v2"]
    local = store.fetch_version("v1", str(tmp_path / "cache"))
    assert local == str(tmp_path / "cache" / "v1")
    assert open(os.path.join(local, "index", "item_ids.txt")).read() == "a\nb\n"

    # Lost CAS on gs:// too: a rival moves CURRENT after our generation read.
    real_upload = storage.upload_tree

    def upload_then_rival(src, dest):
        out = real_upload(src, dest)
        if dest.endswith("v3"):
            storage.write_text("gs://bucket/models/store/CURRENT", "v1")
        return out

    monkeypatch.setattr(core.store.storage, "upload_tree", upload_then_rival)
    with pytest.raises(PublishConflictError):
        _publish(store, tmp_path, "v3")
    assert store.current() == "v1"

    fake.objects[("bucket", "models/store/versions/v2/items.parquet")] = (b"PAR1bad", 999)
    with pytest.raises(IntegrityError, match="items.parquet"):
        store.verify("v2")
    assert store.gc(keep=1) == ["v2"]  # v1 is live, v3 is the newest complete version
    assert [v["id"] for v in store.versions()] == ["v1", "v3"]


def test_run_records_sit_beside_versions_and_never_move_current(tmp_path):
    from run_records.exit_handler import record_final_status

    store = _store(tmp_path)
    _publish(store, tmp_path, "v1")
    manifest = store.read_manifest("v1")
    record = record_final_status(store.root, "run-b", "FAILED", "Task ingest failed.", "2026-11-03")
    assert record["live_version"] == "v1" and record["published_version"] is None
    assert store.current() == "v1"
    store.record_run("run-a", {"state": "SUCCEEDED"})
    assert [(r["run_id"], r["state"]) for r in store.run_records()] == [("run-a", "SUCCEEDED"), ("run-b", "FAILED")]
    assert store.run_records()[1]["error"] == "Task ingest failed." and store.run_records()[1]["data_date"] == "2026-11-03"
    # gc deletes versions only, never the run history
    store.gc(keep=1)
    assert len(store.run_records()) == 2 and store.read_manifest("v1") == manifest
    with pytest.raises(ValueError, match="invalid"):
        store.record_run("../escape", {})


# ---------------------------------------------------------------- the store lock and gc vs rollback races
from tests.fakes.gcs_server import FakeGcsServer  # noqa: E402


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path, monkeypatch) -> str:
    """A store root on local disk, or on the fake GCS server (which enforces generations)."""
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    with FakeGcsServer(buckets=["bucket"]) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        storage.reset_gcs_client()
        yield "gs://bucket/store"
    storage.reset_gcs_client()


def _seed(root: str, tmp_path, n: int) -> tuple[VersionStore, list[str]]:
    store = VersionStore(root)
    ids = [f"v{i:02d}" for i in range(1, n + 1)]
    for vid in ids:
        _publish(store, tmp_path, vid, payload=vid)
    return store, ids


def test_gc_racing_a_rollback_never_leaves_current_naming_a_deleted_version(root, tmp_path, monkeypatch):
    """The reported race, made deterministic: the rollback lands after gc has read CURRENT.

    gc --keep 1 deletes v01..v05 in order; as it starts deleting, an operator rolls back to
    v05, the version it deletes last. Before the fix gc had read CURRENT once, up front, and
    deleted v05 under the new pointer.
    """
    store, ids = _seed(root, tmp_path, 6)
    target = ids[-2]
    real_delete = storage.delete_file
    rollback: dict = {}

    def operator_rolls_back() -> None:
        try:
            VersionStore(root).rollback(target)
            rollback["outcome"] = "live"
        except core.store.StoreError as exc:  # refused: gc condemned the target first
            rollback["outcome"] = exc

    def first_delete_lets_the_operator_in(path):
        if "thread" not in rollback:
            rollback["thread"] = threading.Thread(target=operator_rolls_back)
            rollback["thread"].start()
            rollback["thread"].join(timeout=0.3)  # done at once without a lock; waits for gc's with one
        return real_delete(path)

    monkeypatch.setattr(core.store.storage, "delete_file", first_delete_lets_the_operator_in)
    deleted = store.gc(keep=1)
    rollback["thread"].join(timeout=30)
    live = store.current()
    store.verify(live)  # CURRENT names a complete, intact version
    if rollback["outcome"] == "live":
        assert live == target and deleted == ids[:-2]  # everything doomed but the new live one
    else:
        assert isinstance(rollback["outcome"], core.store.VersionNotFoundError), rollback["outcome"]
        assert "was deleted (gc)" in str(rollback["outcome"]) and live == ids[-1] and target in deleted


def test_gc_rechecks_current_under_the_lock_before_each_deletion(root, tmp_path, monkeypatch):
    """CURRENT moves to a doomed version after gc listed the store: that version survives."""
    store, ids = _seed(root, tmp_path, 4)
    real_list = VersionStore._list_versions

    def list_then_rollback(self, live):
        listed = real_list(self, live)
        VersionStore(root).rollback(ids[0])  # after gc's listing, before its first deletion
        return listed

    monkeypatch.setattr(VersionStore, "_list_versions", list_then_rollback)
    assert store.gc(keep=1) == ids[1:-1]
    monkeypatch.undo()
    assert store.current() == ids[0]
    store.verify(ids[0])


def test_pointer_writers_swap_current_while_holding_the_store_lock(root, tmp_path, monkeypatch):
    store, ids = _seed(root, tmp_path, 2)
    held_during_swap = []
    real_cas = storage.write_bytes_if_generation

    def cas(path, data, expected):
        # Someone else asking for the lock now must time out: we are inside the critical section.
        other = VersionStore(root, lock_timeout_seconds=0.05)
        with pytest.raises(core.store.StoreBusyError, match="busy"):
            with other._locked("probe"):
                pass
        held_during_swap.append(data)
        return real_cas(path, data, expected)

    monkeypatch.setattr(core.store.storage, "write_bytes_if_generation", cas)
    store.rollback(ids[0])
    _publish(store, tmp_path, "v03")
    assert held_during_swap == [ids[0].encode(), b"v03"]
    monkeypatch.undo()
    with VersionStore(root)._locked("after"):  # and released afterwards
        pass


def test_a_waiter_gives_up_with_a_retryable_error_naming_the_holder(root, tmp_path):
    store, ids = _seed(root, tmp_path, 2)
    impatient = VersionStore(root, lock_timeout_seconds=0.2)
    started = time.monotonic()
    with store._locked("a long operator task"):
        with pytest.raises(core.store.StoreBusyError) as err:
            impatient.rollback(ids[0])
    assert 0.2 <= time.monotonic() - started < 5
    assert "a long operator task" in str(err.value) and "retry" in str(err.value)
    assert store.current() == ids[-1]
    impatient.rollback(ids[0])  # free again
    assert store.current() == ids[0]


def test_an_overtaken_publish_collected_as_an_orphan_fails_cleanly(root, tmp_path, monkeypatch):
    """A slow publish (older id, no manifest yet) is overtaken by a newer one whose gc takes it for an orphan."""
    store, _ = _seed(root, tmp_path, 1)
    real_upload = storage.upload_tree

    def upload_then_overtaken(src, dest):
        out = real_upload(src, dest)
        if dest.endswith("v02"):
            rival = VersionStore(root)
            _publish(rival, tmp_path, "v03")
            assert rival.gc(keep=1) == ["v01", "v02"]  # v02 has no manifest and is older than v03
        return out

    monkeypatch.setattr(core.store.storage, "upload_tree", upload_then_overtaken)
    with pytest.raises(core.store.VersionCollectedError, match="v02 lost .* gc took it for an orphan"):
        _publish(store, tmp_path, "v02")
    monkeypatch.undo()
    assert store.current() == "v03" and not store.exists("v02")  # no manifest was written over the gap
    store.verify("v03")


def test_a_version_collected_between_its_verify_and_the_swap_is_not_made_live(root, tmp_path, monkeypatch):
    store, ids = _seed(root, tmp_path, 3)
    real_verify = VersionStore._verify

    def verify_then_gc(self, version, local_dir=None):
        out = real_verify(self, version, local_dir)
        if version == ids[0]:
            assert VersionStore(root).gc(keep=1) == ids[:-1]  # not live yet: doomed
        return out

    monkeypatch.setattr(VersionStore, "_verify", verify_then_gc)
    with pytest.raises(core.store.VersionNotFoundError, match="was deleted \\(gc\\) after it was verified"):
        store.rollback(ids[0])
    monkeypatch.undo()
    assert store.current() == ids[-1]
    store.verify(ids[-1])


# ---------------------------------------------------------------- CURRENT: one parser for every reader
@pytest.mark.parametrize("data, problem", [
    (b"\xef\xbb\xbfv1", "byte-order mark"),
    (b"\xef\xbb\xbfv1\n", "byte-order mark"),
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"v1\nv2\n", "2 lines"),
    (b"v1\n\n", "2 lines"),
    (b"v1\r\n", "not a valid version id"),
    (b" v1", "not a valid version id"),
    (b"v1\x00", "not a valid version id"),
    (b"\xff\xfev1", "not UTF-8"),
    (b"../v1", "not a valid version id"),
    (b"a" * 200, "not a valid version id"),
    (b"a" * 257, "257 bytes, more than the 256"),
    (os.urandom(3 << 20), "bytes, more than the 256"),
], ids=["bom", "bom-newline", "empty", "newline-only", "two-lines", "blank-second-line", "crlf", "space",
        "nul", "binary", "path", "too-long-id", "257-bytes", "3-MiB"])
def test_current_must_hold_exactly_one_version_id(tmp_path, data, problem):
    store = VersionStore(str(tmp_path / "store"))
    _publish(store, tmp_path, "v1")
    with open(store.current_path, "wb") as fh:
        fh.write(data)
    with pytest.raises(core.store.StoreError) as err:
        store.current()
    assert isinstance(err.value, core.store.PointerError)
    message = str(err.value)
    assert message.startswith(f"CURRENT ({store.current_path})") and problem in message
    assert len(message) < 500  # never echoes what it read
    with pytest.raises(core.store.PointerError):
        store.versions()


def test_current_allows_one_trailing_newline(tmp_path):
    store = VersionStore(str(tmp_path / "store"))
    _publish(store, tmp_path, "v1")
    storage.write_text(store.current_path, "v1\n")
    assert store.current() == "v1" and store.read_current()[0] == "v1"
    assert core.store.parse_current(b"v1\n", "CURRENT") == "v1"


def test_gc_refuses_to_run_while_current_does_not_parse(root, tmp_path):
    """A BOM before the live id once made gc treat the live version as doomed and delete it."""
    store, ids = _seed(root, tmp_path, 3)
    storage.write_bytes(store.current_path, b"\xef\xbb\xbf" + ids[-1].encode())
    with pytest.raises(core.store.StoreError, match="gc refused to run.*byte-order mark"):
        store.gc(keep=1)  # before the fix: deleted the live version (strip() keeps the BOM)
    assert [v["id"] for v in store.versions(strict_pointer=False)] == ids
    for vid in ids:
        store.verify(vid)
    store.rollback(ids[-1])  # rollback is how an operator repairs the pointer
    assert store.current() == ids[-1]
    assert store.gc(keep=1) == ids[:-1]


def test_a_current_that_is_a_folder_or_a_fifo_is_refused_never_read(tmp_path):
    store = VersionStore(str(tmp_path / "store"))
    _publish(store, tmp_path, "v1")
    os.remove(store.current_path)
    os.mkdir(store.current_path)
    with pytest.raises(core.store.PointerError, match=r"CURRENT \(.*\) is a directory"):
        store.current()
    with pytest.raises(core.store.PointerError, match="is a directory"):
        store.rollback("v1")  # not overwritten
    with pytest.raises(core.store.PointerError, match="is a directory"):
        _publish(store, tmp_path, "v2")
    assert os.path.isdir(store.current_path)
    os.rmdir(store.current_path)
    os.mkfifo(store.current_path)  # a reader must not block on it
    with pytest.raises(core.store.PointerError, match="not a regular file"):
        store.current()


def test_a_gs_current_that_is_a_folder_is_refused(tmp_path, monkeypatch):
    with FakeGcsServer(buckets=["bucket"]) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        storage.reset_gcs_client()
        try:
            store = VersionStore("gs://bucket/store")
            _publish(store, tmp_path, "v1")
            server.put_object("bucket", "store/CURRENT.bak", b"x")  # a neighbour, not a folder
            assert store.current() == "v1"
            storage.delete_file(store.current_path)
            server.put_object("bucket", "store/CURRENT/v1", b"v1")
            with pytest.raises(core.store.PointerError, match="is a directory"):
                store.current()
            server.put_object("bucket", "store/CURRENT", b"x" * 5000)
            with pytest.raises(core.store.PointerError, match="5000 bytes"):
                store.current()
        finally:
            storage.reset_gcs_client()


# ---------------------------------------------------------------- manifest "files" table shape
@pytest.mark.parametrize("files, message", [
    ({"x": 5}, r"file x has manifest entry 5, not an object with sha256"),
    ({"x": {"sha256": "ab", "size": 1}}, r"file x has manifest entry .*'sha256': 'ab'"),
    ({"x": {"sha256": "a" * 64, "size": "7"}}, r"file x has manifest entry"),
    ({"x": {"sha256": "a" * 64, "size": True}}, r"file x has manifest entry"),
    ({"x": {"sha256": "a" * 64}}, r"file x has manifest entry"),
    ({"../../etc/passwd": {"sha256": "a" * 64, "size": 1}}, r"lists '\.\./\.\./etc/passwd', not a relative path"),
    ({"/abs": {"sha256": "a" * 64, "size": 1}}, r"lists '/abs'"),
    ({"": {"sha256": "a" * 64, "size": 1}}, r"lists ''"),
], ids=["int", "short-sha", "str-size", "bool-size", "no-size", "dotdot", "absolute", "empty-name"])
def test_read_manifest_validates_the_files_table(tmp_path, files, message):
    store = _store(tmp_path)
    _publish(store, tmp_path, "v1")
    storage.write_text(os.path.join(store.version_path("v1"), "manifest.json"), json.dumps({"files": files}))
    for read in (store.read_manifest, store.verify, store.rollback):
        with pytest.raises(IntegrityError, match=message):
            read("v1")
    assert [v["has_manifest"] for v in store.versions()] == [True]  # listed, not fatal


def test_a_version_collected_while_its_publish_verifies_it_is_reported_as_collected(root, tmp_path, monkeypatch):
    store, _ = _seed(root, tmp_path, 1)
    real_verify = VersionStore._verify

    def gc_deletes_it_mid_verify(self, version, local_dir=None):
        if version == "v02":
            _publish(VersionStore(root), tmp_path, "v03")
            assert VersionStore(root).gc(keep=1) == ["v01", "v02"]  # v02 complete, not live, not newest
        return real_verify(self, version, local_dir)

    monkeypatch.setattr(VersionStore, "_verify", gc_deletes_it_mid_verify)
    with pytest.raises(core.store.VersionCollectedError, match="collected by gc while its publish verified it"):
        _publish(store, tmp_path, "v02")
    monkeypatch.undo()
    assert store.current() == "v03"
    store.verify("v03")
