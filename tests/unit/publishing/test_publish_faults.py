"""A publisher that dies part-way, and damaged files, on local disk and on gs:// (fake GCS server).

Each kill point leaves the store as a crash would: readers still follow CURRENT to the old,
intact version; the half-published version shows up as incomplete (no manifest) or as
complete-but-not-live; gc collects it (once it is no longer the newest, i.e. cannot be a
publish in flight) and never the live version; the next publish succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from google.cloud.storage import Blob

import core.store
from core import storage
from core.store import IntegrityError, VersionStore
from tests.conftest import REPO as REPO_PATH
from tests.fakes.gcs_server import FakeGcsServer

BUCKET = "bucket"
REPO = str(REPO_PATH)


class Killed(BaseException):
    """Stands in for the process dying: not an Exception, so no `except Exception` swallows it."""


class Backend:
    def __init__(self, kind: str, tmp_path, gcs: FakeGcsServer | None):
        self.kind, self.gcs = kind, gcs
        self.root = f"gs://{BUCKET}/store" if gcs else str(tmp_path / "store")

    def overwrite(self, version: str, rel: str, data: bytes) -> None:
        """Replace a stored file behind the store's back (the service's own hashes updated)."""
        if self.gcs:
            self.gcs.put_object(BUCKET, f"store/versions/{version}/{rel}", data)
        else:
            with open(os.path.join(self.root, "versions", version, rel), "wb") as fh:
                fh.write(data)


@pytest.fixture(params=["local", "gs"])
def backend(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield Backend("local", tmp_path, None)
        return
    with FakeGcsServer(buckets=[BUCKET]) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        storage.reset_gcs_client()
        yield Backend("gs", tmp_path, server)
    storage.reset_gcs_client()


def _staging(tmp_path, name: str) -> str:
    folder = tmp_path / "staging" / name
    (folder / "index").mkdir(parents=True)
    (folder / "index" / "item_ids.txt").write_text("a\nb\n")
    (folder / "items.bin").write_bytes(name.encode() * 50)
    return str(folder)


def _publish(store: VersionStore, tmp_path, version: str) -> None:
    store.publish(version, _staging(tmp_path, version), {"metrics": {"recall_at_10": 0.5}})


def _kill_after_upload(monkeypatch, backend):
    real = storage.upload_tree

    def upload_then_die(src, dest):
        real(src, dest)
        raise Killed("after the version files, before manifest.json")

    monkeypatch.setattr(core.store.storage, "upload_tree", upload_then_die)


def _kill_after_manifest(monkeypatch, backend):
    real = storage.write_text

    def write_then_die(path, text):
        real(path, text)
        if path.endswith("/manifest.json"):
            raise Killed("after manifest.json, before the CURRENT swap")

    monkeypatch.setattr(core.store.storage, "write_text", write_then_die)


def _kill_during_current_write(monkeypatch, backend):
    """Die inside the compare-and-swap of CURRENT, before the new bytes land."""
    if backend.gcs:
        real = Blob.upload_from_string

        def upload(self, data, *args, **kwargs):
            if self.name.endswith("/CURRENT"):
                raise Killed("during the CURRENT write")
            return real(self, data, *args, **kwargs)

        monkeypatch.setattr(Blob, "upload_from_string", upload)
    else:
        real = storage.write_bytes

        def write(path, data):
            if os.path.basename(path) == "CURRENT":
                raise Killed("during the CURRENT write")
            return real(path, data)

        monkeypatch.setattr(storage, "write_bytes", write)  # what write_bytes_if_generation calls


KILL_POINTS = {
    "after_upload": (_kill_after_upload, False),  # (inject, does the orphan have a manifest?)
    "after_manifest": (_kill_after_manifest, True),
    "during_current_write": (_kill_during_current_write, True),
}


def _assert_old_version_serves(store: VersionStore) -> None:
    assert store.current() == "v1"
    assert store.read_manifest(store.current())["version"] == "v1"
    assert store.verify(store.current())["metrics"] == {"recall_at_10": 0.5}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_publisher_killed_mid_publish_leaves_the_old_version_live(backend, tmp_path, monkeypatch, point):
    store = VersionStore(backend.root)
    _publish(store, tmp_path, "v1")
    inject, has_manifest = KILL_POINTS[point]
    with monkeypatch.context() as patch:
        inject(patch, backend)
        with pytest.raises(Killed):
            _publish(store, tmp_path, "v2")

    _assert_old_version_serves(store)
    assert store.versions() == [
        {"id": "v1", "created": store.read_manifest("v1")["created"], "live": True, "has_manifest": True},
        {"id": "v2", "created": store.read_manifest("v2")["created"] if has_manifest else None, "live": False,
         "has_manifest": has_manifest}]
    if has_manifest:
        store.verify("v2")  # complete and intact, just never made live
    else:
        with pytest.raises(core.store.VersionNotFoundError, match="v2 is incomplete"):
            store.verify("v2")
    # v2 is the newest folder: it may still be a publish in flight (or the newest complete
    # version), so gc leaves it, and it never touches the live one.
    assert store.gc(keep=1) == []
    _assert_old_version_serves(store)

    _publish(store, tmp_path, "v3")  # a fresh publish afterwards succeeds
    assert store.current() == "v3"
    store.rollback("v1")
    assert store.gc(keep=1) == ["v2"]  # the orphan goes; v1 (live) and v3 (newest) stay
    assert [(v["id"], v["live"]) for v in store.versions()] == [("v1", True), ("v3", False)]
    _assert_old_version_serves(store)
    store.verify("v3")


_CHILD = textwrap.dedent("""
    import os, sys, time
    from core import storage
    from core.store import VersionStore
    root, staging, marker = sys.argv[1:4]
    real = storage.write_bytes

    def write(path, data):
        if os.path.basename(path) == "CURRENT":
            open(marker, "w").close()  # the barrier: the parent kills us here, mid-CAS
            time.sleep(60)
        return real(path, data)

    storage.write_bytes = write
    VersionStore(root).publish("v2", staging, {})
