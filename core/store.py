"""The versioned model store: immutable versions plus one atomic CURRENT pointer.

Layout (a local folder or a gs:// prefix; one code path through :mod:`core.storage`)::

    <root>/versions/<version>/...          the published files (immutable)
    <root>/versions/<version>/manifest.json  files (sha256, size) + metrics + lineage
    <root>/CURRENT                         the live version id (exactly one id, see parse_current)
    <root>/store.lock                      the store lock (below)

Publishing uploads the files, writes ``manifest.json`` last (a version without a
manifest is incomplete: an orphan, or a publish in flight), verifies it, and only then
moves CURRENT with a compare-and-swap against the generation read when the publish
started. Two racing publishers therefore cannot both win, and a loser leaves CURRENT
exactly as the winner wrote it. Readers only ever follow CURRENT to complete versions.

Version ids are ``YYYYMMDDTHHMMSSffffffZ-<6 hex>`` (UTC), so lexical order is creation
order; gc relies on that to tell an orphan (older than the newest manifest) from a
publish still in flight.

Concurrency protocol
--------------------
Writers that run at the same time: publishers (a pipeline run, which runs gc right after
publishing), operators (``twotower index rollback`` / the UI's rollback, ``index gc``), on
any number of hosts. The store lock (:func:`core.storage.exclusive_lock` on
``<root>/store.lock``: a kernel flock locally, a leased lock object on gs://) is held, each
time briefly, by:

- a pointer writer (publish's swap, rollback) across "the target's manifest.json is still
  the one I verified" + the compare-and-swap of CURRENT;
- a publisher across "every file I uploaded is still there" + writing manifest.json;
- gc, once per doomed version v, across "CURRENT (re-read now) is not v, and v is still
  doomed" + condemning v: deleting its manifest (a complete version; the rest of its files
  are deleted after the lock is released) or deleting all its files (an orphan).

The full checksum verification runs outside the lock (it downloads the version on gs://);
the lock links its cheap re-check to the swap. Why no interleaving leaves CURRENT naming a
deleted version:

1. CURRENT only ever moves to a version whose manifest exists at the moment of the swap
   (checked under the lock) and was verified against its files before.
2. gc deletes a complete version's files only after deleting its manifest under the lock,
   having re-read CURRENT under that same lock. Either the swap to v came first (gc sees
   CURRENT = v and keeps v) or the manifest deletion did (the pointer writer finds no
   manifest and refuses; CURRENT is unchanged). A complete version's manifest is never
   written again, so its remaining files are deleted, outside the lock, from a version no
   writer will point at. Retention only grows more certain: newer publishes push v further
   out of the newest ``keep``, so "still doomed" needs only the CURRENT re-check.
3. An orphan (no manifest, older than the newest complete version: a failed publish, or a
   slow one a newer version overtook) has no manifest to delete, so gc deletes all its
   files under the lock, after re-checking it still has no manifest. Its publisher writes
   the manifest only under the lock and only if all its files are still there: either gc
   came first (files gone: the publisher raises :class:`VersionCollectedError`, writes no
   manifest, and the folder stays an orphan) or the manifest did (gc now sees a complete
   version and leaves it to rule 2).
4. The swap is still a compare-and-swap against the generation read when the publish or
   rollback started, so a rollback landing during a publish's upload makes that publish
   fail (:class:`PublishConflictError`) instead of silently undoing the rollback.
5. A holder that dies anywhere: locally the kernel drops its flock; on gs:// its lease
   expires and the next waiter takes the lock over (a generation-matched rewrite). Each
   step under the lock is one write (manifest write, manifest delete, CAS) or idempotent
   (an orphan's deletion, finished by the next gc), so a killed holder leaves the old state
   or the new one, and a restarted server always finds CURRENT naming a complete version.

A waiter gives up after ``lock_timeout_seconds`` with :class:`StoreBusyError` (nothing was
changed; retry). gc refuses to run while CURRENT does not parse (it could not tell which
version is live); rollback may overwrite a damaged CURRENT (how an operator repairs it),
but not one that is a folder.

It lives in core because the indexer (publish) writes versions and serving (load)
reads them, and stage packages never import each other; ``indexer.store`` re-exports it.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as _dt
import json
import os
import re
import secrets
import tempfile
from typing import Iterator, Optional

from core import storage
from core.contracts import files as names
from core.contracts.records import ContractError, VersionManifest, write_manifest

# The store's on-disk names are core.contracts'; these aliases are what callers have always used.
MANIFEST = names.MANIFEST_FILE
CURRENT = names.CURRENT_FILE
VERSIONS = names.VERSIONS_DIR
RUNS = names.RUNS_DIR
LOCK = names.STORE_LOCK_FILE
MAX_CURRENT_BYTES = 256  # a version id is at most 128 characters; anything past this is not one
DEFAULT_LOCK_TIMEOUT_SECONDS = 60.0
DEFAULT_LOCK_LEASE_SECONDS = 30.0  # gs:// only; every hold is a few requests, renewed on each change
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always fullmatch: "$" would allow "\n"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class StoreError(RuntimeError):
    """Base class of version-store failures."""


class StoreNotFoundError(StoreError):
    """The store root does not exist or is not a folder / prefix."""


class VersionExistsError(StoreError):
    """A publish targeted a version id that already has files (versions are immutable)."""


class VersionNotFoundError(StoreError, LookupError):
    """The version (or its manifest) does not exist."""


class IntegrityError(StoreError):
    """A version's files disagree with its manifest; the message names the file."""


