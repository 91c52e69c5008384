"""One storage interface for local folders and gs:// prefixes.

Every stage reads and writes through these functions so a local run and a cluster
run take the same code path. Paths are plain strings: ``/abs/dir/file``,
``relative/dir`` or ``gs://bucket/prefix/file``.

GCS goes through the real google-cloud-storage client (which honours
``STORAGE_EMULATOR_HOST`` for tests). Writes of single objects are atomic on both
backends: locally a temp file in the same folder plus ``os.replace``; on GCS an
object upload is atomic by nature. :func:`write_bytes_if_generation` is the
compare-and-swap primitive the version store uses for its CURRENT pointer, and
:func:`exclusive_lock` the lock it holds around every change of CURRENT and every gc
deletion (a kernel flock locally, a leased lock object on gs://; see its docstring).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

GCS_SCHEME = "gs://"
_CAS_TOKEN = "twotower-cas-token"  # object metadata key naming the write that set the object


log = logging.getLogger(__name__)


class PreconditionFailed(RuntimeError):
    """A compare-and-swap lost: the object changed since it was read."""


class NotAFileError(OSError):
    """The path exists but is not a regular file (a folder, a FIFO, a device...)."""


class LockTimeout(RuntimeError):
    """Someone else held the lock for the whole wait. Nothing was changed; retrying later is safe."""


class LockLost(RuntimeError):
    """Our lease on a gs:// lock ran out and another holder took it over; stop the critical section."""


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
    """A process-wide google.cloud.storage Client (created on first use, never at import).

    Plain ``storage.Client()`` everywhere: with ``STORAGE_EMULATOR_HOST`` set the library
    itself talks to that host with anonymous credentials and no project, so no test
    credentials live here.
    """
    global _client
    if _client is None:
        from google.cloud import storage

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
        from google.api_core.exceptions import NotFound

        bucket, name = _split_gcs(path)
        if name and _blob(path).exists():
            return True
        # A "folder" exists when any object lives under it.
        prefix = name.rstrip("/") + "/" if name else ""
        try:
            return any(True for _ in gcs_client().list_blobs(bucket, prefix=prefix, max_results=1))
        except NotFound:  # no such bucket: nothing lives under the path
            return False
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
    write_local_atomically(path, lambda fh: fh.write(data))


