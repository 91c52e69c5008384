"""One storage interface for local folders and gs:// prefixes.

Every stage reads and writes through these functions so a local run and a cluster
run take the same code path. Paths are plain strings: ``/abs/dir/file``,
``relative/dir`` or ``gs://bucket/prefix/file``.

GCS goes through the real google-cloud-storage client (which honours
``STORAGE_EMULATOR_HOST`` for tests). Writes of single objects are atomic on both
backends: locally a temp file in the same folder plus ``os.replace``; on GCS an
object upload is atomic by nature. :func:`write_bytes_if_generation` is the
compare-and-swap primitive the version store uses for its CURRENT pointer.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

GCS_SCHEME = "gs://"
_CAS_TOKEN = "twotower-cas-token"  # object metadata key naming the write that set the object


class PreconditionFailed(RuntimeError):
    """A compare-and-swap lost: the object changed since it was read."""


def is_gcs(path: str) -> bool:
    return str(path).startswith(GCS_SCHEME)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local and gs:// alike."""
    base = str(base)
    if is_gcs(base):
        out = base.rstrip("/")
        for part in parts:
            out = f"{out}/{str(part).strip('/')}"
        return out
    return str(Path(base, *parts))


def _split_gcs(path: str) -> tuple[str, str]:
    rest = path[len(GCS_SCHEME):]
    bucket, _, blob = rest.partition("/")
    if not bucket:
        raise ValueError(f"invalid gs:// path (no bucket): {path!r}")
    return bucket, blob


_client = None


def gcs_client():
    """A process-wide google.cloud.storage Client (created on first use, never at import)."""
    global _client
    if _client is None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            _client = storage.Client(project="twotower-test", credentials=AnonymousCredentials())
        else:
            _client = storage.Client()
    return _client


def reset_gcs_client() -> None:
    """Forget the cached client (tests that start a new emulator call this)."""
    global _client
    _client = None


def _blob(path: str):
    bucket, name = _split_gcs(path)
    return gcs_client().bucket(bucket).blob(name)


def exists(path: str) -> bool:
    if is_gcs(path):
        bucket, name = _split_gcs(path)
        if _blob(path).exists():
            return True
        # A "folder" exists when any object lives under it.
        prefix = name.rstrip("/") + "/"
        return any(True for _ in gcs_client().list_blobs(bucket, prefix=prefix, max_results=1))
    return os.path.exists(path)


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        from google.api_core.exceptions import NotFound

        try:
            return _blob(path).download_as_bytes()
        except NotFound:
            raise FileNotFoundError(path) from None
    with open(path, "rb") as fh:
        return fh.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole object atomically: readers see the old or the new content, never half."""
    if is_gcs(path):
        _blob(path).upload_from_string(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def generation(path: str) -> Optional[int]:
    """The object's current generation (GCS) or a content-derived stand-in (local); None if absent."""
    if is_gcs(path):
        from google.api_core.exceptions import NotFound

        blob = _blob(path)
        try:
            blob.reload()
        except NotFound:
            return None
        return int(blob.generation)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    # Every write goes through os.replace of a fresh temp file, so the inode changes on each
    # write even when the clock is too coarse to tell two mtimes apart.
    token = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}".encode()
    return int.from_bytes(hashlib.sha256(token).digest()[:8], "big") >> 1


def _cas_token(path: str) -> Optional[str]:
    """The CAS token stored on a gs:// object by the write that set it (None if absent)."""
    from google.api_core.exceptions import NotFound

    blob = _blob(path)
    try:
        blob.reload()
    except NotFound:
        return None
    return (getattr(blob, "metadata", None) or {}).get(_CAS_TOKEN)  # getattr: duck-typed test fakes


def write_bytes_if_generation(path: str, data: bytes, expected: Optional[int]) -> None:
    """Compare-and-swap: write only if the object is still at ``expected`` (None = must not exist).

    Raises:
        PreconditionFailed: someone else wrote the object first; nothing was changed.
    """
    if is_gcs(path):
        from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed

        # The client retries a conditional upload (503, timeout). When the first attempt did
        # commit but its reply was lost, the retry meets our own generation and gets a 412:
        # a unique token in the object's metadata tells our win from a real conflict.
        token = secrets.token_hex(16)
        blob = _blob(path)
        blob.metadata = {_CAS_TOKEN: token}
        try:
            blob.upload_from_string(data, if_generation_match=0 if expected is None else expected)
        except GcsPreconditionFailed as exc:
            if _cas_token(path) == token:
                return
            raise PreconditionFailed(f"{path}: changed since generation {expected}") from exc
        return
    # Local: serialise writers with a kernel lock on a lock file that is never deleted. The
    # kernel drops a flock when its holder dies, so a publisher killed mid-swap (even by
    # SIGKILL) cannot leave the pointer locked forever, as an O_EXCL marker file would.
    lock = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreconditionFailed(f"{path}: another writer holds {lock}") from None
        if generation(path) != expected:
            raise PreconditionFailed(f"{path}: changed since generation {expected}")
        write_bytes(path, data)
    finally:
        os.close(fd)  # releases the flock


def list_files(prefix: str) -> list[str]:
    """Every file below a folder/prefix, as full paths, sorted."""
    if is_gcs(prefix):
        bucket, name = _split_gcs(prefix)
        name = name.rstrip("/") + "/" if name else ""
        return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in gcs_client().list_blobs(bucket, prefix=name)
                      if not b.name.endswith("/"))
    out = []
    for root, _, files in os.walk(prefix):
        out.extend(os.path.join(root, f) for f in files)
    return sorted(out)


def list_children(prefix: str) -> list[str]:
    """Names of the immediate children (files and folders) of a folder/prefix."""
    if is_gcs(prefix):
        bucket, name = _split_gcs(prefix)
        name = name.rstrip("/") + "/" if name else ""
        it = gcs_client().list_blobs(bucket, prefix=name, delimiter="/")
        files = [b.name[len(name):] for b in it]
        dirs = [p[len(name):].rstrip("/") for p in it.prefixes]
        return sorted(set(f for f in files if f) | set(dirs))
    if not os.path.isdir(prefix):
        return []
    return sorted(os.listdir(prefix))


def delete_file(path: str) -> None:
    """Delete one object/file; already gone is fine (a retried delete, or a racer)."""
    if is_gcs(path):
        from google.api_core.exceptions import NotFound

        try:
            _blob(path).delete()
        except NotFound:
            pass
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def delete_tree(prefix: str) -> None:
    if is_gcs(prefix):
        from google.api_core.exceptions import NotFound

        for path in list_files(prefix):
            try:
                _blob(path).delete()
            except NotFound:
                pass  # gone already: a retried delete whose first attempt succeeded, or a racer
        return
    shutil.rmtree(prefix, ignore_errors=False)


def upload_tree(local_dir: str, dest: str) -> list[str]:
    """Copy a local folder to ``dest`` (local or gs://); returns the relative paths copied."""
    rels = []
    for path in list_files(local_dir):
        rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
        target = join(dest, rel)
        if is_gcs(dest):
            _blob(target).upload_from_filename(path)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(path, target)
        rels.append(rel)
    return rels


def download_tree(src: str, local_dir: str) -> str:
    """Make ``src`` available as a local folder (a no-op copy-free path when already local)."""
    if not is_gcs(src):
        return src
    for path in list_files(src):
        rel = path[len(src.rstrip("/")) + 1:]
        target = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _blob(path).download_to_filename(target)
    return local_dir


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a local file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_lines(path: str) -> Iterator[str]:
    for line in read_text(path).splitlines():
        if line.strip():
            yield line
