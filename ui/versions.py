"""The version store as the UI shows it: every version with its headline figures, and rollback.

Reads go through :class:`core.store.VersionStore` (local folder or gs:// prefix), so the
page shows exactly what ``twotower index list`` / ``show`` would.
"""

from __future__ import annotations

from typing import Optional

from core.store import MANIFEST, PointerError, StoreError, VersionStore


class RollbackError(RuntimeError):
    """A rollback was refused (unknown, incomplete or corrupt version, a racing writer, a busy
    store lock); says why. CURRENT is unchanged."""


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _summarise(manifest: dict) -> dict:
    """The manifest fields a person compares versions by."""
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
    popularity = metrics.get("popularity") if isinstance(metrics.get("popularity"), dict) else {}
    index = manifest.get("index") if isinstance(manifest.get("index"), dict) else {}
    lineage = manifest.get("lineage") if isinstance(manifest.get("lineage"), dict) else {}
    gate = manifest.get("gate") if isinstance(manifest.get("gate"), dict) else {}
    serving = manifest.get("serving") if isinstance(manifest.get("serving"), dict) else {}
    return {
        "run_id": manifest.get("run_id") or lineage.get("run_id"),
        "metrics": {
            "recall_at_10": _number(metrics.get("recall_at_10")),
            "popularity_recall_at_10": _number(popularity.get("recall_at_10")),
            "ndcg_at_10": _number(metrics.get("ndcg_at_10")),
            "index_recall_at_10_vs_exact": _number(index.get("recall_at_10_vs_exact")),
        },
        "index_kind": index.get("kind"),
        "n_items": index.get("n_items"),
        "data_fingerprint": lineage.get("data_fingerprint"),
        "gate_reasons": [str(r) for r in gate.get("reasons", [])] if isinstance(gate.get("reasons"), list) else [],
        "query_key": serving.get("query_key"),
        "query_key_type": serving.get("query_key_type"),
        "display_fields": [str(f) for f in serving.get("display_fields", [])
                           if isinstance(f, str)] if isinstance(serving.get("display_fields"), list) else [],
    }


def list_versions(store: str) -> dict:
    """{"store", "live", "versions": [...]} with the newest version first.

    Each version: id, created, live, complete (has a manifest), problem (why its
    manifest could not be read, or None), plus :func:`_summarise`'s fields.
    ``pointer_problem`` says why CURRENT does not parse (``live`` is then None): the
    versions are still listed, so the operator can repair CURRENT with a rollback.
    Raises:
        StoreError: the store itself cannot be read.
    """
    vs = VersionStore(store)
    pointer_problem = None
    try:
        live = vs.current()
    except PointerError as exc:
        live, pointer_problem = None, str(exc)
    out = []
    for entry in reversed(vs.versions(strict_pointer=False)):  # oldest first there; pages show newest first
        row = {"id": entry["id"], "created": entry["created"], "live": entry["id"] == live,
               "complete": entry["has_manifest"], "problem": None}
        manifest: dict = {}
        if entry["has_manifest"]:
            try:
                manifest = vs.read_manifest(entry["id"])
            except StoreError as exc:  # damaged manifest: listed with the reason, not fatal
                row["problem"] = str(exc)
        else:
            row["problem"] = f"incomplete: no {MANIFEST} (a failed or in-flight publish)"
        row.update(_summarise(manifest))
        out.append(row)
    return {"store": store, "live": live, "versions": out, "pointer_problem": pointer_problem}


def rollback(store: str, version: str) -> str:
    """Point CURRENT at ``version`` after verifying its checksums; returns the new live id.

    The same path as ``twotower index rollback``: :meth:`core.store.VersionStore.rollback`
    swaps CURRENT under the store lock that gc also takes, so a gc running meanwhile either
    keeps ``version`` (it sees it live) or has already condemned it (the rollback is refused).
    Raises:
        RollbackError: with a one-line reason; CURRENT is unchanged.
    """
    vs = VersionStore(store)
    try:
        vs.version_path(version)  # an id with path syntax: refused before any read
        vs.rollback(version)
    except (StoreError, ValueError) as exc:  # ValueError: an invalid id
        raise RollbackError(f"rollback to {version} refused: {exc}") from None
    return vs.current() or version


def version_info(store: str, version: Optional[str]) -> Optional[dict]:
    """:func:`_summarise` of one version (None = the live one); None when there is none."""
    vs = VersionStore(store)
    try:
        version = version or vs.current()
    except PointerError:  # a damaged CURRENT names no version; the listing says why
        return None
    if not version:
        return None
    try:
        manifest = vs.read_manifest(version)
    except (StoreError, ValueError):
        return None
    return {"id": version, **_summarise(manifest)}
