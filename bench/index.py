"""ANN index benchmark: the tuner's ScaNN choice vs numpy brute force (and a hand-tuned point).

    .venv/bin/python bench/index.py                    # 1,000,000 x 64, 1000 queries (several minutes)
    .venv/bin/python bench/index.py --quick            # 100,000 items
    .venv/bin/python bench/index.py --n 300000 --dims 64 --queries 500
    .venv/bin/python bench/index.py --crossover 2000,5000,10000,20000,50000   # brute_force_below

Data: a synthetic clustered catalog, unit-normalised: ``--clusters`` (default n/1000) centres
drawn uniformly on the unit sphere, each item = its centre + gaussian noise of about the same
norm (``--spread`` 1.0), re-normalised. Neighbourhoods overlap, so the top-10 is not simply
"the query's own cluster". Queries come from the same distribution but are fresh draws, not
catalog rows; the tuner gets its own query sample, separate from the evaluation queries.

Reported per method: build seconds, serialized index size, RSS growth while building,
recall@10 vs exact (numpy) on the evaluation queries, queries/s batched (one call for all
queries) and single (one call per query), and batched speed-up over numpy brute force.
Throughput is measured in rounds that interleave the methods (best run of each kept), so a
neighbour job slowing the machine down affects all of them alike; ratios are the robust figure.

``--crossover``: for each catalog size the tuner runs with exact search as one candidate
(``brute_force_below=0``); the smallest size where a tree config beats ScaNN's exact search at
the target recall is where ``index.brute_force_below`` belongs.

Writes ``bench/results/index-<timestamp>.json`` and ``.md`` (and the tuner's tuning.* files).
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

from core.config import IndexConfig  # noqa: E402
from indexer.scann_index import (TREE_AH, IndexParams, build_with_params, exact_topk_chunked,  # noqa: E402
                                 recall_vs_exact, serialized_bytes)
from indexer.tuner import tune, write_artifacts  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def clustered(n: int, dims: int, clusters: int, spread: float, rng: np.random.Generator,
              centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, dims] unit rows, centres [clusters, dims]); pass ``centres`` to draw more of the same."""
    if centres is None:
        centres = rng.normal(size=(clusters, dims))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dims), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):  # chunked: float64 temporaries for 1M rows would be 0.5 GB each
        m = min(step, n - s)
        x = centres[rng.integers(0, len(centres), m)] + spread * rng.normal(size=(m, dims)) / np.sqrt(dims)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to peak RSS)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_time(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def numpy_single(db: np.ndarray, q: np.ndarray, k: int = 10):
    s = db @ q
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.argsort(-s[top])]


