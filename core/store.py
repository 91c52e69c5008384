"""The versioned model store: immutable versions plus one atomic CURRENT pointer.

Layout (a local folder or a gs:// prefix; one code path through :mod:`core.storage`)::

    <root>/versions/<version>/...          the published files (immutable)
    <root>/versions/<version>/manifest.json  files (sha256, size) + metrics + lineage
    <root>/CURRENT                         the live version id

Publishing uploads the files, writes ``manifest.json`` last (a version without a
manifest is incomplete: an orphan, or a publish in flight), verifies it, and only then
moves CURRENT with a compare-and-swap against the generation read when the publish
started. Two racing publishers therefore cannot both win, and a loser leaves CURRENT
exactly as the winner wrote it. Readers only ever follow CURRENT to complete versions.

Version ids are ``YYYYMMDDTHHMMSSffffffZ-<6 hex>`` (UTC), so lexical order is creation
order; gc relies on that to tell an orphan (older than the newest manifest) from a
publish still in flight.

It lives in core because the indexer (publish) writes versions and serving (load)
reads them, and stage packages never import each other; ``indexer.store`` re-exports it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
import tempfile
from typing import Optional

from core import storage

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
RUNS = "runs"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(RuntimeError):
    """Base class of version-store failures."""


class VersionExistsError(StoreError):
    """A publish targeted a version id that already has files (versions are immutable)."""


class VersionNotFoundError(StoreError, LookupError):
    """The version (or its manifest) does not exist."""


class IntegrityError(StoreError):
    """A version's files disagree with its manifest; the message names the file."""


class PublishConflictError(StoreError):
    """CURRENT moved while we published (another writer won the compare-and-swap)."""


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


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
        size = os.path.getsize(path)
        if size != files[rel]["size"]:
            raise IntegrityError(f"{label}: file {rel} has {size} bytes, manifest says {files[rel]['size']}")
        digest = storage.sha256_file(path)
        if digest != files[rel]["sha256"]:
            raise IntegrityError(f"{label}: file {rel} sha256 {digest[:12]}... does not match the manifest's "
                                 f"{files[rel]['sha256'][:12]}...")
    extra = sorted(actual - set(files))
    if extra:
        raise IntegrityError(f"{label}: file {extra[0]} is not listed in the manifest")


