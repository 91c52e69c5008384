"""A run whose process is killed outright (SIGKILL) is closed by whoever looks next.

Such a run leaves ``runs/<run_id>/run.json`` saying running and no ``<store>/runs/<run_id>.json``
(its exit handler never ran). The owner recorded in run.json (pid, host, start time) lets a
later ``twotower run`` (pipelines/local_run.py) and ``twotower ui`` (ui/runs.py) tell that it
is gone, mark the run failed and write its store record once, never moving CURRENT.

The killed processes here are real: a small Python subprocess writes run.json with
local_run's own functions, then is SIGKILLed. Also here: the failing step's own error in the
store's run record (run_records/exit_handler.py), with no pipeline run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from run_records.records import close_dead_run, dead_owner_error, owner_alive, process_identity
from core.store import VersionStore
from tests.conftest import REPO

RUN_KEYS = {"run_id", "state", "error", "data_date", "job_name", "finished_at", "published_version",
            "live_version"}

OWNER = textwrap.dedent("""
    import sys, time
    from pipelines.local_run import new_run_record, write_run_record
    run_dir, run_id, store = sys.argv[1:4]
    write_run_record(run_dir, new_run_record(run_id, store, "2026-11-21", "abc123"))
    print("ready", flush=True)
    time.sleep(600)
""")


def start_owner(runs_dir, run_id: str, store: str) -> subprocess.Popen:
    """A process that starts a run as local_run does (same functions), then hangs."""
    run_dir = os.path.join(runs_dir, run_id)
    proc = subprocess.Popen([sys.executable, "-c", OWNER, run_dir, run_id, store], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: no zombie left holding the pid
    proc.stdout.close()


def make_store(root) -> tuple[VersionStore, str]:
    """A store with one live version (published by another run)."""
    store = VersionStore(str(root))
    staging = os.path.join(os.path.dirname(str(root)), "staging")
    os.makedirs(staging, exist_ok=True)
    with open(os.path.join(staging, "items.txt"), "w") as fh:
        fh.write("item1\n")
    version = store.new_version_id()
    store.publish(version, staging, {"lineage": {"run_id": "someone-else"}})
    return store, version


def read_json(path):
    with open(path) as fh:
        return json.load(fh)


def current_bytes(store: VersionStore) -> tuple[bytes, int]:
    st = os.stat(store.current_path)
    with open(store.current_path, "rb") as fh:
        return fh.read(), st.st_mtime_ns


def dead_owner() -> dict:
    """This process's identity with another start time: what a reused pid looks like."""
    return {**process_identity(), "started": "another-boot:1"}


def write_run(runs_dir, run_id: str, store: str, owner, status: str = "running") -> str:
    path = os.path.join(runs_dir, run_id)
    os.makedirs(path, exist_ok=True)
    record = {"run_id": run_id, "status": status, "started_at": "2026-11-22T08:00:00Z", "finished_at": None,
              "data_date": None, "data_fingerprint": None, "error": None, "failed_step": None,
              "published": None, "version": None, "store": store, "owner": owner}
    with open(os.path.join(path, "run.json"), "w") as fh:
        json.dump(record, fh)
    return path


# -- the killed run, seen by the UI and by the next run ------------------------------------------
def test_sigkilled_run_is_marked_failed_by_the_ui_and_recorded_in_the_store(tmp_path):
    from run_records.exit_handler import record_final_status
    from ui import runs

    runs_dir = tmp_path / "runs"
    store, live = make_store(tmp_path / "store")
    before = current_bytes(store)
    run_id = "20261122T080000Z-killed"
    proc = start_owner(runs_dir, run_id, store.root)
    pid = proc.pid
    try:
        alive = runs.list_runs(str(runs_dir))
        assert [(r["run_id"], r["status"]) for r in alive] == [(run_id, "running")]
        assert not os.path.exists(store.run_record_path(run_id))
    finally:
        sigkill(proc)

    listed = runs.list_runs(str(runs_dir))
    error = f"process {pid} ended without finishing the run (killed?)"
    assert [(r["run_id"], r["status"], r["error"]) for r in listed] == [(run_id, "failed", error)]
    assert listed[0]["problems"] == [] and listed[0]["finished_at"] is not None
    on_disk = read_json(runs_dir / run_id / "run.json")
    assert on_disk["status"] == "failed" and on_disk["error"] == error and on_disk["owner"]["pid"] == pid
    assert on_disk["published"] is False and on_disk["version"] is None

    record = read_json(store.run_record_path(run_id))
    # The same fields the exit handler writes for a run that did finish.
    assert set(record) == RUN_KEYS == set(record_final_status(store.root, "other-run", "FAILED", "x", None))
    assert record["state"] == "FAILED" and record["error"] == error and record["run_id"] == run_id
    assert record["data_date"] == "2026-11-21" and record["job_name"] is None
    assert record["published_version"] is None and record["live_version"] == live
    assert current_bytes(store) == before and store.current() == live

    # Read again (another page load): nothing changes any more.
    again = runs.list_runs(str(runs_dir))
    assert again[0]["status"] == "failed" and read_json(store.run_record_path(run_id)) == record


