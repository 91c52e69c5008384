"""What the pipeline's exit handler records about every run, whatever its outcome.

The record goes to ``<store>/runs/<run_id>.json`` (see :meth:`core.store.VersionStore.record_run`;
its fields: :func:`run_records.records.final_record`): a failed run is then visible beside the
versions it did not replace. Recording never touches CURRENT: a failed run leaves the live
version exactly as it was.

The orchestrator's error for a failed run says only which task failed (kfp.local:
``Task exit-handler-1 failed.``; Vertex AI: ``The DAG failed because some tasks failed``).
The failing step's own message (``IngestError: items.csv: row 3: ...``) is in the
``stage_error.json`` it left in its artifact folder (components/runtime.py);
:func:`failure_message` picks it, and :func:`record_failure` puts it in the run's record
where the run's folder is reachable (``twotower run`` does so after a failed local run).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Mapping, Optional, Sequence

from core import storage
from run_records.records import final_record
from core.store import VersionStore
from core.contracts.files import STAGE_ERROR_FILE, STAGE_FILE


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
    record = final_record(store, run_id, state, error, data_date, job_name)
    store.record_run(run_id, record)
    return {**record, "run_id": run_id}


def failure_message(orchestrator_error: Optional[str], stage_errors: Sequence[Mapping]) -> Optional[str]:
    """The error a failed run's record should carry.

    Args:
        orchestrator_error: the runner's / orchestrator's message (may be empty).
        stage_errors: ``stage_error.json`` contents (``{"stage", "error", "seconds"}``),
            oldest first; a retried step can leave several, the newest ended the run.
    Returns:
        ``"<stage>: <error>"`` of the newest stage error that names one, else the
        orchestrator's message, else None.
    """
    for record in reversed(list(stage_errors)):
        if isinstance(record, Mapping) and record.get("error"):
            stage = record.get("stage")
            return f"{stage}: {record['error']}" if stage else str(record["error"])
    return orchestrator_error or None


def read_stage_errors(pipeline_root: str) -> list[dict]:
    """Every ``stage_error.json`` under a local pipeline root, oldest first (by mtime).

    A file beside a newer ``stage.json`` is skipped: that step failed once, then a retry
    succeeded in the same folder, so it did not end the run. Unreadable files are skipped
    too (a step killed while writing one).
    """
    found = []
    for path in glob.glob(os.path.join(pipeline_root, "**", STAGE_ERROR_FILE), recursive=True):
        try:
            mtime = os.path.getmtime(path)
            done = os.path.join(os.path.dirname(path), STAGE_FILE)
            if os.path.exists(done) and os.path.getmtime(done) >= mtime:
                continue
            with open(path, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found.append((mtime, path, record))
    return [record for _, _, record in sorted(found, key=lambda t: (t[0], t[1]))]


def record_failure(store_root: str, run_id: str, error: str, data_date: Optional[str],
                   state: str = "FAILED") -> dict:
    """Make the store's record of a failed run carry ``error`` (see :func:`failure_message`).

    The exit handler's record (published / live version, finish time, job name) is kept
    with only its ``error`` replaced; when there is none (the exit handler never ran, e.g.
    the run was interrupted) a full record is written with ``state``. A record saying the
    run SUCCEEDED is left alone. Never touches CURRENT.

    Returns:
        The run's record as it now stands.
    """
    store = VersionStore(store_root)
    path = store.run_record_path(run_id)
    try:
        existing = json.loads(storage.read_text(path))
    except (FileNotFoundError, ValueError):  # none yet, or damaged: written afresh
        existing = None
    if not isinstance(existing, dict):
        record = final_record(store, run_id, state, error, data_date)
    elif existing.get("state") == "SUCCEEDED" or existing.get("error") == error:
        return existing
    else:
        record = {k: v for k, v in existing.items() if k != "run_id"}
        record["error"] = error
    store.record_run(run_id, record)
    return {**record, "run_id": run_id}