def write_local_atomically(path: str, write) -> None:
    """Write a local file atomically from ``write(fh)`` (a binary file object: content larger
    than memory can be streamed in): a temp file beside it, fsync, rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        # mkstemp makes the file 0600; the file replaced (CURRENT, a manifest) must stay readable
        # by whoever reads a plain file here (a query service running as another user), so give
        # it the mode open() would: 0666 less the umask.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask: from /proc (Linux), else by setting and restoring it (no getter; the
    swap is visible to other threads for an instant, hence the /proc read first)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    return _local_generation(st)


def _local_generation(st: os.stat_result) -> int:
    # Every write goes through os.replace of a fresh temp file, so the inode changes on each
    # write even when the clock is too coarse to tell two mtimes apart.
    token = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}".encode()
    return int.from_bytes(hashlib.sha256(token).digest()[:8], "big") >> 1


def read_small(path: str, limit: int) -> tuple[Optional[bytes], int, int]:
    """Read a small object together with the generation of exactly the bytes read.

    Args:
        limit: the most bytes the caller accepts; a larger object is not downloaded.
    Returns:
        (data, size in bytes, generation); data is None when size > limit.
    Raises:
        FileNotFoundError: no such object / file.
        IsADirectoryError: the path is a folder (locally) or a prefix with objects under it (gs://).
        NotAFileError: locally, something other than a regular file (FIFO, socket, device).
    """
    if is_gcs(path):
        return _read_small_gcs(path, limit)
    # O_NONBLOCK: opening a FIFO must not hang; fstat then tells what we opened.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(errno.EINVAL, f"is not a regular file (mode {stat.filemode(st.st_mode)})", path)
        if st.st_size > limit:
            return None, st.st_size, _local_generation(st)
        # Writers replace the file (a new inode) rather than rewrite it, so these bytes are
        # exactly the ones the fstat generation describes.
        data = os.read(fd, limit + 1)
        return (None if len(data) > limit else data), max(st.st_size, len(data)), _local_generation(st)
    finally:
        os.close(fd)


def _read_small_gcs(path: str, limit: int) -> tuple[Optional[bytes], int, int]:
    from google.api_core.exceptions import NotFound
    from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed

    for _ in range(10):
        blob = _blob(path)
        try:
            blob.reload()
        except NotFound:
            if exists(path.rstrip("/") + "/"):
                raise IsADirectoryError(errno.EISDIR, "is a folder (objects live under it), not an object",
                                        path) from None
            raise FileNotFoundError(path) from None
        gen, size = int(blob.generation), int(blob.size or 0)
        if size > limit:
            return None, size, gen
        try:
            return blob.download_as_bytes(if_generation_match=gen), size, gen
        except (NotFound, GcsPreconditionFailed):
            continue  # replaced between the metadata read and the download: read again
    raise PreconditionFailed(f"{path}: changed on every one of 10 reads")


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


# --------------------------------------------------------------------------- the exclusive lock


@contextlib.contextmanager
def exclusive_lock(path: str, *, timeout_seconds: float, lease_seconds: float, purpose: str = ""):
    """Hold the lock named by ``path`` for the with-block; yields a handle with ``refresh()``.

    Local: a kernel ``flock`` on ``path`` (a file created once and never deleted). The kernel
    drops it when the holder's file is closed or the holder dies (even by SIGKILL), so a dead
    holder never wedges anyone. Waiters poll it without blocking in the kernel, so they can
    give up after ``timeout_seconds``.

    gs://: an object created with ``if_generation_match=0`` (exactly one creator wins) holding
    an owner token, who holds it and why, and a lease expiry ``lease_seconds`` ahead. Release
    deletes it with ``if_generation_match`` = the generation we wrote, so we never delete a
    lock someone took over. A lock whose lease has expired (its holder died or hung) is taken
    over by a rewrite matched to the generation we read, so two waiters cannot both take it.
    The holder calls ``refresh()`` before each change it makes under the lock: past a third of
    the lease it renews the lease (again generation-matched), and raises :class:`LockLost`
    if the lock is no longer ours. The lease is judged by wall clocks, so hosts' clocks must
    agree to well within ``lease_seconds``.

    Raises:
        LockTimeout: another holder kept the lock for the whole ``timeout_seconds``.
        LockLost: from ``refresh()``, see above.
    """
    lock = (_GcsLock if is_gcs(path) else _LocalLock)(path, timeout_seconds, lease_seconds, purpose)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def _holder_info(purpose: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
            "acquired_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _describe_holder(info: Optional[dict]) -> str:
    if not isinstance(info, dict):
        return "another process (holder unknown)"
    who = f"{str(info.get('host'))[:64]}:{str(info.get('pid'))[:12]}"
    why = str(info.get("purpose") or "")[:120]
    return f"{who}" + (f" ({why})" if why else "") + f" since {str(info.get('acquired_at'))[:32]}"


class _Backoff:
    """Jittered exponential sleeps until a deadline (seconds, monotonic)."""

    def __init__(self, timeout_seconds: float, first: float = 0.002, most: float = 0.05):
        self.deadline = time.monotonic() + timeout_seconds
        self.delay, self.most = first, most

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def sleep(self) -> None:
        time.sleep(min(self.delay * random.uniform(0.5, 1.5), max(0.0, self.deadline - time.monotonic())))
        self.delay = min(self.delay * 2, self.most)


class _LocalLock:
    def __init__(self, path: str, timeout_seconds: float, lease_seconds: float, purpose: str):
        self.path, self.timeout, self.purpose = path, timeout_seconds, purpose
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # A separate open() per acquisition: flock belongs to the open file, so threads of one
        # process exclude each other too. Python opens it close-on-exec: children never inherit it.
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        backoff = _Backoff(self.timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if backoff.expired():
                    holder = self._holder()
                    os.close(fd)
                    raise LockTimeout(f"{self.path} is held by {holder}; gave up after {self.timeout:g} s "
                                      f"(nothing was changed; retry)") from None
                backoff.sleep()
        self._fd = fd
        # Who holds it, for the message of a waiter that gives up; never read for correctness.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_info(self.purpose)).encode("utf-8"), 0)

    def _holder(self) -> str:
        try:
            with open(self.path, "rb") as fh:
                return _describe_holder(json.loads(fh.read(4096) or b"null"))
        except (OSError, ValueError):  # being rewritten by the next holder: the message is all it feeds
            return _describe_holder(None)

    def refresh(self) -> None:
        """A kernel lock has no lease: held until released or the holder dies."""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


class _GcsLock:
    def __init__(self, path: str, timeout_seconds: float, lease_seconds: float, purpose: str):
        if lease_seconds <= 0:
            raise ValueError(f"lock lease must be > 0 seconds, got {lease_seconds}")
        self.path, self.timeout, self.lease, self.purpose = path, timeout_seconds, lease_seconds, purpose
        self.owner = secrets.token_hex(16)
        self._generation: Optional[int] = None
        self._renewed = 0.0  # monotonic time of our last successful write of the lock
        self._seen: dict[int, float] = {}  # generation -> monotonic time we first saw it held

    def _body(self) -> tuple[bytes, str]:
        write_id = secrets.token_hex(8)  # tells our own retried write from someone else's
        doc = {"owner": self.owner, "write": write_id, "lease_seconds": self.lease,
               "expires_at": time.time() + self.lease, **_holder_info(self.purpose)}
        return json.dumps(doc, sort_keys=True).encode("utf-8"), write_id

    def _write(self, if_generation_match: int) -> tuple[bool, Optional[tuple[int, dict]]]:
        """One conditional write of the lock object.

        Returns:
            (True, None) when the lock is ours afterwards, else (False, what holds it now:
            see :meth:`_read`).
        """
        from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed

        body, write_id = self._body()
        blob = _blob(self.path)
        started = time.monotonic()
        try:
            blob.upload_from_string(body, if_generation_match=if_generation_match)
        except GcsPreconditionFailed:
            # The client retries a conditional upload whose reply was lost; the retry then
            # meets our own write. Only our write id in the object says we won.
            held = self._read()
            if held is None or held[1].get("write") != write_id:
                return False, held
            self._generation = held[0]
        else:
            self._generation = int(blob.generation)
        self._renewed = started
        return True, None

    def _read(self) -> Optional[tuple[int, dict]]:
        """(generation, parsed body or {}) of the lock object, or None when it is gone."""
        from google.api_core.exceptions import NotFound
        from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed

        blob = _blob(self.path)
        try:
            blob.reload()
            gen = int(blob.generation)
            data = blob.download_as_bytes(if_generation_match=gen)
        except (NotFound, GcsPreconditionFailed):
            return None  # released or replaced while we looked: the caller tries again
        try:
            info = json.loads(data[:4096].decode("utf-8"))
        except ValueError:
            info = {}
        return gen, info if isinstance(info, dict) else {}

    def _stale(self, gen: int, info: dict) -> bool:
        """Expired by the lease it states, or (no readable lease) unchanged for a whole lease here."""
        first_seen = self._seen.setdefault(gen, time.monotonic())
        expires_at = info.get("expires_at")
        if isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool):
            return time.time() > expires_at
        return time.monotonic() - first_seen > self.lease

    def acquire(self) -> None:
        backoff = _Backoff(self.timeout, first=0.005, most=0.2)
        while True:
            won, held = self._write(0)
            if won:
                return
            if held is not None:
                gen, info = held
                if self._stale(gen, info):
                    won, _ = self._write(gen)
                    if won:
                        log.warning("took over the expired lock %s from %s", self.path, _describe_holder(info))
                        return
                    continue  # someone else took it over or released it first: look again
            if backoff.expired():
                holder = _describe_holder(held[1]) if held else "another process"
                raise LockTimeout(f"{self.path} is held by {holder}; gave up after {self.timeout:g} s "
                                  f"(nothing was changed; retry)")
            if held is not None:
                backoff.sleep()

    def refresh(self) -> None:
        """Renew the lease once a third of it has passed; raise LockLost when it is no longer ours."""
        if time.monotonic() - self._renewed < self.lease / 3:
            return
        if self._generation is None or not self._write(self._generation)[0]:
            raise LockLost(f"{self.path}: our lease ({self.lease:g} s) ran out and another holder took the lock "
                           f"over; stopped before changing anything more")

    def release(self) -> None:
        from google.api_core.exceptions import NotFound
        from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed

        if self._generation is None:
            return
        try:
            _blob(self.path).delete(if_generation_match=self._generation)
        except NotFound:
            pass  # a retried delete whose first attempt went through
        except GcsPreconditionFailed:
            # Our lease ran out while we held the lock and someone took it over: what we did
            # is done, but the exclusion was not guaranteed for all of it. Not raised: the
            # caller's own outcome (or exception) is what it must report.
            log.error("lock %s was taken over before we released it (lease %g s exceeded)", self.path, self.lease)
        finally:
            self._generation = None


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


def remove_empty_dirs(prefix: str) -> None:
    """Remove the folders below and at ``prefix`` that hold no files (local only; gs:// has none).

    A folder that a racing writer refilled after its files were deleted is left in place:
    it still holds data somebody wrote, and whoever cleans up next sees it again.
    """
    if is_gcs(prefix) or not os.path.isdir(prefix):
        return
    for root, _, _ in os.walk(prefix, topdown=False):  # deepest first
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass  # removed meanwhile
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


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
    from google.api_core.exceptions import NotFound

    for path in list_files(src):
        rel = path[len(src.rstrip("/")) + 1:]
        target = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            _blob(path).download_to_filename(target)
        except NotFound:  # listed, then deleted before we read it: say so as locally
            raise FileNotFoundError(errno.ENOENT, "deleted while being downloaded", path) from None
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