def test_the_next_twotower_run_closes_a_killed_run_before_starting(tmp_path, monkeypatch, capsys):
    import pipelines.pipeline
    from core.config import Config
    from pipelines.local_run import run_local

    runs_dir = tmp_path / "runs"
    store, live = make_store(tmp_path / "store")
    proc = start_owner(runs_dir, "20261122T070000Z-killed", store.root)
    sigkill(proc)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop()  # the sweep and this run's own run.json happen before the pipeline is built

    monkeypatch.setattr(pipelines.pipeline, "create_pipeline", stop)
    config = Config.model_validate({
        "data": {"path": str(tmp_path / "data")},
        "schema": {"query_key": "query", "query_features": [{"name": "query", "type": "text"}],
                   "item_features": [{"name": "title", "type": "text"}]},
        "publish": {"store": store.root}, "pipeline": {"runs_dir": str(runs_dir)}})
    with pytest.raises(Stop):
        run_local(config, run_id="20261122T090000Z-next")
    killed = read_json(runs_dir / "20261122T070000Z-killed" / "run.json")
    assert killed["status"] == "failed" and killed["error"] == f"process {proc.pid} ended without finishing " \
                                                                 f"the run (killed?)"
    assert "20261122T070000Z-killed marked failed" in capsys.readouterr().err
    assert read_json(store.run_record_path("20261122T070000Z-killed"))["state"] == "FAILED"
    mine = read_json(runs_dir / "20261122T090000Z-next" / "run.json")
    assert mine["status"] == "running" and mine["owner"] == process_identity() and mine["store"] == store.root
    assert store.current() == live


# -- telling the owner from a stranger ------------------------------------------------------------
def test_owner_identity_pid_reuse_other_hosts_and_old_records(tmp_path):
    me = process_identity()
    assert me["pid"] == os.getpid() and me["host"] == socket.gethostname() and me["started"]
    assert owner_alive(me) is True
    assert owner_alive(dead_owner()) is False           # our pid, but not the process that started the run
    assert owner_alive({**me, "host": "elsewhere"}) is None  # cannot tell from here: left alone
    assert owner_alive(None) is None and owner_alive({"pid": "7"}) is None

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    gone = {**me, "pid": int(done.stdout)}
    if not os.path.exists(f"/proc/{gone['pid']}"):  # (unless the pid was already given to another process)
        assert owner_alive(gone) is False
    assert dead_owner_error({"pid": 42}) == "process 42 ended without finishing the run (killed?)"

    runs_dir = tmp_path / "runs"
    for run_id, owner in (("alive", me), ("remote", {**me, "host": "elsewhere"}), ("old", None)):
        path = write_run(runs_dir, run_id, str(tmp_path / "store"), owner)
        assert close_dead_run(path) is None
        assert read_json(os.path.join(path, "run.json"))["status"] == "running"
    finished = write_run(runs_dir, "done", str(tmp_path / "store"), dead_owner(), status="succeeded")
    assert close_dead_run(finished) is None


