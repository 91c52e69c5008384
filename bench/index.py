"""ANN index benchmark: the tuner's ScaNN choice vs numpy brute force (and a hand-tuned point).

    .venv/bin/python bench/index.py                    # 1,000,000 x 64, 1000 queries (several minutes)
    .venv/bin/python bench/index.py --quick            # 100,000 items
    .venv/bin/python bench/index.py --n 300000 --dims 64 --queries 500
    .venv/bin/python bench/index.py --crossover 2000,5000,10000,20000,50000   # brute_force_below
    .venv/bin/python bench/index.py --n 100000 --ties 0.06   # tied block: old vs new tuning measure

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

Recall is tie-aware (``indexer.scann_index.recall_tie_aware``: an item scoring at least the
exact 10th score counts); the id-overlap figure (``recall_vs_exact``) is reported beside it.

``--ties F``: a fraction F of the catalog is one identical vector (trained models map items
without positives to one embedding: 6,131 of 100k did), itself drawn like a cluster centre, and
queries come from the catalog's distribution (a fraction F drawn around that vector with the
clusters' spread). The old tuner (stand-in queries = perturbed catalog rows, id-overlap recall)
and the new one (queries from that distribution, tie-aware recall) each run once, and so does a
third (stand-in queries, tie-aware recall) that tells the two changes apart; the choices are
then measured on held-out queries under both definitions, against numpy and ScaNN exact.

``--similarity dot | euclidean`` (default cosine): the model's score (core/similarity.py), which picks
the searchers' distance measure and the exact reference's score. Unnormalised towers emit rows of
varying norm, so for those each item and query row is scaled by a log-normal factor (sd
``--norm-sd``, default 0.3) after the unit draw; cosine keeps unit rows. Main path only.

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
from indexer.build import stand_in_queries  # noqa: E402
from indexer.scann_index import (BRUTE_FORCE, TREE_AH, IndexParams, build_with_params,  # noqa: E402
                                 exact_topk_chunked, recall_tie_aware, recall_vs_exact, serialized_bytes)
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


def plant_ties(db: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Overwrite ``fraction`` of ``db``'s rows (chosen at random) with one unit vector, in place.

    Returns:
        (the tie vector float32 [dims], the tied row positions int [round(fraction * n)]).
    """
    tie = rng.normal(size=db.shape[1])
    tie = (tie / np.linalg.norm(tie)).astype(np.float32)
    rows = rng.choice(db.shape[0], size=int(round(fraction * db.shape[0])), replace=False)
    db[rows] = tie
    return tie, rows


def catalog_queries(n: int, dims: int, centres: np.ndarray, spread: float, tie: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> np.ndarray:
    """float32 [n, dims] fresh draws from the tied catalog's distribution: a share ``fraction``
    around the tie vector, the rest around the cluster centres, all with the same spread."""
    q, _ = clustered(n, dims, len(centres), spread, rng, centres)
    m = int(round(fraction * n))
    near = tie + spread * rng.normal(size=(m, dims)) / np.sqrt(dims)
    q[rng.choice(n, size=m, replace=False)] = near / np.linalg.norm(near, axis=1, keepdims=True)
    return q


def both_recalls(found: np.ndarray, exact: np.ndarray, db: np.ndarray, queries: np.ndarray,
                 similarity: str = "cosine") -> dict:
    """{"tie_aware", "id_overlap"} recall@10 vs exact (rounded to 4 places)."""
    found = np.asarray(found)
    return {"tie_aware": round(recall_tie_aware(found, exact, db, queries, similarity=similarity), 4),
            "id_overlap": round(recall_vs_exact(found, exact), 4)}


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


def with_norms(rows: np.ndarray, similarity: str, sd: float, rng: np.random.Generator) -> np.ndarray:
    """``rows`` as an unnormalised tower emits them: each scaled by exp(N(0, sd)) (cosine: unchanged)."""
    if similarity == "cosine":
        return rows
    return (rows * np.exp(sd * rng.normal(size=(len(rows), 1)))).astype(np.float32)


def numpy_single(db: np.ndarray, q: np.ndarray, k: int = 10, similarity: str = "cosine"):
    s = db @ q
    if similarity == "euclidean":  # -||q - x||^2 ranks as 2 q.x - ||x||^2
        s = 2 * s - np.einsum("ij,ij->i", db, db)
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.argsort(-s[top])]


