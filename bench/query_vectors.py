"""Both towers frozen (``index.query_vectors``): what the precomputed query vectors cost in the embed
stage and save at serving, side by side with the query tower on the same version.

    .venv/bin/python bench/query_vectors.py                                  # MovieLens-100K, history model
    .venv/bin/python bench/query_vectors.py --synth-items 100000             # synth-interactions: 100k items, 50k users

One pipeline run, in process (ingest, transform, train, evaluate, then the embed stage, index and
publish with ``index.query_vectors=true``), on MovieLens-100K with core/configs/movielens-history.yaml
(943 users, history features) or, with ``--synth-items N``, on ``twotower data synth-interactions``
data (N items, N / 2 users, 10 N interactions) with core/configs/synth-interactions.yaml. Then:

- embed stage cost: the same stage on the same model, ``--repeats`` times each with the option off
  and on, interleaved; wall and CPU seconds (this process; Beam runs in it), and the added seconds
  per 1,000 keys;
- serving: one Retriever with the version's query vectors and one without (``query_vectors=False``:
  the query tower for every request), ``--requests`` requests ``{"user_id": u}`` (k 10, seen excluded)
  for random known users, one request per call, alternating rounds; p50 / p99 ms per path. Both
  answer with the same items (checked on every request).

Writes ``bench/results/query_vectors-<UTC>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)

from bench.next_item import MOVIELENS_RAW, write_results  # noqa: E402


def prepare(work: Path, synth_items: int, overrides: list[str]):
    """(config, transformed folder): the dataset written and transformed in ``work``."""
    from core.config import load_config
    from features.ingest import ingest
    from features.transform import run_transform

    data = work / "data"
    if synth_items:
        subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "synth-interactions", "--out", str(data),
                        "--items", str(synth_items), "--users", str(synth_items // 2),
                        "--interactions", str(synth_items * 10), "--seed", "0"], check=True, cwd=REPO)
        config_path = REPO / "core" / "configs" / "synth-interactions.yaml"
    else:
        from datagen.movielens import convert_movielens

        convert_movielens(str(MOVIELENS_RAW), str(data))
        config_path = REPO / "core" / "configs" / "movielens-history.yaml"
    config = load_config(config_path, [f"data.path={data}", f"publish.store={work / 'store'}",
                                       "index.query_vectors=true", *overrides])
    ingest(config, str(work / "ingested"))
    run_transform(config, str(work / "ingested"), str(work / "transformed"))
    return config, work / "transformed"


def timed(fn) -> tuple[float, float]:
    """(wall, CPU seconds of this process and its reaped children) of ``fn()``."""
    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    wall, used = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - wall, cpu() - used


def embed_cost(config, transformed: Path, model: Path, work: Path, repeats: int) -> dict:
    """Embed-stage wall / CPU seconds with the option off and on, interleaved, and the keys embedded."""
    from indexer.embed import embed_items

    configs = {"off": config.with_overrides({"index.query_vectors": False}), "on": config}
    figures = {mode: {"wall": [], "cpu": []} for mode in configs}
    keys = None
    for _ in range(repeats):
        for mode, cfg in configs.items():
            out = work / f"emb-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            result = {}
            wall, cpu = timed(lambda: result.update(embed_items(cfg, str(transformed), str(model), str(out))))
            figures[mode]["wall"].append(wall)
            figures[mode]["cpu"].append(cpu)
            keys = result.get("n_query_vectors", keys)
    medians = {mode: {k: statistics.median(v) for k, v in f.items()} for mode, f in figures.items()}
    added = medians["on"]["wall"] - medians["off"]["wall"]
    return {"runs": figures, "median": medians, "n_keys": keys, "added_wall_s": added,
            "added_cpu_s": medians["on"]["cpu"] - medians["off"]["cpu"],
            "added_wall_s_per_1000_keys": added / keys * 1000 if keys else None}


def latency(store: str, requests: int, seed: int) -> dict:
    """p50 / p99 ms per request of both paths over the same users, alternating rounds of 100."""
    from serving.retriever import Retriever

    paths = {"precomputed": Retriever.load(store), "tower": Retriever.load(store, query_vectors=False)}
    users = sorted(paths["precomputed"].query_table)
    picked = np.random.default_rng(seed).choice(len(users), size=requests)
    times = {name: [] for name in paths}
    mismatches = 0
    for start in range(0, requests, 100):
        answers = {}
        for name, retriever in paths.items():
            retriever.retrieve({"user_id": users[picked[start]]}, k=10, exclude_seen=True)  # warm
            answers[name] = []
            for i in picked[start:start + 100]:
                began = time.perf_counter()
                answer = retriever.retrieve({"user_id": users[i]}, k=10, exclude_seen=True)
                times[name].append((time.perf_counter() - began) * 1000)
                assert answer["query_vector"] == name, answer["query_vector"]
                answers[name].append([item["item_id"] for item in answer["items"]])
        mismatches += sum(a != b for a, b in zip(answers["precomputed"], answers["tower"]))
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "n": len(t)}
            for name, t in times.items()} | {"different_answers": mismatches, "n_users": len(users)}


def markdown(result: dict) -> str:
    e, lat = result["embed"], result["latency"]
    lines = [f"Dataset: {result['dataset']} ({e['n_keys']:,} query-table keys)", "",
             "| embed stage | wall s (median) | CPU s (median) |", "|---|---|---|"]
    for mode in ("off", "on"):
        lines.append(f"| index.query_vectors={'true' if mode == 'on' else 'false'} | {e['median'][mode]['wall']:.2f} | "
                     f"{e['median'][mode]['cpu']:.2f} |")
    per = e["added_wall_s_per_1000_keys"]
    lines += ["", f"Added: {e['added_wall_s']:.2f} s wall, {e['added_cpu_s']:.2f} s CPU"
              + (f" ({per:.3f} s wall per 1,000 keys)" if per is not None else ""), "",
              "| serving a request by user_id (k 10, seen excluded) | p50 ms | p99 ms | requests |", "|---|---|---|---|"]
    for name in ("precomputed", "tower"):
        lines.append(f"| {name} | {lat[name]['p50_ms']:.3f} | {lat[name]['p99_ms']:.3f} | {lat[name]['n']} |")
    lines += ["", f"Answers that differ between the paths: {lat['different_answers']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth-items", type=int, default=0, help="synth-interactions with this many items "
                                                                  "(default: MovieLens-100K)")
    ap.add_argument("--repeats", type=int, default=3, help="embed-stage runs per mode")
    ap.add_argument("--requests", type=int, default=2000, help="requests per serving path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    ap.add_argument("--work-dir", default="", help="scratch folder (default: a temp folder, deleted)")
    args = ap.parse_args(argv)
    if not args.synth_items and not MOVIELENS_RAW.exists():
        print(f"MovieLens-100K not found at {MOVIELENS_RAW}; use --synth-items N", file=sys.stderr)
        return 2
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="twotower-qv-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from bench.next_item import train_to_publish

        config, transformed = prepare(work, args.synth_items, args.overrides)
        _, train_s, _, published = train_to_publish(config, transformed, work / "run")
        if not published["published"]:
            print(f"the gate refused the version: {published['reasons']}", file=sys.stderr)
            return 1
        result = {"dataset": f"synth-interactions {args.synth_items:,} items" if args.synth_items else "MovieLens-100K",
                  "overrides": args.overrides, "train_seconds": train_s,
                  "embed": embed_cost(config, transformed, work / "run" / "model", work, args.repeats),
                  "latency": latency(str(config.publish.store), args.requests, args.seed)}
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    text = markdown(result)
    print(text)
    write_results("query_vectors", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