def test_a_store_record_the_exit_handler_wrote_is_kept(tmp_path):
    """Killed after its exit handler ran (between the pipeline's end and run.json's last
    write): run.json is closed, the exit handler's record stands, and the publish is found."""
    store, live = make_store(tmp_path / "store")
    staging = tmp_path / "staging2"
    staging.mkdir()
    (staging / "items.txt").write_text("item2\n")
    mine = store.new_version_id()
    store.publish(mine, str(staging), {"lineage": {"run_id": "r-late"}})
    store.record_run("r-late", {"state": "SUCCEEDED", "error": None, "published_version": mine})
    written = read_json(store.run_record_path("r-late"))
    path = write_run(tmp_path / "runs", "r-late", store.root, dead_owner())
    closed = close_dead_run(path)
    assert closed["status"] == "failed" and closed["published"] is True and closed["version"] == mine
    assert read_json(store.run_record_path("r-late")) == written
    assert store.current() == mine


def test_a_store_that_cannot_be_written_leaves_the_run_to_retry(tmp_path):
    from ui import runs

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store should be")
    write_run(tmp_path / "runs", "r1", str(blocker), dead_owner())
    (overview,) = runs.list_runs(str(tmp_path / "runs"))
    assert overview["status"] == "running"
    assert any("could not be closed" in p for p in overview["problems"])
    blocker.unlink()
    (overview,) = runs.list_runs(str(tmp_path / "runs"))
    assert overview["status"] == "failed" and overview["problems"] == []
    assert VersionStore(str(blocker)).run_records()[0]["state"] == "FAILED"


# -- several repairers at once --------------------------------------------------------------------
REPAIRER = textwrap.dedent("""
    import os, sys, time
    from pipelines.local_run import close_abandoned_runs
    from ui import runs
    runs_dir, go = sys.argv[1:3]
    while not os.path.exists(go):
        time.sleep(0.005)
    for i in range(5):
        if i % 2:
            runs.list_runs(runs_dir)
        else:
            close_abandoned_runs(runs_dir)
""")


def test_concurrent_repairs_write_one_record_and_corrupt_nothing(tmp_path):
    runs_dir = tmp_path / "runs"
    store, live = make_store(tmp_path / "store")
    run_ids = [f"20261122T08000{i}Z-dead{i}" for i in range(8)]
    owner = dead_owner()  # this test process with another start time: dead to every repairer
    for run_id in run_ids:
        write_run(runs_dir, run_id, store.root, owner)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", REPAIRER, str(runs_dir), str(go)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.0)  # let them all import and wait on the start file
    go.write_text("go")
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert not any("Traceback" in e or "could not be closed" in e for e in errors), errors

    records = {r["run_id"]: r for r in store.run_records()}
    assert sorted(records) == sorted(run_ids)
    for run_id in run_ids:
        run = read_json(runs_dir / run_id / "run.json")
        assert run["status"] == "failed" and run["error"] == dead_owner_error(owner)
        assert records[run_id]["state"] == "FAILED" and records[run_id]["live_version"] == live
    leftovers = [n for n in os.listdir(os.path.join(store.root, "runs")) if n.startswith(".tmp-")]
    assert leftovers == [] and store.current() == live


def test_record_run_if_absent_lets_exactly_one_writer_win(tmp_path):
    from run_records.records import record_run_if_absent
    from core.storage import PreconditionFailed

    store = VersionStore(str(tmp_path / "store"))
    record_run_if_absent(store, "r1", {"state": "FAILED", "error": "first"})
    with pytest.raises(PreconditionFailed):
        record_run_if_absent(store, "r1", {"state": "FAILED", "error": "second"})
    store.record_run("r2", {"state": "FAILED", "error": "first"})
    # Byte for byte what record_run writes.
    with open(store.run_record_path("r1")) as a, open(store.run_record_path("r2")) as b:
        assert a.read().replace("r1", "r2") == b.read()
    assert [r["error"] for r in store.run_records()] == ["first", "first"]


