"""indexer.store (core.store): immutable versions, checksummed manifests, CAS pointer, rollback, gc."""

from __future__ import annotations

import json
import os
import time

import pytest

import core.store
from core import storage
from indexer.store import (IntegrityError, PublishConflictError, VersionExistsError, VersionNotFoundError,
                           VersionStore)


def _staging(tmp_path, name: str, payload: str = "x") -> str:
    folder = tmp_path / "staging" / name
    (folder / "index" / "scann").mkdir(parents=True)
    (folder / "index" / "scann" / "dataset.npy").write_bytes(payload.encode() * 100)
    (folder / "index" / "item_ids.txt").write_text("a\nb\n")
    (folder / "items.parquet").write_bytes(b"PAR1" + payload.encode())
    return str(folder)


def _store(tmp_path) -> VersionStore:
    return VersionStore(str(tmp_path / "store"))


def _publish(store: VersionStore, tmp_path, version: str, payload: str = "x") -> None:
    store.publish(version, _staging(tmp_path, version, payload), {"metrics": {"recall_at_10": 0.5}})


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
        store.publish("v1", _staging(tmp_path, "v1-again", payload="second"), {})
    assert store.read_manifest("v1") == before
    store.verify("v1")
    assert store.current() == "v1"


def test_invalid_version_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid version id"):
        _store(tmp_path).publish("../escape", _staging(tmp_path, "s"), {})


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
            rival.publish("v3", _staging(tmp_path, "v3"), {})
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

    def download_as_bytes(self):
        from google.api_core.exceptions import NotFound

        if not self.exists():
            raise NotFound(self.name)
        return self._c.objects[self._key()][0]

    def download_to_filename(self, path):
        with open(path, "wb") as fh:
            fh.write(self.download_as_bytes())

    def upload_from_string(self, data, if_generation_match=None):
        from google.api_core.exceptions import PreconditionFailed

        current = self._c.objects.get(self._key(), (None, 0))[1]
        if if_generation_match is not None and if_generation_match != current:
            raise PreconditionFailed(f"{self.name}: generation {current} != {if_generation_match}")
        self._c.counter += 1
        self._c.objects[self._key()] = (data if isinstance(data, bytes) else data.encode(), self._c.counter)

    def upload_from_filename(self, path):
        with open(path, "rb") as fh:
            self.upload_from_string(fh.read())

    def reload(self):
        from google.api_core.exceptions import NotFound

        if not self.exists():
            raise NotFound(self.name)
        self.generation = self._c.objects[self._key()][1]

    def delete(self):
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
    from indexer.run_log import record_final_status

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
