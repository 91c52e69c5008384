"""Run records: the store's record of a finished run, and closing local runs whose process died.

``<store>/runs/<run_id>.json`` (:meth:`core.store.VersionStore.record_run`) is normally
written by the pipeline's exit handler (``run_records/exit_handler.py``), with the fields of
:func:`final_record`. A local run's own ``<runs_dir>/<run_id>/run.json`` says
``"status": "running"`` from its start until :func:`pipelines.local_run.run_local` writes
the outcome. A process killed with SIGKILL (``kill -9``, the OOM killer) or on a machine
that lost power writes neither, so ``run.json`` also names its owner::

    "owner": {"pid": 4242, "host": "box", "pid_namespace": "pid:[4026531836]",
              "started": "<boot id>:<start time in clock ticks>"}

``started`` tells the owner from a later process that got the same pid; ``pid_namespace``
(Linux) keeps a container's pids from being read as the host's. :func:`close_dead_run`
(called by every later ``twotower run`` and by ``twotower ui`` when it reads runs) turns a
running run whose owner is gone into a failed one, and writes the store's record for it
when the exit handler never did. It never touches CURRENT.

Concurrency: every read-modify-write of a ``run.json`` holds an exclusive ``flock`` on
``run.json.lock`` beside it (the kernel drops it when its holder dies, even by SIGKILL), and
each write is an atomic replace; the store record is created with a compare-and-swap on
absence. Two UIs and a run repairing the same run at once therefore write one store record
and leave one valid ``run.json``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Callable, Optional

from core import storage
from core.contracts.files import RUN_FILE
from core.store import IntegrityError, VersionNotFoundError, VersionStore
from core.summary import dumps

#: Beside run.json: the lock file every read-modify-write of it holds (never deleted).
LOCK_SUFFIX = ".lock"
#: How long a writer of run.json waits for another one (each holds it for one read + write).
RUN_FILE_LOCK_SECONDS = 60.0


# -- the store's record of a run ----------------------------------------------------------------
def utc_stamp() -> str:
    """Now, as run records write it: ``2026-11-22T08:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def published_by(store: VersionStore, run_id: str) -> Optional[str]:
    """The version this run published, or None (newest first: a run publishes at most one)."""
    for entry in reversed(store.versions(strict_pointer=False)):  # which is live does not matter here
        if not entry["has_manifest"]:
            continue
        try:
            manifest = store.read_manifest(entry["id"])
        except (VersionNotFoundError, IntegrityError):
            continue
        if (manifest.get("lineage") or {}).get("run_id") == run_id:
            return entry["id"]
    return None


def final_record(store: VersionStore, run_id: str, state: str, error: Optional[str],
                 data_date: Optional[str], job_name: Optional[str] = None) -> dict:
    """The fields of ``<store>/runs/<run_id>.json`` (without ``run_id``, which record_run adds).

    Args:
        state: SUCCEEDED / FAILED / CANCELLED (the orchestrator's vocabulary).
        error: why it failed, or None.
        data_date: the partition the run covered (None: unpartitioned or unknown).
    """
    return {
        "state": state,
        "error": error or None,
        "data_date": data_date or None,
        "job_name": job_name or None,
        "finished_at": utc_stamp(),
        "published_version": published_by(store, run_id),
        "live_version": store.current(),
    }


def record_run_if_absent(store: VersionStore, run_id: str, record: dict) -> str:
    """Write the run's record only when it has none yet: a compare-and-swap on creation, so of
    several writers racing exactly one writes (the content and format of
    :meth:`core.store.VersionStore.record_run`).

    Raises:
        core.storage.PreconditionFailed: the run has a record already (or another writer is
            creating it); nothing was changed.
    """
    path = store.run_record_path(run_id)
    text = json.dumps({**record, "run_id": run_id}, indent=2, sort_keys=True, default=str)
    storage.write_bytes_if_generation(path, text.encode("utf-8"), None)
    return path


# -- who owns a local run -----------------------------------------------------------------------
def _proc_stat(pid: int) -> Optional[tuple[str, str]]:
    """(state letter, start time in clock ticks since boot) from /proc; None: no such process.

    Raises:
        OSError: no /proc here (not Linux).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        if not os.path.isdir("/proc/self"):
            raise OSError("no /proc") from None
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], fields[19]  # fields 3 (state) and 22 (starttime) of proc(5)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _ps(pid: int) -> Optional[tuple[str, str]]:
    """(state, start time) from ``ps`` (macOS / BSD, where there is no /proc); None: no such
    process or no ``ps`` to ask."""
    try:
        out = subprocess.run(["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    state, _, started = out.partition(" ")
    return state[:1], " ".join(started.split())


def _state_and_start(pid: int) -> Optional[tuple[str, Optional[str]]]:
    """(state letter, start token) of a live process, None when there is none.

    The start token is None when this platform cannot tell (then only the pid is compared).
    """
    try:
        stat = _proc_stat(pid)
    except OSError:  # not Linux
        ps = _ps(pid)
        if ps is not None:
            return ps
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # someone else's process: it exists
        return "?", None
    if stat is None:
        return None
    state, ticks = stat
    return state, f"{_boot_id()}:{ticks}"


def process_identity(pid: Optional[int] = None) -> dict:
    """``{"pid", "host", "pid_namespace", "started"}`` of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else int(pid)
    found = _state_and_start(pid)
    return {"pid": pid, "host": socket.gethostname(), "pid_namespace": _pid_namespace(),
            "started": None if found is None else found[1]}


