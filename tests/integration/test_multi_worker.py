"""train.distribute=multi_worker for real: two worker processes on 127.0.0.1 under
MultiWorkerMirroredStrategy, with the TF_CONFIG a cluster (Vertex AI) sets on each replica.

The planted data of tests/unit/trainer/test_trainer.py (144 train rows, batch 16: 9 steps an epoch).
Both workers must finish, only the chief (worker 0, the cluster has no "chief" task) writes
the output folder, both report 2 replicas in sync, and the two-worker model validates about
as well as a one-process run on the same data, config and seed.

Why the two runs are comparable: the global batch is train.batch_size in both (each of the
two replicas trains on its half, 8 rows, of the same seeded global batch of 16; TFRS's summed
loss is not scaled, so the all-reduced gradient is that of the global batch's summed loss).
What differs is that in-batch negatives are per replica (7 other rows instead of 15), and
float summation order; so the two-worker recall is held to a margin, not to equality.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests.support.trainer_data import make_config, write_transformed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_EPOCHS = 3
#: Wall-clock bound for the two workers together (2 shared CPU cores; a run takes well under it).
TIMEOUT_S = 420
#: The two-worker best validation recall@10 must reach this share of the one-process one, and
#: lose at most MARGIN absolute: halving the in-batch negatives (15 -> 7 per row) on 48 items in
#: 4 clearly separated categories slows learning a little, it does not change what is learned;
#: a broken setup (unsharded or doubled input, unsynchronised replicas, a worker training its own
#: model) trains on the wrong rows or diverges and lands far below.
RATIO = 0.8
MARGIN = 0.15

WORKER = """
import json, os, sys
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
from tests.support.trainer_data import make_config
from trainer.train import train_model
root, out, train = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if os.environ.get("TWOTOWER_TEST_STREAMED"):
    train["in_memory_max_mb"] = 0  # the streamed-TFRecords input of splits over train.in_memory_max_mb
summary = train_model(make_config(root, **train), root, out)
print("[worker-result] " + json.dumps({"num_replicas": summary["num_replicas"], "input": summary["input"],
                                       "best_val_recall_at_10": summary["best_val_recall_at_10"]}), flush=True)
"""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _train_args(distribute: str) -> dict:
    return {"n_epochs": N_EPOCHS, "distribute": distribute}  # device auto: CUDA_VISIBLE_DEVICES="" below


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("train_input", ["in_memory", "streamed"])
def test_two_worker_run_trains_like_one_process(tmp_path, train_input):
    """in_memory: every worker holds all rows and takes its replica's slice of each global
    batch (the same rows as one process); streamed: each worker reads every other record."""
    root = tmp_path / "transformed"
    write_transformed(root, make_config(str(root)))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TWOTOWER_TEST_STREAMED")}
    if train_input == "streamed":
        env["TWOTOWER_TEST_STREAMED"] = "1"
    env.update({"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})

    # The one-process reference (its own process too, so neither run inherits the other's TF state).
    single_out = tmp_path / "single"
    start = time.perf_counter()
    single = subprocess.run([sys.executable, "-c", WORKER, str(root), str(single_out), json.dumps(_train_args("none"))],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    single_seconds = time.perf_counter() - start
    assert single.returncode == 0, single.stderr[-3000:]
    single_summary = json.loads((single_out / "training.json").read_text())
    assert single_summary["num_replicas"] == 1 and single_summary["input"] == train_input

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    outs = [tmp_path / f"worker{i}" for i in range(2)]
    procs = []
    start = time.perf_counter()
    for i, out in enumerate(outs):
        worker_env = {**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(out), json.dumps(_train_args("multi_worker"))],
            cwd=REPO, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    logs = []
    try:
        for proc in procs:
            remaining = max(1.0, TIMEOUT_S - (time.perf_counter() - start))
            logs.append(proc.communicate(timeout=remaining))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        details = [p.communicate()[1][-2000:] for p in procs]
        pytest.fail(f"the two workers did not finish within {TIMEOUT_S}s: {details}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    multi_seconds = time.perf_counter() - start
    for i, (proc, (out, err)) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"worker {i} exited {proc.returncode}:\n{err[-4000:]}"

    # Both really took part: each logged its own task index and 2 replicas in sync.
    results = []
    for i, (out, _err) in enumerate(logs):
        assert f"[train] multi_worker: task worker:{i}, 2 workers, 2 replicas in sync" in out, out[-2000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("[worker-result] "))
        results.append(json.loads(line.split(" ", 1)[1]))
    assert [r["num_replicas"] for r in results] == [2, 2]
    assert [r["input"] for r in results] == [train_input] * 2
    assert "chief, writing" in logs[0][0] and "not the chief" in logs[1][0]

    # Only the chief wrote the output folder; the worker's folder got nothing (its temporary one is gone).
    chief = outs[0]
    for name in ("query_tower", "item_tower", "training.json", "tensorboard", "checkpoints"):
        assert (chief / name).exists(), name
    assert not outs[1].exists() or not any(outs[1].iterdir())
    summary = json.loads((chief / "training.json").read_text())
    assert summary["num_replicas"] == 2 and summary["distribute"] == "multi_worker"
    assert summary["batch_size"] == single_summary["batch_size"] == 16  # the same global batch
    assert summary["n_train"] == single_summary["n_train"]
    assert len(summary["history"]) == len(single_summary["history"]) or summary["stopped_early"]
    # The workers hold the same (all-reduced) weights, so they validate alike.
    assert results[0]["best_val_recall_at_10"] == pytest.approx(results[1]["best_val_recall_at_10"], abs=1e-6)

    one, two = single_summary["best_val_recall_at_10"], summary["best_val_recall_at_10"]
    curves = {name: [(round(h["loss"], 3), round(h["val_recall_at_10"], 4)) for h in run["history"]]
              for name, run in (("one process", single_summary), ("two workers", summary))}
    print(f"\n[multi-worker, {train_input}] best val recall@10: one process {one:.4f} ({single_seconds:.0f}s), "
          f"two workers {two:.4f} ({multi_seconds:.0f}s); (loss, val recall@10) per epoch: {curves}")
    assert two >= RATIO * one and two >= one - MARGIN, (one, two)


@pytest.mark.integration
def test_replica_slices_make_up_the_global_batch():
    """Each replica's slice of every global batch: together, in replica order, exactly the
    one-process batch (the last, short batch too, even where a slice is empty)."""
    import numpy as np
    import tensorflow as tf

    from trainer.data import InMemoryExamples

    examples = InMemoryExamples({"x": tf.range(10, dtype=tf.float32)})
    whole = [b["x"].numpy() for b in examples.epoch_dataset(4, seed=1, epoch=2)]
    per_worker = [[b["x"].numpy() for b in examples.epoch_dataset(4, seed=1, epoch=2, parts=[w], n_parts=3)]
                  for w in range(3)]
    assert [len(p) for p in per_worker] == [len(whole)] * 3  # the same number of steps everywhere
    for b, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[b] for p in per_worker]), batch)
    assert sorted(len(p[-1]) for p in per_worker) == [0, 1, 1]  # 10 = 4 + 4 + 2 rows: 2 rows over 3 slices
    two_local = [b["x"].numpy() for b in examples.epoch_dataset(4, seed=1, epoch=2, parts=[0, 1], n_parts=2)]
    assert len(two_local) == 2 * len(whole)  # one worker, two local replicas: slices in turn
    np.testing.assert_array_equal(np.concatenate(two_local[:2]), whole[0])