class PointerError(StoreError):
    """CURRENT exists but does not hold exactly one valid version id (or is not a file)."""


class PublishConflictError(StoreError):
    """Another writer won: CURRENT moved while we published or rolled back. The target is not live."""


class VersionCollectedError(PublishConflictError):
    """gc collected the version being published (a newer version was published meanwhile)."""


class StoreBusyError(StoreError):
    """The store lock stayed held by another writer for the whole wait; nothing changed, retry."""


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _bounded(value, limit: int = 80) -> str:
    """A short printable rendering of a value from a file, for error messages."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return text + ("..." if len(value if isinstance(value, str) else repr(value)) > limit else "")


def parse_current(data: Optional[bytes], where: str, size: Optional[int] = None) -> str:
    """The version id CURRENT's bytes name: the one parser every reader of CURRENT uses.

    Args:
        data: CURRENT's content, or None when it was too large to read (then ``size``).
        where: CURRENT's path, for the message.
    Returns:
        Exactly one valid version id; one trailing newline is allowed.
    Raises:
        PointerError: naming CURRENT and what is wrong (bounded; never echoes the content
            beyond a short preview).
    """
    def bad(problem: str) -> PointerError:
        return PointerError(f"CURRENT ({where}) {problem}; it must hold exactly one version id "
                            f"(fix: twotower index rollback --to VERSION)")

    if data is None or len(data) > MAX_CURRENT_BYTES:
        raise bad(f"is {size if data is None else len(data)} bytes, more than the "
                  f"{MAX_CURRENT_BYTES} a version id can take")
    if data.startswith(codecs.BOM_UTF8):
        raise bad("starts with a UTF-8 byte-order mark (bytes EF BB BF) before the id")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})") from None
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise bad("is empty")
    if "\n" in text:
        raise bad(f"holds {text.count(chr(10)) + 1} lines")
    if not _VERSION_RE.fullmatch(text):
        raise bad(f"holds '{_bounded(text, 40)}', not a valid version id (letters, digits, '.', '_', '-'; "
                  f"at most 128)")
    return text


def _manifest_files(local_dir: str) -> dict[str, dict]:
    """rel path -> {"sha256", "size" (bytes)} for every file under a local folder."""
    out = {}
    for path in storage.list_files(local_dir):
        rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
        out[rel] = {"sha256": storage.sha256_file(path), "size": os.path.getsize(path)}
    return out


def _check_against(local_dir: str, files: dict[str, dict], label: str) -> None:
    """Raise IntegrityError naming the first file that is missing, extra or different."""
    actual = {os.path.relpath(p, local_dir).replace(os.sep, "/") for p in storage.list_files(local_dir)}
    actual.discard(MANIFEST)
    for rel in sorted(files):
        if rel not in actual:
            raise IntegrityError(f"{label}: file {rel} listed in the manifest is missing")
        path = os.path.join(local_dir, rel)
        try:
            size = os.path.getsize(path)
            digest = storage.sha256_file(path) if size == files[rel]["size"] else ""
        except FileNotFoundError:  # listed a moment ago: deleted while we checked it
            raise IntegrityError(f"{label}: file {rel} listed in the manifest vanished while being verified") from None
        if size != files[rel]["size"]:
            raise IntegrityError(f"{label}: file {rel} has {size} bytes, manifest says {files[rel]['size']}")
        if digest != files[rel]["sha256"]:
            raise IntegrityError(f"{label}: file {rel} sha256 {digest[:12]}... does not match the manifest's "
                                 f"{files[rel]['sha256'][:12]}...")
    extra = sorted(actual - set(files))
    if extra:
        raise IntegrityError(f"{label}: file {extra[0]} is not listed in the manifest")


def _safe_rel_path(rel) -> bool:
    """A manifest path must stay inside its version folder."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024 or rel == MANIFEST:
        return False
    if rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    sha, size = entry.get("sha256"), entry.get("size")
    return (isinstance(sha, str) and _SHA256_RE.fullmatch(sha) is not None
            and isinstance(size, int) and not isinstance(size, bool) and size >= 0)