def owner_alive(owner) -> Optional[bool]:
    """Whether the process that ``owner`` (a :func:`process_identity` dict) names still runs.

    Returns:
        True: it runs (or this platform cannot tell it from a reused pid, then any process
        with its pid counts); False: no process has its pid, the one that has it started at
        another time (the pid was reused), or it is a zombie (it exited, nobody reaped it);
        None: this machine cannot tell (no owner recorded, another host or pid namespace).
    """
    if not isinstance(owner, dict):
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if owner.get("host") != socket.gethostname():
        return None
    if owner.get("pid_namespace") != _pid_namespace():
        return None
    found = _state_and_start(pid)
    if found is None:
        return False
    state, started = found
    if state in ("Z", "X"):  # exited (zombie / dead): the run's process is over
        return False
    recorded = owner.get("started")
    if recorded is None or started is None:
        return True
    return started == recorded


def dead_owner_error(owner: dict) -> str:
    """The error a run whose owner died is recorded with."""
    return f"process {owner.get('pid')} ended without finishing the run (killed?)"


# -- run.json, read-modify-write under a lock ---------------------------------------------------
def update_run_file(path: str, change: Callable[[Optional[dict]], Optional[dict]]) -> Optional[dict]:
    """Apply ``change`` to the JSON object in ``path`` (a local run.json) under an exclusive lock.

    ``change`` gets the current content (None when the file is absent or not a JSON object)
    and returns the new content, or None to leave the file as it is. Every writer of run.json
    goes through here, so a repair can never overwrite a record written after it read one.

    Returns:
        What was written, or None when nothing was.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # The store's lock primitive (a kernel flock here): held for one small read and write,
    # dropped if we die.
    with storage.exclusive_lock(path + LOCK_SUFFIX, timeout_seconds=RUN_FILE_LOCK_SECONDS,
                                lease_seconds=RUN_FILE_LOCK_SECONDS, purpose=f"{RUN_FILE} update"):
        try:
            with open(path, encoding="utf-8") as fh:
                current = json.load(fh)
        except (FileNotFoundError, ValueError):
            current = None
        if not isinstance(current, dict):
            current = None
        new = change(current)
        if new is not None:
            storage.write_text(path, dumps(new))
        return new


def close_dead_run(run_dir: str) -> Optional[dict]:
    """Mark the run in ``run_dir`` failed when its run.json says running and its owner is gone.

    Also writes ``<store>/runs/<run_id>.json`` (the store named in run.json) with
    :func:`final_record`'s fields, state FAILED, when the run has no store record yet (a
    record the exit handler did write is kept). CURRENT is only read.

    Returns:
        The new run.json content, or None when the run was left as it was (finished, alive,
        or not judgeable from this machine).
    Raises:
        OSError, core.store.StoreError: the store could not be read or written; run.json is
        then left running, so a later call tries again.
    """
    path = os.path.join(run_dir, RUN_FILE)

    def close(record: Optional[dict]) -> Optional[dict]:
        if record is None or record.get("status") != "running" or owner_alive(record.get("owner")) is not False:
            return None
        run_id = str(record.get("run_id") or os.path.basename(os.path.normpath(run_dir)))
        error = dead_owner_error(record["owner"])
        published, version = None, None  # unknown without a store
        store_root = record.get("store")
        if isinstance(store_root, str) and store_root:
            store = VersionStore(store_root)
            # It may have published before it died (killed between publish and its exit handler).
            version = published_by(store, run_id)
            published = version is not None
            if not storage.exists(store.run_record_path(run_id)):
                try:
                    record_run_if_absent(store, run_id,
                                         final_record(store, run_id, "FAILED", error, record.get("data_date")))
                except storage.PreconditionFailed:
                    pass  # another repairer (or a late exit handler) wrote it first: theirs stands
        return {**record, "status": "failed", "finished_at": utc_stamp(), "error": error,
                "published": published, "version": version}

    return update_run_file(path, close)


def close_dead_runs(runs_dir: str) -> tuple[list[dict], list[str]]:
    """:func:`close_dead_run` for every run folder under ``runs_dir`` whose run.json says running.

    Returns:
        (the runs closed, as their new run.json content; one sentence per run that could not
        be closed, naming it and why).
    """
    closed: list[dict] = []
    problems: list[str] = []
    if not os.path.isdir(runs_dir):
        return closed, problems
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, RUN_FILE)
        if not _abandoned(path):
            continue
        try:
            record = close_dead_run(os.path.join(runs_dir, name))
        except (OSError, RuntimeError, ValueError) as exc:  # StoreError is a RuntimeError
            problems.append(f"run {name}: its process is gone but it could not be closed: "
                            f"{type(exc).__name__}: {exc}")
            continue
        if record is not None:
            closed.append(record)
    return closed, problems


def _abandoned(path: str) -> bool:
    """A cheap unlocked peek (the locked update decides): does run.json say running, with an
    owner that is gone? (Runs that are fine are then never locked, nor written to.)"""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("status") == "running"
            and owner_alive(record.get("owner")) is False)