# -- the failing step's own error in the store's record -------------------------------------------
def test_failure_message_prefers_the_failing_steps_own_error():
    from run_records.exit_handler import failure_message

    ingest = {"stage": "ingest", "error": "IngestError: items.csv: row 3: field 'price': not a number",
              "seconds": 0.1}
    assert failure_message("Task exit-handler-1 failed.", [ingest]) == \
        "ingest: IngestError: items.csv: row 3: field 'price': not a number"
    retried = [{"stage": "publish", "error": "OSError: first attempt", "seconds": 1.0},
               {"stage": "publish", "error": "PublishConflictError: CURRENT moved", "seconds": 1.0}]
    assert failure_message("Task exit-handler-1 failed.", retried) == "publish: PublishConflictError: CURRENT moved"
    assert failure_message("Task exit-handler-1 failed.", []) == "Task exit-handler-1 failed."
    assert failure_message("Task exit-handler-1 failed.", [{"stage": "train"}]) == "Task exit-handler-1 failed."
    assert failure_message("", []) is None and failure_message(None, []) is None


def test_read_stage_errors_in_a_pipeline_root(tmp_path):
    from run_records.exit_handler import read_stage_errors
    from pipelines.local_run import _failure

    root = tmp_path / "kfp" / "twotower-2026-11-22-08-00-00"

    def write(task, name, obj, mtime):
        folder = root / task / "out"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))
        os.utime(folder / name, (mtime, mtime))

    write("transform", "stage_error.json", {"stage": "transform", "error": "TransformError: older"}, 100)
    write("transform", "stage.json", {"stage": "transform", "seconds": 1, "result": {}}, 150)  # retry succeeded
    write("ingest", "stage_error.json", {"stage": "ingest", "error": "IngestError: items.csv: row 3: bad"}, 200)
    write("train", "stage_error.json", "{half written", 300)
    assert read_stage_errors(str(tmp_path / "kfp")) == [{"stage": "ingest",
                                                         "error": "IngestError: items.csv: row 3: bad"}]
    step, error, store_error = _failure(str(tmp_path / "kfp"), RuntimeError("Task exit-handler-1 failed."))
    assert (step, error, store_error) == ("ingest", "IngestError: items.csv: row 3: bad",
                                          "ingest: IngestError: items.csv: row 3: bad")
    assert _failure(str(tmp_path / "none"), RuntimeError("Inner task failed: 'train-op'")) == \
        ("train", "Inner task failed: 'train-op'", "Inner task failed: 'train-op'")


def test_record_failure_replaces_the_orchestrators_message_and_keeps_the_rest(tmp_path):
    from run_records.exit_handler import record_failure, record_final_status

    store, live = make_store(tmp_path / "store")
    first = record_final_status(store.root, "r1", "FAILED", "Task exit-handler-1 failed.", "2026-11-21", "job-1")
    got = record_failure(store.root, "r1", "ingest: IngestError: items.csv: row 3: bad", "2026-11-21")
    assert got == {**first, "error": "ingest: IngestError: items.csv: row 3: bad"}
    assert read_json(store.run_record_path("r1")) == got

    # No record at all (interrupted before the exit handler ran): a whole one, with the state given.
    cancelled = record_failure(store.root, "r2", "KeyboardInterrupt", None, state="CANCELLED")
    assert set(cancelled) == RUN_KEYS and cancelled["state"] == "CANCELLED" and cancelled["live_version"] == live
    # A run the exit handler saw succeed is not rewritten.
    store.record_run("r3", {"state": "SUCCEEDED", "error": None})
    assert record_failure(store.root, "r3", "x", None)["error"] is None
    assert store.current() == live


def test_a_successful_retry_removes_the_earlier_attempts_stage_error(tmp_path):
    from components.runtime import run_stage
    from core.config import Config

    class Artifact:
        path = str(tmp_path / "out")
        metadata: dict = {}

    config = Config.model_validate({
        "data": {"path": str(tmp_path)}, "publish": {"store": str(tmp_path / "store")},
        "schema": {"query_key": "query", "query_features": [{"name": "query", "type": "text"}],
                   "item_features": [{"name": "title", "type": "text"}]}})

    def fail(cfg, out):
        raise ValueError("first attempt")

    with pytest.raises(ValueError):
        run_stage("ingest", config, Artifact(), None, fail)
    assert read_json(tmp_path / "out" / "stage_error.json")["error"] == "ValueError: first attempt"
    run_stage("ingest", config, Artifact(), None, lambda cfg, out: {"rows": 3})
    assert not (tmp_path / "out" / "stage_error.json").exists()
    assert read_json(tmp_path / "out" / "stage.json")["result"] == {"rows": 3}