class VersionStore:
    """Immutable versions + atomic CURRENT pointer under ``root`` (local folder or gs:// prefix).

    Args:
        lock_timeout_seconds: how long a writer waits for the store lock before
            :class:`StoreBusyError`.
        lock_lease_seconds: gs:// only: how long a lock object stays valid without renewal
            (a dead holder's lock is taken over after it).
    """

    def __init__(self, root: str, *, lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
                 lock_lease_seconds: float = DEFAULT_LOCK_LEASE_SECONDS):
        if not root:
            raise ValueError("VersionStore: root must be a folder or gs:// prefix, got an empty string")
        self.root = str(root).rstrip("/") if storage.is_gcs(root) else str(root)
        self.lock_timeout_seconds = lock_timeout_seconds
        self.lock_lease_seconds = lock_lease_seconds

    # -- paths ---------------------------------------------------------------------------------
    @property
    def current_path(self) -> str:
        return storage.join(self.root, CURRENT)

    @property
    def lock_path(self) -> str:
        return storage.join(self.root, LOCK)

    def version_path(self, version: str) -> str:
        _check_version_id(version)
        return storage.join(self.root, VERSIONS, version)

    def _manifest_path(self, version: str) -> str:
        return storage.join(self.version_path(version), MANIFEST)

    def check_root(self) -> None:
        """Raise StoreNotFoundError unless the root is an existing folder (or a gs:// prefix with objects)."""
        if storage.is_gcs(self.root):
            if not storage.exists(self.root):
                raise StoreNotFoundError(f"store {self.root} does not exist (no objects under it, or no such bucket)")
        elif not os.path.isdir(self.root):
            state = "is a file, not a store folder" if os.path.exists(self.root) else "does not exist"
            raise StoreNotFoundError(f"store {self.root} {state}")

    # -- ids -------------------------------------------------------------------------------------
    @staticmethod
    def new_version_id() -> str:
        """UTC timestamp to the microsecond + 6 random hex digits; sorts in creation order."""
        return f"{utc_now():%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"

    # -- the pointer -----------------------------------------------------------------------------
    def _read_pointer(self) -> tuple[Optional[bytes], int, Optional[int]]:
        """CURRENT's (bytes or None if too large, size, generation); (None, 0, None) when absent.

        Raises:
            PointerError: CURRENT is a folder or not a regular file.
            StoreNotFoundError: the store root is a file.
        """
        path = self.current_path
        try:
            return storage.read_small(path, MAX_CURRENT_BYTES)
        except FileNotFoundError:
            return None, 0, None
        except IsADirectoryError:
            raise PointerError(f"CURRENT ({path}) is a directory, not a file; remove it, then "
                               f"twotower index rollback --to VERSION") from None
        except storage.NotAFileError as exc:
            raise PointerError(f"CURRENT ({path}) {exc.strerror}; it must be a file holding one version id") from None
        except NotADirectoryError:
            raise StoreNotFoundError(f"store {self.root} is a file, not a store folder") from None

    def read_current(self) -> tuple[Optional[str], Optional[int]]:
        """(live version id, CURRENT's generation), both None when nothing was ever published.

        The id and the generation describe the same write of CURRENT.
        Raises:
            PointerError: CURRENT does not parse (see :func:`parse_current`) or is not a file.
        """
        data, size, gen = self._read_pointer()
        if gen is None:
            return None, None
        return parse_current(data, self.current_path, size), gen

    def current(self) -> Optional[str]:
        """The live version id, or None when nothing was ever published.

        Raises:
            PointerError: CURRENT exists but does not hold exactly one valid version id.
        """
        return self.read_current()[0]

    def _describe_current(self) -> str:
        try:
            return repr(self.current())
        except StoreError as exc:
            return f"unreadable ({exc})"

    # -- reading ---------------------------------------------------------------------------------
    def exists(self, version: str) -> bool:
        return storage.exists(self.version_path(version))

    def _manifest_bytes(self, version: str) -> bytes:
        path = self._manifest_path(version)  # an invalid id raises here, not as "invalid JSON" below
        try:
            return storage.read_bytes(path)
        except FileNotFoundError:
            state = f"is incomplete (no {MANIFEST})" if self.exists(version) else "does not exist"
            raise VersionNotFoundError(f"{self.root}: version {version} {state}") from None
        except IsADirectoryError:
            raise IntegrityError(f"version {version}: {MANIFEST} is a folder, not a file") from None

    @staticmethod
    def _parse_manifest(version: str, raw: bytes) -> dict:
        return VersionStore._parse_manifest_record(version, raw).to_dict()

    @staticmethod
    def _parse_manifest_record(version: str, raw: bytes) -> VersionManifest:
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # JSONDecodeError / UnicodeDecodeError: a damaged manifest
            raise IntegrityError(f"version {version}: file {MANIFEST} is not valid JSON ({_bounded(str(exc), 120)})") \
                from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise IntegrityError(f"version {version}: file {MANIFEST} has no 'files' table")
        for rel, entry in manifest["files"].items():
            if not _safe_rel_path(rel):
                raise IntegrityError(f"version {version}: file {MANIFEST} lists '{_bounded(rel)}', not a relative "
                                     f"path inside the version")
            if not _valid_entry(entry):
                raise IntegrityError(f"version {version}: file {_bounded(rel)} has manifest entry {_bounded(entry)}, "
                                     f"not an object with sha256 (64 hex digits) and size (bytes, an integer >= 0)")
        # The checks above keep their precise messages; the typed contract covers the rest
        # (a serving section or published_weights of the wrong shape).
        try:
            return VersionManifest.parse(manifest, f"version {version}: file {MANIFEST}")
        except ContractError as exc:
            raise IntegrityError(_bounded(str(exc), 400)) from None

    def read_manifest(self, version: str) -> dict:
        """The version's manifest, as a plain dict (see :meth:`manifest_record` for the typed one).

        Raises:
            VersionNotFoundError: no such version, or it has no manifest (incomplete).
            IntegrityError: the manifest is not valid JSON, or its "files" table is missing or
              holds an entry that is not {"sha256", "size"} (the message names the file), or
              another field does not match :class:`core.contracts.records.VersionManifest`.
        """
        return self.manifest_record(version).to_dict()

    def manifest_record(self, version: str) -> VersionManifest:
        """The version's manifest, validated (:class:`core.contracts.records.VersionManifest`).

        Raises: as :meth:`read_manifest`.
        """
        return self._parse_manifest_record(version, self._manifest_bytes(version))

    def versions(self, *, strict_pointer: bool = True) -> list[dict]:
        """Every version folder, oldest first: {"id", "created", "live", "has_manifest"}.

        ``created`` is the manifest's timestamp (None for a version without manifest).
        Args:
            strict_pointer: when False, a damaged CURRENT marks no version live instead of
              raising (to list what an operator can roll back to).
        Raises:
            PointerError: CURRENT does not parse (unless ``strict_pointer`` is False).
        """
        try:
            live = self.current()
        except PointerError:
            if strict_pointer:
                raise
            live = None
        return self._list_versions(live)

    def _list_versions(self, live: Optional[str]) -> list[dict]:
        out = []
        for vid in storage.list_children(storage.join(self.root, VERSIONS)):
            if not _VERSION_RE.fullmatch(vid):
                continue  # not ours (e.g. a stray temp file); never touched by gc either
            try:
                manifest = self.read_manifest(vid)
            except VersionNotFoundError:
                manifest = None
            except IntegrityError:  # a damaged manifest: listed (verify/rollback name the fault), not fatal
                manifest = {}
            out.append({"id": vid, "created": manifest.get("created") if manifest else None,
                        "live": vid == live, "has_manifest": manifest is not None})
        return sorted(out, key=lambda v: v["id"])

    # -- run records -----------------------------------------------------------------------------
    # Every pipeline run, published or not, leaves <root>/runs/<run_id>.json (written by the
    # pipeline's exit handler): the history of what was tried, beside what was published.
    def run_record_path(self, run_id: str) -> str:
        _check_version_id(run_id)
        return storage.join(self.root, names.run_record_file(run_id))

    def record_run(self, run_id: str, record: dict) -> str:
        """Write (atomically, replacing any earlier record of the same run) a run's record."""
        path = self.run_record_path(run_id)
        storage.write_text(path, json.dumps({**record, "run_id": run_id}, indent=2, sort_keys=True, default=str))
        return path

    def run_records(self) -> list[dict]:
        """Every run record, oldest run id first; unreadable records are reported, not fatal."""
        out = []
        for name in storage.list_children(storage.join(self.root, RUNS)):
            if not name.endswith(names.JSON_SUFFIX):
                continue
            try:
                out.append(json.loads(storage.read_text(storage.join(self.root, RUNS, name))))
            except (OSError, ValueError) as exc:
                out.append({"run_id": name[:-len(names.JSON_SUFFIX)], "state": "UNREADABLE", "error": str(exc)})
        return sorted(out, key=lambda r: str(r.get("run_id")))

    # -- verification ----------------------------------------------------------------------------
    def _verify(self, version: str, local_dir: Optional[str] = None) -> tuple[dict, bytes, str]:
        """Check every file against the manifest; (manifest, manifest bytes, checked local folder).

        A local store is checked in place; a gs:// one is downloaded into ``local_dir``
        (a temporary folder when None, removed before returning: the folder is then "").
        """
        raw = self._manifest_bytes(version)
        manifest = self._parse_manifest(version, raw)
        src = self.version_path(version)
        label = f"version {version}"
        if not storage.is_gcs(src):
            _check_against(src, manifest["files"], label)
            return manifest, raw, src
        with contextlib.ExitStack() as stack:
            dest = local_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="twotower-verify-"))
            try:
                storage.download_tree(src, dest)
            except FileNotFoundError as exc:
                rel = str(exc.filename or "")[len(src) + 1:] or "?"
                raise IntegrityError(f"{label}: file {rel} vanished while being verified") from None
            _check_against(dest, manifest["files"], label if local_dir is None else f"{label} (downloaded to {dest})")
        return manifest, raw, dest if local_dir else ""

    def verify(self, version: str) -> dict:
        """Recompute every file's sha256 against the manifest; returns the manifest.

        Raises:
            VersionNotFoundError: no version / manifest.
            IntegrityError: naming the first missing, extra or corrupted file.
        """
        return self._verify(version)[0]

    def fetch_version(self, version: str, local_dir: str) -> str:
        """A verified local folder holding the version.

        A local store is verified in place and its own folder returned (no copy);
        a gs:// store is downloaded into ``local_dir/<version>`` first.
        """
        if not storage.is_gcs(self.root):
            return self._verify(version)[2]
        dest = os.path.join(local_dir, version)
        os.makedirs(dest, exist_ok=True)
        return self._verify(version, dest)[2]

    # -- the lock --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, purpose: str) -> Iterator:
        """Hold the store lock (see the module doc); its handle's refresh() goes before each change."""
        try:
            with storage.exclusive_lock(self.lock_path, timeout_seconds=self.lock_timeout_seconds,
                                        lease_seconds=self.lock_lease_seconds, purpose=purpose) as lock:
                yield lock
        except storage.LockTimeout as exc:
            raise StoreBusyError(f"store {self.root} is busy ({purpose}): {exc}") from None
        except storage.LockLost as exc:
            raise StoreBusyError(f"store {self.root}: lost the store lock during {purpose}: {exc}") from None

    def _require_manifest(self, version: str, verified: bytes, error: type[StoreError], outcome: str) -> None:
        """Under the lock: the manifest must still be the one whose files were verified."""
        try:
            now = storage.read_bytes(self._manifest_path(version))
        except FileNotFoundError:
            now = None
        if now != verified:
            state = "was deleted (gc)" if now is None else "changed"
            raise error(f"{self.root}: version {version}'s {MANIFEST} {state} after it was verified; {outcome}")

    def _swap(self, version: str, expected: Optional[int], conflict: str) -> None:
        """Compare-and-swap CURRENT to ``version`` (call under the lock)."""
        try:
            storage.write_bytes_if_generation(self.current_path, version.encode("utf-8"), expected)
        except storage.PreconditionFailed as exc:
            raise PublishConflictError(f"{self.root}: CURRENT changed {conflict} (now {self._describe_current()})") \
                from exc

    # -- writing ---------------------------------------------------------------------------------
    def publish(self, version: str, staging_dir: str, manifest: dict) -> None:
        """Upload ``staging_dir`` as ``version``, write its manifest, then make it live.

        Args:
            version: a new id (see :meth:`new_version_id`).
            staging_dir: local folder with the files to publish (must not hold manifest.json).
            manifest: metrics, lineage etc.; "version", "files" and "created" are filled in
              here ("created" kept if given).
        Raises:
            VersionExistsError: the version already has files; nothing is written.
            IntegrityError: the uploaded copy does not match the staged files.
            PublishConflictError: CURRENT moved since this publish started; the version
              is complete and verified but not live, and CURRENT is left as the winner wrote it.
            VersionCollectedError: gc deleted the version while it was published (a newer
              version overtook it); it is not live.
            StoreBusyError: the store lock stayed held; nothing was made live.
        """
        vdir = self.version_path(version)
        if not os.path.isdir(staging_dir):
            raise FileNotFoundError(f"publish: staging folder {staging_dir} does not exist")
        # Read the pointer's generation first: the CAS below must fail if anyone moves
        # CURRENT while we upload, even to a version older than ours.
        expected = self._read_pointer()[2]
        if storage.exists(vdir):
            raise VersionExistsError(f"{self.root}: version {version} already exists; versions are immutable")
        files = _manifest_files(staging_dir)
        if MANIFEST in files:
            raise ValueError(f"publish: {staging_dir} already holds a {MANIFEST}; the store writes it")
        if not files:
            raise ValueError(f"publish: staging folder {staging_dir} is empty")
        full = {**manifest, "version": version,
                "created": manifest.get("created") or utc_now().isoformat(timespec="seconds"),
                "files": files}
        # A manifest that breaks the contract fails here, before anything is uploaded.
        VersionManifest.parse(full, f"publish {version}: {MANIFEST}")
        self._upload(version, staging_dir, vdir)
        with self._locked(f"publish {version}: write {MANIFEST}") as lock:
            self._require_uploaded(version, files)
            lock.refresh()
            # The manifest goes last: its presence is what marks the version complete.
            write_manifest(self._manifest_path(version), full)
        verified = self._verified_own(version)
        with self._locked(f"publish {version}: move CURRENT") as lock:
            self._require_manifest(version, verified, VersionCollectedError,
                                   "a newer version was published and gc collected this one; it is NOT live")
            lock.refresh()
            self._swap(version, expected, f"while publishing {version}; {version} is stored and verified but NOT live")

    def _verified_own(self, version: str) -> bytes:
        """The publisher's check of what it uploaded; the verified manifest's bytes.

        Raises:
            VersionCollectedError: gc condemned the version meanwhile (its manifest is gone:
              gc deletes that first), which is why the check failed.
            IntegrityError: the upload is damaged.
        """
        try:
            return self._verify(version)[1]
        except (VersionNotFoundError, IntegrityError) as exc:
            if storage.exists(self._manifest_path(version)):
                raise
            raise VersionCollectedError(f"{self.root}: version {version} was collected by gc while its publish "
                                        f"verified it (a newer version was published meanwhile); it is not live") \
                from exc

    def _upload(self, version: str, staging_dir: str, vdir: str) -> None:
        try:
            storage.upload_tree(staging_dir, vdir)
        except FileNotFoundError as exc:
            # Locally, gc removing the (manifest-less, so orphan-looking) folder under us
            # shows up as a missing destination.
            if not str(exc.filename or "").startswith(vdir):
                raise
            raise VersionCollectedError(f"{self.root}: version {version}'s folder was deleted while uploading "
                                        f"(gc took it for an orphan: a newer version was published meanwhile); "
                                        f"it is not live") from exc

    def _require_uploaded(self, version: str, files: dict[str, dict]) -> None:
        """Under the lock: every staged file must still be in the version folder."""
        vdir = self.version_path(version)
        present = {path[len(vdir):].lstrip("/").replace(os.sep, "/") for path in storage.list_files(vdir)}
        missing = sorted(set(files) - present)
        if missing:
            raise VersionCollectedError(f"{self.root}: version {version} lost {len(missing)} file(s) "
                                        f"(e.g. {missing[0]}) while uploading: gc took it for an orphan because "
                                        f"a newer version was published meanwhile; it is not live")

    def rollback(self, version: str) -> None:
        """Point CURRENT at an existing, verified version.

        A CURRENT whose content is damaged (see :func:`parse_current`) is overwritten: this
        is how an operator repairs it.
        Raises:
            VersionNotFoundError / IntegrityError: the target is missing, incomplete or
              corrupt, or gc deleted it meanwhile; CURRENT unchanged.
            PointerError: CURRENT is a folder (not overwritten).
            PublishConflictError: CURRENT moved during the rollback.
            StoreBusyError: the store lock stayed held; CURRENT unchanged.
        """
        self.version_path(version)  # an invalid id: ValueError before anything is read
        expected = self._read_pointer()[2]
        verified = self._verify(version)[1]
        with self._locked(f"rollback to {version}") as lock:
            self._require_manifest(version, verified, VersionNotFoundError, "CURRENT unchanged")
            lock.refresh()
            self._swap(version, expected, f"during rollback to {version}")

    def gc(self, keep: int) -> list[str]:
        """Delete old versions; returns the ids deleted, oldest first.

        Keeps the newest ``keep`` complete versions and always the live one. Version
        folders without a manifest that are older than the newest complete version are
        orphans (failed publishes) and are deleted; newer ones may be publishes in flight
        and are kept. Each deletion re-checks CURRENT under the store lock (module doc).
        Raises:
            PointerError: CURRENT does not parse; nothing is deleted.
            StoreBusyError: the store lock stayed held; what was deleted before stays deleted.
        """
        if keep < 1:
            raise ValueError(f"gc: keep must be >= 1, got {keep}")
        live = self._live_for_gc()
        listed = self._list_versions(live)
        complete = [v["id"] for v in listed if v["has_manifest"]]
        newest = complete[-1] if complete else None
        doomed = [(vid, False) for vid in complete[:-keep] if vid != live]
        doomed += [(v["id"], True) for v in listed
                   if not v["has_manifest"] and newest is not None and v["id"] < newest and v["id"] != live]
        deleted = []
        for vid, orphan in sorted(doomed):
            if (self._condemn_orphan if orphan else self._condemn_complete)(vid):
                deleted.append(vid)
        return deleted

    def _live_for_gc(self) -> Optional[str]:
        try:
            return self.current()
        except PointerError as exc:
            raise PointerError(f"gc refused to run: it cannot tell the live version: {exc}") from None

    def _condemn_complete(self, version: str) -> bool:
        """Delete a complete, doomed version unless it became live; True if this call deleted it."""
        manifest = self._manifest_path(version)
        with self._locked(f"gc {version}") as lock:
            if self._live_for_gc() == version:
                return False  # rolled back to since the listing
            if not storage.exists(manifest):
                return False  # another gc condemned it first and deletes its files
            lock.refresh()
            # Manifest first: from here on no pointer writer accepts the version, and an
            # interrupted gc leaves an incomplete version (collected by the next gc), never
            # one that looks complete but has files missing.
            storage.delete_file(manifest)
        self._delete_files(version)
        return True

    def _condemn_orphan(self, version: str) -> bool:
        """Delete a manifest-less folder older than the newest complete version, under the lock."""
        with self._locked(f"gc orphan {version}") as lock:
            if self._live_for_gc() == version:
                return False  # CURRENT hand-pointed at it: never delete what CURRENT names
            if storage.exists(self._manifest_path(version)):
                return False  # a slow publish completed it since the listing: no longer an orphan
            self._delete_files(version, lock)
        return True

    def _delete_files(self, version: str, lock=None) -> None:
        """Delete every file of the version (renewing ``lock`` as it goes), then its empty folders."""
        vdir = self.version_path(version)
        for path in storage.list_files(vdir):
            if lock is not None:
                lock.refresh()
            storage.delete_file(path)
        storage.remove_empty_dirs(vdir)


def _check_version_id(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        shown = repr(version)
        shown = shown if len(shown) <= 80 else shown[:80] + "..."
        raise ValueError(f"invalid version id {shown}: letters, digits, '.', '_' and '-' only")