def run_main(args) -> dict:
    rng = np.random.default_rng(args.seed)
    clusters = args.clusters or max(10, args.n // 1000)
    t = time.perf_counter()
    db, centres = clustered(args.n, args.dims, clusters, args.spread, rng)
    eval_q, _ = clustered(args.queries, args.dims, clusters, args.spread, rng, centres)
    tune_q, _ = clustered(args.tune_queries, args.dims, clusters, args.spread, rng, centres)
    print(f"data: {args.n} x {args.dims}, {clusters} clusters, {time.perf_counter() - t:.1f}s", flush=True)

    exact = exact_topk_chunked(db, eval_q, 10)
    methods: dict[str, dict] = {}
    searchers: dict[str, tuple] = {}

    # (b) the tuner, on its own query sample; exact search is one of its candidates.
    cfg = IndexConfig(brute_force_below=0, target_recall=args.target)
    rss0 = rss_mb()
    t = time.perf_counter()
    result = tune(db, tune_q, cfg, log=lambda m: print("  tuner:", m, flush=True))
    tune_seconds = time.perf_counter() - t
    chosen = result.chosen
    build_key = (f"tree_ah/leaves={chosen.num_leaves}/dpb={chosen.dims_per_block}"
                 if chosen.kind == TREE_AH else "brute_force")
    methods["tuner's choice"] = {
        "params": chosen.to_dict(), "build_seconds": result.build_seconds.get(build_key),
        "tuning_seconds": round(tune_seconds, 1), "configs_tried": len(result.points),
        "indexes_built": result.trees_built, "met_target_on_tuning_queries": result.met_target,
        "rss_growth_mb": round(rss_mb() - rss0, 1)}
    searchers["tuner's choice"] = (result.searcher, {})
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tuning_dir = os.path.join(args.out, f"index-{stamp}-tuning")
    write_artifacts(result, tuning_dir)

    # (c) hand-tuned reference: 2000 leaves at 1M (scaled by sqrt for other sizes), 100 searched, reorder 100.
    if not args.no_reference:
        leaves = max(10, int(round(2000 * np.sqrt(args.n / 1_000_000))))
        ref = IndexParams(kind=TREE_AH, num_leaves=leaves, num_leaves_to_search=max(1, leaves // 20),
                          training_sample_size=min(args.n, 100_000), reorder_k=100)
        rss0 = rss_mb()
        t = time.perf_counter()
        searcher = build_with_params(db, ref, k=10)
        methods["hand-tuned reference"] = {"params": ref.to_dict(),
                                           "build_seconds": round(time.perf_counter() - t, 1),
                                           "rss_growth_mb": round(rss_mb() - rss0, 1)}
        searchers["hand-tuned reference"] = (searcher, {"pre_reorder_num_neighbors": 100})

    # Recall on the held-out evaluation queries.
    for name, (searcher, kw) in searchers.items():
        found, _ = searcher.search_batched(eval_q, final_num_neighbors=10, **kw)
        methods[name]["recall_at_10_vs_exact"] = round(recall_vs_exact(np.asarray(found), exact), 4)
        methods[name]["serialized_mb"] = round(serialized_bytes(searcher) / 2 ** 20, 1)
    methods = {"numpy brute force": {"params": "chunked matmul + argpartition", "build_seconds": 0.0,
                                     "serialized_mb": round(db.nbytes / 2 ** 20, 1), "rss_growth_mb": 0.0,
                                     "recall_at_10_vs_exact": 1.0}, **methods}

    # Throughput: interleaved rounds, best of each.
    single_n = min(args.single_queries, len(eval_q))
    numpy_single_n = max(1, single_n // 5)  # numpy is slow one query at a time; time fewer
    per_query = {name: {"batched": float("inf"), "single": float("inf")} for name in methods}
    for r in range(args.rounds):
        b = per_query["numpy brute force"]
        b["batched"] = min(b["batched"], best_time(lambda: exact_topk_chunked(db, eval_q, 10), 1) / len(eval_q))
        b["single"] = min(b["single"], best_time(lambda: [numpy_single(db, q) for q in eval_q[:numpy_single_n]],
                                                 1) / numpy_single_n)
        for name, (searcher, kw) in searchers.items():
            one = {"final_num_neighbors": 10, **kw}
            pq = per_query[name]
            pq["batched"] = min(pq["batched"], best_time(lambda: searcher.search_batched(eval_q, **one), 3)
                                / len(eval_q))
            pq["single"] = min(pq["single"], best_time(lambda: [searcher.search(q, **one) for q in
                                                                eval_q[:single_n]], 1) / single_n)
        print(f"  timing round {r + 1}/{args.rounds} done", flush=True)
    for name, m in methods.items():
        m["qps_batched"] = round(1 / per_query[name]["batched"], 1)
        m["qps_single"] = round(1 / per_query[name]["single"], 1)
        m["speedup_batched_vs_numpy"] = round(per_query["numpy brute force"]["batched"]
                                              / per_query[name]["batched"], 1)

    return {"kind": "main", "date_utc": stamp, "command": " ".join(["bench/index.py"] + sys.argv[1:]),
            "n": args.n, "dims": args.dims, "clusters": clusters, "spread": args.spread,
            "eval_queries": args.queries, "tune_queries": args.tune_queries, "target_recall": args.target,
            "cpus": os.cpu_count(), "platform": platform.platform(), "peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "tuning_reason": result.reason, "tuning_dir": tuning_dir, "methods": methods}


def run_crossover(args) -> dict:
    rows = []
    for n in [int(x) for x in args.crossover.split(",")]:
        rng = np.random.default_rng(args.seed)
        clusters = args.clusters or max(10, n // 1000)
        db, centres = clustered(n, args.dims, clusters, args.spread, rng)
        q, _ = clustered(args.tune_queries, args.dims, clusters, args.spread, rng, centres)
        result = tune(db, q, IndexConfig(brute_force_below=0, target_recall=args.target))
        bf = next(p for p in result.points if p.kind == "brute_force")
        trees = [p for p in result.points if p.kind == TREE_AH and p.meets_target]
        tree = max(trees, key=lambda p: p.qps_batched) if trees else None
        row = {"n": n, "numpy_qps_batched": result.exact_numpy_qps_batched,
               "scann_exact_qps_batched": bf.qps_batched, "scann_exact_qps_single": bf.qps_single,
               "tree_qps_batched": tree.qps_batched if tree else None,
               "tree_qps_single": tree.qps_single if tree else None,
               "tree_recall": tree.recall_at_10 if tree else None,
               "tree_params": None if tree is None else {"num_leaves": tree.num_leaves,
                                                         "leaves_to_search": tree.num_leaves_to_search,
                                                         "reorder_k": tree.reorder_k},
               "tuner_choice": result.chosen.kind, "tuning_seconds": round(result.seconds, 1),
               "tree_build_seconds": max([v for k, v in result.build_seconds.items() if k != "brute_force"],
                                         default=None)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return {"kind": "crossover", "date_utc": stamp, "command": " ".join(["bench/index.py"] + sys.argv[1:]),
            "dims": args.dims, "target_recall": args.target, "rows": rows}


def markdown(report: dict) -> str:
    if report["kind"] == "crossover":
        lines = [f"Catalog size sweep, {report['dims']} dims, target recall@10 {report['target_recall']} "
                 f"({report['date_utc']}, `{report['command']}`)", "",
                 "| items | numpy exact q/s | ScaNN exact q/s (batched / single) | best tree at target q/s "
                 "(batched / single) | tree recall@10 | tuner picks |", "|---|---|---|---|---|---|"]
        for r in report["rows"]:
            tree = "-" if r["tree_qps_batched"] is None else f"{r['tree_qps_batched']:.0f} / {r['tree_qps_single']:.0f}"
            lines.append(f"| {r['n']:,} | {r['numpy_qps_batched']:.0f} | {r['scann_exact_qps_batched']:.0f} / "
                         f"{r['scann_exact_qps_single']:.0f} | {tree} | {r['tree_recall'] or '-'} | "
                         f"{r['tuner_choice']} |")
        return "\n".join(lines) + "\n"
    lines = [f"{report['n']:,} items x {report['dims']} dims ({report['clusters']} clusters), "
             f"{report['eval_queries']} evaluation queries, target recall@10 {report['target_recall']}; "
             f"{report['date_utc']}; `{report['command']}`", "",
             "| method | params | build s | index MB (serialized) | RSS growth MB | recall@10 | q/s batched | "
             "q/s single | batched speed-up vs numpy |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["methods"].items():
        p = m["params"]
        if isinstance(p, dict):
            p = ("exact" if p["kind"] == "brute_force" else
                 f"leaves {p['num_leaves']}, search {p['num_leaves_to_search']}, reorder {p['reorder_k']}, "
                 f"dpb {p['dims_per_block']}")
        build = m.get("build_seconds")
        extra = f" (+ tuning {m['tuning_seconds']} s total, {m['configs_tried']} configs, {m['indexes_built']} " \
                f"tree indexes)" if "tuning_seconds" in m else ""
        lines.append(f"| {name} | {p} | {build}{extra} | {m['serialized_mb']} | {m['rss_growth_mb']} | "
                     f"{m['recall_at_10_vs_exact']:.4f} | {m['qps_batched']:.0f} | {m['qps_single']:.0f} | "
                     f"{m['speedup_batched_vs_numpy']:.1f}x |")
    lines += ["", f"Tuner: {report['tuning_reason']}. Peak RSS {report['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000, help="evaluation queries")
    ap.add_argument("--tune-queries", type=int, default=1000, help="the tuner's own query sample")
    ap.add_argument("--single-queries", type=int, default=200, help="queries timed one call each")
    ap.add_argument("--quick", action="store_true", help="100,000 items")
    ap.add_argument("--clusters", type=int, default=0, help="0 = n / 1000")
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--no-reference", action="store_true", help="skip the hand-tuned reference point")
    ap.add_argument("--crossover", default="", help="comma-separated catalog sizes: find brute_force_below")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 100_000
    report = run_crossover(args) if args.crossover else run_main(args)
    text = markdown(report)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    write_report(os.path.join(args.out, f"index-{report['kind']}-{report['date_utc']}"), report, text)
    return 0


def write_report(base: str, report: dict, text: str) -> None:
    """``<base>.json`` (the raw figures) and ``<base>.md`` (the tables printed above)."""
    with open(base + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
    with open(base + ".md", "w") as fh:
        fh.write(text)
    print(f"wrote {base}.json / .md")


if __name__ == "__main__":
    sys.exit(main())
