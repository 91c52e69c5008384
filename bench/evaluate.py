"""Evaluate-stage scoring cost: every test query against the whole catalog vs a seeded sample.

    .venv/bin/python bench/evaluate.py                       # 100,000 items x 100,000 queries (~3-4 min on 2 cores)
    .venv/bin/python bench/evaluate.py --quick               # 100,000 items x 10,000 queries, max 2,000
    .venv/bin/python bench/evaluate.py --items 1000000 --queries 100000 --skip-exact
    .venv/bin/python bench/evaluate.py --max-queries 5000 --no-live

Data (synthetic, no training): ``--items`` unit-normalised gaussian item embeddings of
``--dims``; each test query has 1 to 3 relevant items (query i has 1 + i % 3) and 10 random
masked items; the candidate's query embedding is the normalised sum of its relevant items'
embeddings plus gaussian noise (``--noise``, norm about that multiple of the signal's), so
recall@10 lands near 0.3; the "live" model is the same construction with its own noise
draw (``--live-noise``), so the two differ query by query; popularity scores items by
zipf-like counts. This is what the evaluate stage runs after embedding, through the same
functions (``core.metrics``: ``embedding_rank_relevant``, ``query_contributions``,
``estimates``, ``ratio_interval``, ``sample_keys``; ``evaluation.evaluate``: ``intervals``,
``paired_differences``); embedding the queries with the tower is not included.

Per mode (exact = all queries; sampled = ``sample_keys(keys, --max-queries, --seed)``):
wall and process-CPU seconds of scoring the model, popularity and live (ranking +
per-query contributions + intervals; the sample's hashing is counted in the sampled mode),
recall@10 / ndcg@10 with their 95% intervals, the paired model - live difference and its
interval, and the process's peak RSS. The exact run tells whether the sampled intervals
bracket the exact values.

Writes ``bench/results/evaluate-<UTC timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.evaluate import intervals, paired_differences  # noqa: E402
from core.metrics import (embedding_rank_relevant, estimates, popularity_scores,  # noqa: E402
                             query_contributions, sample_keys)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
KS, NDCG_K, DEPTH = (10, 50, 100), 10, 100
SHOWN = ("recall_at_10", "ndcg_at_10")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n_items: int, n_queries: int, dims: int, noise: float, live_noise: float, seed: int) -> dict:
    """Synthetic catalog + test queries (see the module doc); float32 [N, D] / [Q, D] embeddings."""
    rng = np.random.default_rng(seed)
    items = unit_rows(rng.normal(size=(n_items, dims)))
    relevant = [rng.choice(n_items, size=1 + i % 3, replace=False).astype(np.int64) for i in range(n_queries)]
    masked = [np.setdiff1d(rng.choice(n_items, size=10, replace=False), r).astype(np.int64) for r in relevant]
    signal = unit_rows(np.stack([items[r].sum(axis=0) for r in relevant]))

    def tower(level: float) -> np.ndarray:
        return unit_rows(signal + level * rng.normal(size=signal.shape).astype(np.float32) / np.sqrt(dims))

    counts = np.floor(1e4 / (1 + rng.permutation(n_items)) ** 0.8).astype(np.int64)
    return {"items": items, "model": tower(noise), "live": tower(live_noise), "relevant": relevant,
            "masked": masked, "popularity": popularity_scores(counts), "keys": [f"q{i}" for i in range(n_queries)]}


def score(data: dict, rows: np.ndarray, n_total: int, live: bool) -> dict:
    """Score the model, popularity (and live) on query ``rows``; timings and the metrics.json-shaped numbers."""
    relevant = [data["relevant"][i] for i in rows]
    masked = [data["masked"][i] for i in rows]
    out: dict = {}
    values = {}
    for name in ("model", "popularity") + (("live",) if live else ()):
        start, cpu = time.perf_counter(), time.process_time()
        if name == "popularity":
            ranks = embedding_rank_relevant(None, None, relevant, masked, DEPTH, item_bias=data["popularity"])
        else:
            ranks = embedding_rank_relevant(data[name][rows], data["items"], relevant, masked, DEPTH)
        v, weights = query_contributions(ranks, KS, NDCG_K, "query")
        ci, point = intervals(v, weights, n_total), estimates(v, weights)
        values[name] = v
        out[name] = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                     **{k: point[k] for k in SHOWN}, "ci95": {k: ci[k] for k in SHOWN}}
    if live:
        diff = paired_differences(values["model"], values["live"], weights, n_total)
        out["model_minus_live"] = {k: diff[k] for k in SHOWN}
    out["seconds"] = sum(out[n]["seconds"] for n in ("model", "popularity", "live") if n in out)
    out["cpu_seconds"] = sum(out[n]["cpu_seconds"] for n in ("model", "popularity", "live") if n in out)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--max-queries", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0, help="sample seed (evaluate.seed)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=1.8)
    parser.add_argument("--live-noise", type=float, default=1.75)
    parser.add_argument("--no-live", action="store_true", help="score model and popularity only")
    parser.add_argument("--skip-exact", action="store_true", help="sampled mode only (no exact reference)")
    parser.add_argument("--quick", action="store_true", help="10,000 queries, max 2,000")
    args = parser.parse_args(argv)
    if args.quick:
        args.queries, args.max_queries = 10_000, 2_000
    live = not args.no_live

    t0 = time.perf_counter()
    data = make_data(args.items, args.queries, args.dims, args.noise, args.live_noise, args.data_seed)
    print(f"data: {args.items:,} items x {args.queries:,} queries x {args.dims} dims in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    doc = {"args": vars(args), "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                        "numpy": np.__version__},
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    start, cpu = time.perf_counter(), time.process_time()
    position = {k: i for i, k in enumerate(data["keys"])}
    rows = np.array([position[k] for k in sample_keys(data["keys"], args.max_queries, args.seed)], dtype=np.int64)
    sample_seconds, sample_cpu = time.perf_counter() - start, time.process_time() - cpu
    sampled = score(data, rows, args.queries, live)
    sampled.update(n_queries=int(len(rows)), sample_seconds=sample_seconds, sample_cpu_seconds=sample_cpu)
    sampled["seconds"] += sample_seconds
    sampled["cpu_seconds"] += sample_cpu
    sampled["peak_rss_mb"] = peak_rss_mb()
    doc["sampled"] = sampled
    print(f"sampled ({len(rows):,} queries): {sampled['seconds']:.1f}s wall, {sampled['cpu_seconds']:.1f}s CPU",
          flush=True)
    if not args.skip_exact:
        exact = score(data, np.arange(args.queries), args.queries, live)
        exact.update(n_queries=args.queries, peak_rss_mb=peak_rss_mb())
        doc["exact"] = exact
        print(f"exact ({args.queries:,} queries): {exact['seconds']:.1f}s wall, {exact['cpu_seconds']:.1f}s CPU",
              flush=True)
        doc["bracketed"] = {
            f"{who}.{k}": bool(sampled[who]["ci95"][k][0] <= exact[who][k] <= sampled[who]["ci95"][k][1])
            for who in ("model", "popularity") + (("live",) if live else ()) for k in SHOWN}
        if live:
            for k in SHOWN:
                lo, hi = sampled["model_minus_live"][k]["ci95"]
                doc["bracketed"][f"model_minus_live.{k}"] = bool(lo <= exact["model_minus_live"][k]["mean"] <= hi)

    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join(RESULTS, f"evaluate-{stamp}")
    with open(base + ".json", "w") as fh:
        json.dump(doc, fh, indent=2)
    md = markdown(doc)
    with open(base + ".md", "w") as fh:
        fh.write(md)
    print(md)
    print(f"wrote {base}.json and .md")
    return doc


def markdown(doc: dict) -> str:
    a = doc["args"]
    lines = [f"# Evaluate scoring: {a['items']:,} items x {a['queries']:,} queries x {a['dims']} dims, "
             f"max_queries {a['max_queries']:,} (seed {a['seed']})", "",
             "| mode | queries | wall s | CPU s | peak RSS MB | " + " | ".join(
                 f"model {k} [95%] (width)" for k in SHOWN) + " | model - live recall_at_10 [95%] |",
             "|---|---:|---:|---:|---:|" + "---|" * len(SHOWN) + "---|"]
    for mode in ("exact", "sampled"):
        if mode not in doc:
            continue
        r = doc[mode]
        cells = [f"{r['model'][k]:.4f} [{r['model']['ci95'][k][0]:.4f}, {r['model']['ci95'][k][1]:.4f}] "
                 f"({r['model']['ci95'][k][1] - r['model']['ci95'][k][0]:.4f})" for k in SHOWN]
        if "model_minus_live" in r:
            d = r["model_minus_live"]["recall_at_10"]
            paired = f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
        else:
            paired = "n/a"
        lines.append(f"| {mode} | {r['n_queries']:,} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | " + " | ".join(cells) + f" | {paired} |")
    lines += ["", "Per scorer (wall s / CPU s):", ""]
    for mode in ("exact", "sampled"):
        if mode in doc:
            r = doc[mode]
            parts = [f"{n} {r[n]['seconds']:.1f} / {r[n]['cpu_seconds']:.1f}" for n in ("model", "popularity", "live")
                     if n in r]
            if mode == "sampled":
                parts.append(f"sample_keys {r['sample_seconds']:.2f} / {r['sample_cpu_seconds']:.2f}")
            lines.append(f"- {mode}: " + ", ".join(parts))
    if "bracketed" in doc:
        lines += ["", "Sampled 95% intervals that bracket the exact value: "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in doc["bracketed"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