""")


def _sigkill_during_current_write(tmp_path) -> VersionStore:
    store = VersionStore(str(tmp_path / "store"))
    _publish(store, tmp_path, "v1")
    marker = tmp_path / "at-barrier"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, store.root, _staging(tmp_path, "v2"), str(marker)],
                             cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "child never reached the barrier"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return store


def test_a_sigkilled_local_publisher_leaves_readers_on_the_old_version(tmp_path):
    store = _sigkill_during_current_write(tmp_path)
    _assert_old_version_serves(store)
    assert [(v["id"], v["live"], v["has_manifest"]) for v in store.versions()] == [("v1", True, True),
                                                                                    ("v2", False, True)]
    store.verify("v2")
    assert store.gc(keep=1) == []


def test_a_publish_after_a_sigkilled_local_publisher_succeeds(tmp_path):
    store = _sigkill_during_current_write(tmp_path)
    _publish(store, tmp_path, "v3")
    assert store.current() == "v3"


# --------------------------------------------------------------------------- damaged files


def _corrupt_upload(monkeypatch, backend, damage):
    real = storage.upload_tree

    def upload_then_damage(src, dest):
        out = real(src, dest)
        damage()
        return out

    monkeypatch.setattr(core.store.storage, "upload_tree", upload_then_damage)


@pytest.mark.parametrize("how, data, message", [
    ("truncated", b"vv", r"file items\.bin has 2 bytes, manifest says 100"),
    ("flipped", b"vw" * 50, r"file items\.bin sha256 .* does not match"),
], ids=["truncated", "flipped"])
def test_the_publishers_final_verify_rejects_a_damaged_upload(backend, tmp_path, monkeypatch, how, data, message):
    store = VersionStore(backend.root)
    _publish(store, tmp_path, "v1")
    with monkeypatch.context() as patch:
        _corrupt_upload(patch, backend, lambda: backend.overwrite("v2", "items.bin", data))
        with pytest.raises(IntegrityError, match=message):
            _publish(store, tmp_path, "v2")
    _assert_old_version_serves(store)
    with pytest.raises(IntegrityError, match="items.bin"):
        store.rollback("v2")
    _assert_old_version_serves(store)


def test_the_publishers_final_verify_rejects_a_staged_file_changed_after_hashing(backend, tmp_path, monkeypatch):
    store = VersionStore(backend.root)
    _publish(store, tmp_path, "v1")
    staging = _staging(tmp_path, "v2")
    real = storage.upload_tree

    def change_staged_file_then_upload(src, dest):
        with open(os.path.join(src, "index", "item_ids.txt"), "wb") as fh:
            fh.write(b"a\nc\n")  # same size, different bytes: only the checksum can tell
        return real(src, dest)

    monkeypatch.setattr(core.store.storage, "upload_tree", change_staged_file_then_upload)
    with pytest.raises(IntegrityError, match=r"file index/item_ids\.txt sha256"):
        store.publish("v2", staging, {})
    _assert_old_version_serves(store)


@pytest.mark.parametrize("data, message", [
    (b"v1" * 49, r"file items\.bin has 98 bytes, manifest says 100"),
    (b"v2" * 50, r"file items\.bin sha256 .* does not match"),
], ids=["truncated", "flipped"])
def test_a_reader_rejects_a_damaged_file_by_checksum(backend, tmp_path, data, message):
    store = VersionStore(backend.root)
    _publish(store, tmp_path, "v1")
    backend.overwrite("v1", "items.bin", data)
    with pytest.raises(IntegrityError, match=message):
        store.verify("v1")
    with pytest.raises(IntegrityError, match=message):
        store.fetch_version("v1", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- dead lock holders, killed gc

_LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from core.store import VersionStore
    root, marker = sys.argv[1:3]
    with VersionStore(root)._locked("a publish that will be SIGKILLed"):
        open(marker, "w").close()
        time.sleep(60)
""")


