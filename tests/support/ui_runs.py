"""Hand-made run folders (as pipelines/local_run.py writes them) and a tiny hand-made store for the UI tests.

Every expected value is written into the folder by the test itself.
"""

import json
import os

from core.store import VersionStore


PIPELINE_RUN = "twotower-2026-11-21-22-30-22-962219"
TASKS = {"ingest": ("ingest", "ingested"), "transform": ("transform", "transformed"), "train": ("train", "model"),
         "evaluate": ("evaluate", "evaluation"), "embed": ("embed", "embeddings"), "index": ("index", "index"),
         "publish": ("publish", "summary")}


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh)


def make_stage(run_path, stage, seconds, result, task_suffix="", report=None):
    """kfp/<pipeline-run>/<task>/<output>/stage.json (+ report.html when given)."""
    task, output = TASKS[stage]
    folder = os.path.join(run_path, "kfp", PIPELINE_RUN, task + task_suffix, output)
    write_json(os.path.join(folder, "stage.json"), {"stage": stage, "seconds": seconds, "result": result})
    if report is not None:
        with open(os.path.join(folder, "report.html"), "w") as fh:
            fh.write(report)
    return folder


def make_run(runs_dir, run_id, run_json=None, summary=None, stages=(), log=True, task_suffix=""):
    path = os.path.join(runs_dir, run_id)
    os.makedirs(path, exist_ok=True)
    if log:
        with open(os.path.join(path, "pipeline.log"), "w") as fh:
            fh.write("runner output\n")
    if run_json is not None:
        write_json(os.path.join(path, "run.json"), run_json)
    if summary is not None:
        write_json(os.path.join(path, "summary.json"), summary)
    for stage in stages:
        make_stage(path, *stage, task_suffix=task_suffix)
    return path


EVAL_RESULT = {"recall_at_10": 0.25, "ndcg_at_10": 0.125, "popularity": {"recall_at_10": 0.0625}}
INDEX_RESULT = {"recall_at_10_vs_exact": 1.0, "kind": "brute_force"}
ALL_STAGES = [("ingest", 0.5, {"fingerprint": "abc123"}), ("transform", 2.0, {"split": "hashed"}),
              ("train", 10.0, {"best_epoch": 2}), ("evaluate", 1.5, EVAL_RESULT), ("embed", 1.0, {"dims": 8}),
              ("index", 0.75, INDEX_RESULT), ("publish", 0.25, {"published": True, "version": "v2"})]
SUMMARY = {"run_id": "r", "finished_at": "2026-11-21T22:31:12Z",
           "metrics": {"recall_at_10": 0.5, "popularity_recall_at_10": 0.125, "ndcg_at_10": 0.25},
           "index": {"recall_at_10_vs_exact": 0.96875}, "published": True, "version": "v2",
           "reasons": ["recall@10 0.5 beats the popularity baseline's 0.125"]}
# -- store + server -----------------------------------------------------------------------------
def publish(store_root, tmp_path, vid, run_id, recall):
    staging = tmp_path / f"staging-{vid}"
    staging.mkdir()
    (staging / "items.txt").write_text(f"items of {vid}\n")
    VersionStore(str(store_root)).publish(vid, str(staging), {
        "run_id": run_id, "metrics": {"recall_at_10": recall, "popularity": {"recall_at_10": 0.1}},
        "index": {"recall_at_10_vs_exact": 1.0, "n_items": 3}})
