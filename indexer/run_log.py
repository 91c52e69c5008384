"""What the pipeline's exit handler records about every run, whatever its outcome.

The record goes to ``<store>/runs/<run_id>.json`` (see :meth:`core.store.VersionStore.record_run`):
a failed run is then visible beside the versions it did not replace. Recording never
touches CURRENT: a failed run leaves the live version exactly as it was.
"""

from __future__ import annotations

import time
from typing import Optional

from core.store import IntegrityError, VersionNotFoundError, VersionStore


def published_by(store: VersionStore, run_id: str) -> Optional[str]:
    """The version this run published, or None (newest first: a run publishes at most one)."""
    for entry in reversed(store.versions()):
        if not entry["has_manifest"]:
            continue
        try:
            manifest = store.read_manifest(entry["id"])
        except (VersionNotFoundError, IntegrityError):
            continue
        if (manifest.get("lineage") or {}).get("run_id") == run_id:
            return entry["id"]
    return None


def record_final_status(store_root: str, run_id: str, state: str, error: Optional[str],
                        data_date: Optional[str], job_name: Optional[str] = None) -> dict:
    """Write the run's record and return it.

    Args:
        state: the orchestrator's final state of the run's main group
            (SUCCEEDED / FAILED / CANCELLED).
        error: the orchestrator's error message, when it failed.
        data_date: the partition the run covered (None: unpartitioned or unknown).
    """
    store = VersionStore(store_root)
    record = {
        "state": state,
        "error": error or None,
        "data_date": data_date or None,
        "job_name": job_name or None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "published_version": published_by(store, run_id),
        "live_version": store.current(),
    }
    store.record_run(run_id, record)
    return {**record, "run_id": run_id}