def run_main(args) -> dict:
    rng = np.random.default_rng(args.seed)
    clusters = args.clusters or max(10, args.n // 1000)
    t = time.perf_counter()
    sim = args.similarity
    db, centres = clustered(args.n, args.dims, clusters, args.spread, rng)
    eval_q, _ = clustered(args.queries, args.dims, clusters, args.spread, rng, centres)
    tune_q, _ = clustered(args.tune_queries, args.dims, clusters, args.spread, rng, centres)
    db, eval_q, tune_q = (with_norms(x, sim, args.norm_sd, rng) for x in (db, eval_q, tune_q))
    print(f"data: {args.n} x {args.dims}, {clusters} clusters, {sim}, {time.perf_counter() - t:.1f}s", flush=True)

    exact = exact_topk_chunked(db, eval_q, 10, similarity=sim)
    methods: dict[str, dict] = {}
    searchers: dict[str, tuple] = {}

    # (b) the tuner, on its own query sample; exact search is one of its candidates.
    cfg = IndexConfig(brute_force_below=0, target_recall=args.target)
    rss0 = rss_mb()
    t = time.perf_counter()
    result = tune(db, tune_q, cfg, log=lambda m: print("  tuner:", m, flush=True), similarity=sim)
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
        searcher = build_with_params(db, ref, k=10, similarity=sim)
        methods["hand-tuned reference"] = {"params": ref.to_dict(),
                                           "build_seconds": round(time.perf_counter() - t, 1),
                                           "rss_growth_mb": round(rss_mb() - rss0, 1)}
        searchers["hand-tuned reference"] = (searcher, {"pre_reorder_num_neighbors": 100})

    # Recall on the held-out evaluation queries (tie-aware; the id-overlap figure beside it).
    for name, (searcher, kw) in searchers.items():
        found, _ = searcher.search_batched(eval_q, final_num_neighbors=10, **kw)
        both = both_recalls(found, exact, db, eval_q, sim)
        methods[name]["recall_at_10_vs_exact"] = both["tie_aware"]
        methods[name]["recall_at_10_id_overlap"] = both["id_overlap"]
        methods[name]["serialized_mb"] = round(serialized_bytes(searcher) / 2 ** 20, 1)
    methods = {"numpy brute force": {"params": "chunked matmul + argpartition", "build_seconds": 0.0,
                                     "serialized_mb": round(db.nbytes / 2 ** 20, 1), "rss_growth_mb": 0.0,
                                     "recall_at_10_vs_exact": 1.0, "recall_at_10_id_overlap": 1.0}, **methods}

    # Throughput: interleaved rounds, best of each.
    single_n = min(args.single_queries, len(eval_q))
    numpy_single_n = max(1, single_n // 5)  # numpy is slow one query at a time; time fewer
    per_query = {name: {"batched": float("inf"), "single": float("inf")} for name in methods}
    for r in range(args.rounds):
        b = per_query["numpy brute force"]
        b["batched"] = min(b["batched"], best_time(lambda: exact_topk_chunked(db, eval_q, 10, similarity=sim), 1)
                           / len(eval_q))
        b["single"] = min(b["single"], best_time(lambda: [numpy_single(db, q, similarity=sim)
                                                          for q in eval_q[:numpy_single_n]],
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
            "n": args.n, "dims": args.dims, "clusters": clusters, "spread": args.spread, "similarity": sim,
            "norm_sd": args.norm_sd if sim != "cosine" else None,
            "eval_queries": args.queries, "tune_queries": args.tune_queries, "target_recall": args.target,
            "cpus": os.cpu_count(), "platform": platform.platform(), "peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "tuning_reason": result.reason, "tuning_dir": tuning_dir, "methods": methods}


def _tuning_row(result) -> dict:
    """The figures of one tuner run that the ties report compares."""
    exact_point = next((p for p in result.points if p.kind == BRUTE_FORCE), None)
    return {"recall_definition": result.recall_definition, "met_target": result.met_target,
            "reason": result.reason, "best_recall": max(p.recall_at_10 for p in result.points),
            "scann_exact_recall": exact_point.recall_at_10 if exact_point else None,
            "chosen": result.chosen.to_dict(), "chosen_recall": result.chosen_point.recall_at_10,
            "chosen_qps_batched": result.chosen_point.qps_batched, "configs_tried": len(result.points),
            "indexes_built": result.trees_built, "seconds": round(result.seconds, 1),
            "exact_numpy_qps_batched": result.exact_numpy_qps_batched}


def run_ties(args) -> dict:
    """Old vs new tuning measure on a catalog with a block of identical vectors (``--ties``)."""
    rng = np.random.default_rng(args.seed)
    clusters = args.clusters or max(10, args.n // 1000)
    t = time.perf_counter()
    db, centres = clustered(args.n, args.dims, clusters, args.spread, rng)
    tie, tied_rows = plant_ties(db, args.ties, rng)
    tune_q = catalog_queries(args.tune_queries, args.dims, centres, args.spread, tie, args.ties, rng)
    eval_q = catalog_queries(args.queries, args.dims, centres, args.spread, tie, args.ties, rng)
    print(f"data: {args.n} x {args.dims}, {clusters} clusters, {len(tied_rows)} tied rows, "
          f"{time.perf_counter() - t:.1f}s", flush=True)
    cfg = IndexConfig(brute_force_below=0, target_recall=args.target)

    def log(tag):
        return lambda m: print(f"  {tag}:", m, flush=True)

    stand_in = stand_in_queries(db, args.tune_queries, seed=1)
    # Old: what the index stage did before query embeddings (stand-ins, seed 1) and id-overlap recall.
    old = tune(db, stand_in, cfg, tie_aware=False, log=log("old"))
    # Stand-ins with tie-aware recall: separates what the queries change from what the ties did.
    mid = tune(db, stand_in, cfg, log=log("stand-in, tie-aware")) if not args.no_reference else None
    # New: queries from the served distribution, tie-aware recall.
    new = tune(db, tune_q, cfg, log=log("new"))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(args.out, exist_ok=True)
    for tag, result in (("old", old), ("stand-in-tie-aware", mid), ("new", new)):
        if result is not None:
            write_artifacts(result, os.path.join(args.out, f"index-ties-{stamp}-tuning-{tag}"))

    # The choices (and ScaNN's exact searcher) on held-out queries, under both definitions.
    exact = exact_topk_chunked(db, eval_q, 10)
    searchers = {"old tuner's choice": old.searcher,
                 **({"stand-in, tie-aware tuner's choice": mid.searcher} if mid is not None else {}),
                 "new tuner's choice": new.searcher,
                 "ScaNN exact": build_with_params(db, IndexParams(kind=BRUTE_FORCE), k=10)}
    held_out = {"numpy brute force": {"tie_aware": 1.0, "id_overlap": 1.0}}  # the reference itself
    for name, searcher in searchers.items():
        found, _ = searcher.search_batched(eval_q, final_num_neighbors=10)
        held_out[name] = both_recalls(found, exact, db, eval_q)
    per_query = {name: float("inf") for name in ["numpy brute force", *searchers]}
    for r in range(args.rounds):  # interleaved rounds, best of each: a busy neighbour slows all alike
        per_query["numpy brute force"] = min(per_query["numpy brute force"], best_time(
            lambda: exact_topk_chunked(db, eval_q, 10), 1) / len(eval_q))
        for name, searcher in searchers.items():
            per_query[name] = min(per_query[name], best_time(
                lambda: searcher.search_batched(eval_q, final_num_neighbors=10), 3) / len(eval_q))
    for name, row in held_out.items():
        row["qps_batched"] = round(1 / per_query[name], 1)
        row["speedup_vs_numpy"] = round(per_query["numpy brute force"] / per_query[name], 1)
        row["speedup_vs_scann_exact"] = round(per_query["ScaNN exact"] / per_query[name], 1)
    return {"kind": "ties", "date_utc": stamp, "command": " ".join(["bench/index.py"] + sys.argv[1:]),
            "n": args.n, "dims": args.dims, "clusters": clusters, "spread": args.spread, "ties": args.ties,
            "tied_rows": int(len(tied_rows)), "tune_queries": args.tune_queries, "eval_queries": args.queries,
            "target_recall": args.target, "cpus": os.cpu_count(), "platform": platform.platform(),
            "seconds": round(time.perf_counter() - t, 1),
            "tuning": {"old (stand-in queries, id-overlap recall)": _tuning_row(old),
                       **({"stand-in queries, tie-aware recall": _tuning_row(mid)} if mid is not None else {}),
                       "new (catalog-distribution queries, tie-aware recall)": _tuning_row(new)},
            "held_out": held_out}


def _params_text(p) -> str:
    if not isinstance(p, dict):
        return str(p)
    return ("exact" if p["kind"] == "brute_force" else
            f"leaves {p['num_leaves']}, search {p['num_leaves_to_search']}, reorder {p['reorder_k']}, "
            f"dpb {p['dims_per_block']}")


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
    if report["kind"] == "ties":
        lines = [f"{report['n']:,} items x {report['dims']} dims ({report['clusters']} clusters), "
                 f"{report['tied_rows']:,} identical rows ({report['ties']:.0%}); {report['tune_queries']} tuning / "
                 f"{report['eval_queries']} held-out queries; target recall@10 {report['target_recall']}; "
                 f"{report['date_utc']}; `{report['command']}` ({report['seconds']} s)", "",
                 "| tuner | met target | best recall@10 (its measure) | ScaNN exact's recall (its measure) | "
                 "chosen | configs | seconds |", "|---|---|---|---|---|---|---|"]
        for name, r in report["tuning"].items():
            lines.append(f"| {name} | {'yes' if r['met_target'] else 'no'} | {r['best_recall']:.4f} | "
                         f"{r['scann_exact_recall']} | {_params_text(r['chosen'])} | {r['configs_tried']} | "
                         f"{r['seconds']} |")
        lines += ["", "Held-out queries from the catalog's distribution:", "",
                  "| method | recall@10 tie-aware | recall@10 id overlap | q/s batched | vs numpy | vs ScaNN exact |",
                  "|---|---|---|---|---|---|"]
        for name, r in report["held_out"].items():
            lines.append(f"| {name} | {r['tie_aware']:.4f} | {r['id_overlap']:.4f} | {r['qps_batched']:.0f} | "
                         f"{r['speedup_vs_numpy']:.1f}x | {r['speedup_vs_scann_exact']:.1f}x |")
        return "\n".join(lines) + "\n"
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
             f"similarity {report.get('similarity', 'cosine')}"
             + (f" (row norms log-normal, sd {report['norm_sd']})" if report.get("norm_sd") else "") + ", "
             f"{report['eval_queries']} evaluation queries, target recall@10 {report['target_recall']}; "
             f"{report['date_utc']}; `{report['command']}`", "",
             "| method | params | build s | index MB (serialized) | RSS growth MB | recall@10 (tie-aware / id "
             "overlap) | q/s batched | q/s single | batched speed-up vs numpy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["methods"].items():
        p = _params_text(m["params"])
        overlap = m.get("recall_at_10_id_overlap")
        recall = f"{m['recall_at_10_vs_exact']:.4f}" + (f" / {overlap:.4f}" if overlap is not None else "")
        build = m.get("build_seconds")
        extra = f" (+ tuning {m['tuning_seconds']} s total, {m['configs_tried']} configs, {m['indexes_built']} " \
                f"tree indexes)" if "tuning_seconds" in m else ""
        lines.append(f"| {name} | {p} | {build}{extra} | {m['serialized_mb']} | {m['rss_growth_mb']} | "
                     f"{recall} | {m['qps_batched']:.0f} | {m['qps_single']:.0f} | "
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
    ap.add_argument("--no-reference", action="store_true", help="skip the hand-tuned reference point "
                                                                  "(with --ties: the stand-in, tie-aware tuner run)")
    ap.add_argument("--crossover", default="", help="comma-separated catalog sizes: find brute_force_below")
    ap.add_argument("--ties", type=float, default=0.0,
                    help="fraction of identical catalog rows: compare the old and new tuning measure")
    ap.add_argument("--similarity", default="cosine", choices=["cosine", "dot", "euclidean"],
                    help="the model's score: the distance measure and exact reference (main path only)")
    ap.add_argument("--norm-sd", type=float, default=0.3, help="log-normal sd of row norms for dot / euclidean")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 100_000
    if not 0.0 <= args.ties < 1.0:
        ap.error(f"--ties must be in [0, 1), got {args.ties}")
    report = run_crossover(args) if args.crossover else run_ties(args) if args.ties else run_main(args)
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