def _leave_a_dead_lock_holder(backend, tmp_path) -> None:
    """Leave the store lock as a holder SIGKILLed while holding it would."""
    if backend.gcs:
        doc = {"owner": "dead", "write": "w0", "host": "gone", "pid": 1, "purpose": "publish v9",
               "acquired_at": "2026-01-01T00:00:00Z", "lease_seconds": 30, "expires_at": time.time() - 1}
        backend.gcs.put_object(BUCKET, "store/store.lock", json.dumps(doc).encode())
        return
    marker = tmp_path / "locked"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, backend.root, str(marker)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "child never took the lock"
            time.sleep(0.02)
        with pytest.raises(core.store.StoreBusyError, match="SIGKILLed"):  # really held, by the child
            VersionStore(backend.root, lock_timeout_seconds=0.1).rollback("v1")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)


def test_a_lock_holder_that_died_never_wedges_the_store(backend, tmp_path):
    store = VersionStore(backend.root, lock_timeout_seconds=10)
    _publish(store, tmp_path, "v1")
    _publish(store, tmp_path, "v2")
    _leave_a_dead_lock_holder(backend, tmp_path)
    started = time.monotonic()
    store.rollback("v1")  # the kernel dropped the flock / the lease had expired: no wait
    assert time.monotonic() - started < 5
    _assert_old_version_serves(store)
    assert store.gc(keep=1) == []  # v2 is the newest, v1 live
    _publish(store, tmp_path, "v3")
    assert store.current() == "v3"


def test_a_gc_killed_between_a_manifest_and_the_files_leaves_an_orphan_never_a_dangling_pointer(
        backend, tmp_path, monkeypatch):
    store = VersionStore(backend.root)
    for v in ("v0", "v1", "v2"):
        _publish(store, tmp_path, v)
    store.rollback("v1")
    with monkeypatch.context() as patch:
        def die(self, version, lock=None):
            raise Killed(f"gc killed after deleting {version}'s manifest")

        patch.setattr(VersionStore, "_delete_files", die)
        with pytest.raises(Killed):
            store.gc(keep=1)
    _assert_old_version_serves(store)
    assert [(v["id"], v["has_manifest"]) for v in store.versions()] == [("v0", False), ("v1", True), ("v2", True)]
    with pytest.raises(core.store.VersionNotFoundError, match="v0 is incomplete"):
        store.rollback("v0")  # never pointed at
    assert store.gc(keep=1) == ["v0"]  # the next gc finishes the job (an orphan now)
    _assert_old_version_serves(store)


def test_a_gc_that_cannot_run_after_a_publish_is_reported_not_raised(backend, tmp_path):
    """gate_and_publish's retention: the new version is live whatever gc meets."""
    from publishing.publish import _retention

    store = VersionStore(backend.root, lock_timeout_seconds=0.1)
    for v in ("v1", "v2", "v3"):
        _publish(store, tmp_path, v)
    with VersionStore(backend.root)._locked("an operator's long rollback"):
        deleted, error = _retention(store, keep=1)
    assert deleted == [] and "retention (keep 1) did not run" in error and "busy" in error
    assert store.current() == "v3" and len(store.versions()) == 3
    assert _retention(store, keep=1) == (["v1", "v2"], None)