class VersionStore:
    """Immutable versions + atomic CURRENT pointer under ``root`` (local folder or gs:// prefix)."""

    def __init__(self, root: str):
        if not root:
            raise ValueError("VersionStore: root must be a folder or gs:// prefix, got an empty string")
        self.root = str(root).rstrip("/") if storage.is_gcs(root) else str(root)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def current_path(self) -> str:
        return storage.join(self.root, CURRENT)

    def version_path(self, version: str) -> str:
        _check_version_id(version)
        return storage.join(self.root, VERSIONS, version)

    def _manifest_path(self, version: str) -> str:
        return storage.join(self.version_path(version), MANIFEST)

    # -- ids -------------------------------------------------------------------------------------
    @staticmethod
    def new_version_id() -> str:
        """UTC timestamp to the microsecond + 6 random hex digits; sorts in creation order."""
        return f"{utc_now():%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"

    # -- reading -------------------------------------------------------------------------------
    def current(self) -> Optional[str]:
        """The live version id, or None when nothing was ever published."""
        try:
            text = storage.read_text(self.current_path).strip()
        except FileNotFoundError:
            return None
        return text or None

    def exists(self, version: str) -> bool:
        return storage.exists(self.version_path(version))

    def read_manifest(self, version: str) -> dict:
        """The version's manifest.

        Raises:
            VersionNotFoundError: no such version, or it has no manifest (incomplete).
            IntegrityError: the manifest is not valid JSON or lacks its "files" table.
        """
        path = self._manifest_path(version)  # an invalid id raises here, not as "invalid JSON" below
        try:
            manifest = json.loads(storage.read_text(path))
        except FileNotFoundError:
            state = "is incomplete (no manifest.json)" if self.exists(version) else "does not exist"
            raise VersionNotFoundError(f"{self.root}: version {version} {state}") from None
        except ValueError as exc:  # JSONDecodeError / UnicodeDecodeError: a damaged manifest
            raise IntegrityError(f"version {version}: file {MANIFEST} is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise IntegrityError(f"version {version}: file {MANIFEST} has no 'files' table")
        return manifest

    def versions(self) -> list[dict]:
        """Every version folder, oldest first: {"id", "created", "live", "has_manifest"}.

        ``created`` is the manifest's timestamp (None for a version without manifest).
        """
        live = self.current()
        out = []
        for vid in storage.list_children(storage.join(self.root, VERSIONS)):
            if not _VERSION_RE.match(vid):
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
        return storage.join(self.root, RUNS, f"{run_id}.json")

    def record_run(self, run_id: str, record: dict) -> str:
        """Write (atomically, replacing any earlier record of the same run) a run's record."""
        path = self.run_record_path(run_id)
        storage.write_text(path, json.dumps({**record, "run_id": run_id}, indent=2, sort_keys=True, default=str))
        return path

    def run_records(self) -> list[dict]:
        """Every run record, oldest run id first; unreadable records are reported, not fatal."""
        out = []
        for name in storage.list_children(storage.join(self.root, RUNS)):
            if not name.endswith(".json"):
                continue
            try:
                out.append(json.loads(storage.read_text(storage.join(self.root, RUNS, name))))
            except (OSError, ValueError) as exc:
                out.append({"run_id": name[:-len(".json")], "state": "UNREADABLE", "error": str(exc)})
        return sorted(out, key=lambda r: str(r.get("run_id")))

    def verify(self, version: str) -> dict:
        """Recompute every file's sha256 against the manifest; returns the manifest.

        Raises:
            VersionNotFoundError: no version / manifest.
            IntegrityError: naming the first missing, extra or corrupted file.
        """
        manifest = self.read_manifest(version)
        src = self.version_path(version)
        if storage.is_gcs(src):
            with tempfile.TemporaryDirectory(prefix="twotower-verify-") as tmp:
                storage.download_tree(src, tmp)
                _check_against(tmp, manifest["files"], f"version {version}")
        else:
            _check_against(src, manifest["files"], f"version {version}")
        return manifest

    def fetch_version(self, version: str, local_dir: str) -> str:
        """A verified local folder holding the version.

        A local store is verified in place and its own folder returned (no copy);
        a gs:// store is downloaded into ``local_dir/<version>`` first.
        """
        src = self.version_path(version)
        manifest = self.read_manifest(version)
        if not storage.is_gcs(src):
            _check_against(src, manifest["files"], f"version {version}")
            return src
        dest = os.path.join(local_dir, version)
        os.makedirs(dest, exist_ok=True)
        storage.download_tree(src, dest)
        _check_against(dest, manifest["files"], f"version {version} (downloaded to {dest})")
        return dest

    # -- writing -------------------------------------------------------------------------------
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
        """
        vdir = self.version_path(version)
        if not os.path.isdir(staging_dir):
            raise FileNotFoundError(f"publish: staging folder {staging_dir} does not exist")
        # Read the pointer's generation first: the CAS below must fail if anyone moves
        # CURRENT while we upload, even to a version older than ours.
        expected = storage.generation(self.current_path)
        if storage.exists(vdir):
            raise VersionExistsError(f"{self.root}: version {version} already exists; versions are immutable")
        files = _manifest_files(staging_dir)
        if MANIFEST in files:
            raise ValueError(f"publish: {staging_dir} already holds a {MANIFEST}; the store writes it")
        if not files:
            raise ValueError(f"publish: staging folder {staging_dir} is empty")
        storage.upload_tree(staging_dir, vdir)
        full = {**manifest, "version": version,
                "created": manifest.get("created") or utc_now().isoformat(timespec="seconds"),
                "files": files}
        # The manifest goes last: its presence is what marks the version complete.
        storage.write_text(self._manifest_path(version), json.dumps(full, indent=2, sort_keys=True))
        self.verify(version)
        try:
            storage.write_bytes_if_generation(self.current_path, version.encode("utf-8"), expected)
        except storage.PreconditionFailed as exc:
            raise PublishConflictError(
                f"{self.root}: CURRENT changed while publishing {version} (now {self.current()!r}); "
                f"{version} is stored and verified but NOT live") from exc

    def rollback(self, version: str) -> None:
        """Point CURRENT at an existing, verified version.

        Raises:
            VersionNotFoundError / IntegrityError: the target is missing or corrupt; CURRENT unchanged.
            PublishConflictError: CURRENT moved during the rollback.
        """
        expected = storage.generation(self.current_path)
        self.verify(version)
        try:
            storage.write_bytes_if_generation(self.current_path, version.encode("utf-8"), expected)
        except storage.PreconditionFailed as exc:
            raise PublishConflictError(f"{self.root}: CURRENT changed during rollback to {version}") from exc

    def gc(self, keep: int) -> list[str]:
        """Delete old versions; returns the ids deleted, oldest first.

        Keeps the newest ``keep`` complete versions and always the live one. Version
        folders without a manifest that are older than the newest complete version are
        orphans (failed publishes) and are deleted; newer ones may be publishes in flight
        and are kept.
        """
        if keep < 1:
            raise ValueError(f"gc: keep must be >= 1, got {keep}")
        listed = self.versions()
        live = self.current()
        complete = [v["id"] for v in listed if v["has_manifest"]]
        newest = complete[-1] if complete else None
        doomed = [vid for vid in complete[:-keep] if vid != live]
        doomed += [v["id"] for v in listed
                   if not v["has_manifest"] and newest is not None and v["id"] < newest and v["id"] != live]
        doomed = sorted(doomed)
        for vid in doomed:
            # Manifest first: an interrupted gc then leaves an incomplete version (collected by
            # the next gc), never one that looks complete but has files missing.
            storage.delete_file(self._manifest_path(vid))
            storage.delete_tree(self.version_path(vid))
        return doomed


def _check_version_id(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"invalid version id {version!r}: letters, digits, '.', '_' and '-' only")
