"""Query service benchmark: HTTP latency and throughput of ``twotower serve`` over a 1M-item version.

    .venv/bin/python bench/serve.py                  # 1,000,000 x 64, 1 / 4 / 16 clients x 15 s (~3-4 min)
    .venv/bin/python bench/serve.py --quick          # 100,000 items
    .venv/bin/python bench/serve.py --quick --seconds 3 --clients 1,4

What it builds (in a temp folder, deleted at the end unless ``--keep``):

- a synthetic catalog of ``--n`` unit-normalised 64-dim item embeddings, drawn by
  ``bench/index.py``'s generator (``clustered``) with ``--clusters`` centres (default 1500);
- a real query tower SavedModel whose ``serving_default`` takes ``{"user_id": tf.string [B]}``
  and returns ``{"embedding": float32 [B, 64]}``, L2-normalised: a hashed-id lookup
  (``tf.strings.to_hash_bucket_fast``) into a [users, 64] table of query vectors drawn from
  the catalog's distribution (fresh draws, not catalog rows);
- a ScaNN tree + AH index with fixed parameters: the tuner's choice measured by
  ``bench/index.py --clusters 1500`` at 1M (1000 leaves, 21 searched, reorder 100, dims per
  block 2, training sample 100k; see docs/BENCHMARKS.md "ANN index"). The tuner is not run
  here (it takes ~5 min at 1M). With ``--n`` other than 1M the leaves scale with sqrt(n) and
  the leaves searched keep the same fraction (2.1 %);
- items.parquet (item_id, title, embedding), index/item_ids.txt, query_table.jsonl
  (``--users`` ids ``u0..``), seen.jsonl (empty lists), and a manifest with the "serving"
  section ``publishing.publish.serving_section`` writes; published with
  ``core.store.VersionStore.publish``.

Then it starts the real service, ``python -m pipelines.cli serve --store ... --port 0``, in a
subprocess bound to 127.0.0.1, waits for /readyz, and for each client count in ``--clients``
starts that many client *processes* (so the clients share neither the server's nor each
other's GIL). Each opens one persistent HTTP/1.1 connection, sends one warm-up request, waits
at a common barrier, then for ``--seconds`` sends ``POST /v1/retrieve {"user_id": <random>,
"k": 10}`` back to back, timing each request to the end of the response body. An error is
anything but a 200 with exactly k items (or a connection failure). Server and clients run on
the same machine and compete for its cores.

Reported per client count: requests, errors, p50 / p99 / max latency (ms), and total queries/s
(all clients' requests / the longest client's measuring window). Markdown on stdout;
``--out DIR`` also writes ``serve-<timestamp>.json`` / ``.md`` there.
Everything stops by itself: the clients after their window, the server on SIGTERM (then
SIGKILL if it does not exit within 30 s).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)

HOST = "127.0.0.1"
DIMS = 64
#: The tuner's choice for 1,000,000 x 64 with 1,500 clusters (bench/index.py --clusters 1500).
TUNED_N = 1_000_000
TUNED_LEAVES = 1000
TUNED_LEAVES_TO_SEARCH = 21
TUNED_REORDER = 100
TRAINING_SAMPLE = 100_000


# -- building the version ----------------------------------------------------------------------
def _bench_index():
    """bench/index.py as a module (bench/ is not a package): its catalog generator and report writer."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_index", os.path.join(REPO, "bench", "index.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def index_params(n: int):
    from indexer.scann_index import TREE_AH, IndexParams

    leaves = max(10, int(round(TUNED_LEAVES * math.sqrt(n / TUNED_N))))
    search = max(1, int(round(leaves * TUNED_LEAVES_TO_SEARCH / TUNED_LEAVES)))
    return IndexParams(kind=TREE_AH, num_leaves=leaves, num_leaves_to_search=search,
                       training_sample_size=min(n, TRAINING_SAMPLE), reorder_k=TUNED_REORDER)


def build_query_tower(path: str, query_vectors) -> None:
    """Export the query tower: user_id -> table[hash(user_id) mod users], L2-normalised."""
    import tensorflow as tf

    buckets = int(query_vectors.shape[0])
    table = tf.constant(query_vectors)

    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(user_id):
        rows = tf.gather(table, tf.strings.to_hash_bucket_fast(user_id, buckets))
        return {"embedding": tf.math.l2_normalize(rows, axis=1)}

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def write_items(path: str, item_ids: list[str], cluster_of, db) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, d = db.shape
    titles = [f"item {i} (cluster {int(c)})" for i, c in zip(range(n), cluster_of)]
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    embedding = pa.ListArray.from_arrays(offsets, pa.array(db.reshape(-1), type=pa.float32()))
    pq.write_table(pa.table({"item_id": pa.array(item_ids, type=pa.string()),
                             "title": pa.array(titles, type=pa.string()),
                             "embedding": embedding}), path)


def build_store(args, store: str, log) -> dict:
    """Generate data, build tower + index, publish one version into ``store``; returns build facts."""
    import numpy as np

    clustered = _bench_index().clustered
    from core.store import VersionStore
    from indexer.scann_index import build_with_params, save_searcher

    facts = {}
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    # Same draws as bench/index.py (centres, then the catalog), but cluster ids are kept for titles.
    centres = rng.normal(size=(args.clusters, DIMS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    db, _ = clustered(args.n, DIMS, args.clusters, args.spread, rng, centres)
    queries, _ = clustered(args.users, DIMS, args.clusters, args.spread, rng, centres)
    # Nearest centre as a display label (cheap: one matmul in chunks).
    cluster_of = np.concatenate([np.argmax(db[s:s + 100_000] @ centres.T.astype(np.float32), axis=1)
                                 for s in range(0, args.n, 100_000)])
    facts["data_seconds"] = round(time.perf_counter() - t, 1)
    log(f"data: {args.n:,} x {DIMS}, {args.clusters} clusters, {args.users:,} users ({facts['data_seconds']}s)")

    work = os.path.dirname(store)
    staging = os.path.join(work, "staging")
    from core.contracts import files as names

    os.makedirs(os.path.join(staging, names.VERSION_INDEX_DIR))
    t = time.perf_counter()
    build_query_tower(os.path.join(staging, names.QUERY_TOWER_DIR), queries)
    facts["tower_seconds"] = round(time.perf_counter() - t, 1)
    log(f"query tower SavedModel written ({facts['tower_seconds']}s)")

    params = index_params(args.n)
    t = time.perf_counter()
    searcher = build_with_params(db, params, k=10)
    facts["index_build_seconds"] = round(time.perf_counter() - t, 1)
    save_searcher(searcher, os.path.join(staging, names.VERSION_SCANN_DIR))
    del searcher
    log(f"ScaNN index built: leaves {params.num_leaves}, search {params.num_leaves_to_search}, "
        f"reorder {params.reorder_k} ({facts['index_build_seconds']}s)")

    t = time.perf_counter()
    width = len(str(args.n - 1))
    item_ids = [f"i{i:0{width}d}" for i in range(args.n)]
    with open(os.path.join(staging, names.VERSION_ITEM_IDS_FILE), "w", encoding="utf-8") as fh:
        fh.write("\n".join(item_ids) + "\n")
    write_items(os.path.join(staging, names.VERSION_ITEMS_FILE), item_ids, cluster_of, db)
    with open(os.path.join(staging, names.QUERY_TABLE_FILE), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"user_id": f"u{u}"}) + "\n" for u in range(args.users))
    with open(os.path.join(staging, names.SEEN_FILE), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"key": f"u{u}", "train": [], "valid": [], "test": []}) + "\n"
                      for u in range(args.users))
    index_metrics = {"kind": params.kind, "params": params.to_dict(), "dims": DIMS, "n_items": args.n,
                     "source": "bench/serve.py: fixed tuner choice from bench/index.py --clusters 1500"}
    manifest = {
        "run_id": "bench-serve",
        "metrics": {},
        "index": index_metrics,
        "lineage": {"code": "bench/serve.py", "seed": args.seed},
        # The shape publishing.publish.serving_section writes.
        "serving": {
            "query_key": "user_id",
            "query_key_type": "id",
            "query_features": [{"name": "user_id", "type": "id"}],
            "display_fields": ["title"],
            "index_kind": index_metrics["kind"],
            "reorder_k": params.reorder_k,
            "embedding_dims": DIMS,
        },
    }
    # Exact top-k of a few users through the real tower, to check what the service answers.
    from core.towers import Tower
    from indexer.scann_index import exact_topk_chunked

    check_users = [f"u{u}" for u in range(min(args.users, args.check_users))]
    vectors = Tower(os.path.join(staging, names.QUERY_TOWER_DIR)).embed({"user_id": check_users})
    exact = exact_topk_chunked(db, vectors, args.k)
    facts["exact"] = {u: [item_ids[int(i)] for i in row] for u, row in zip(check_users, exact)}

    vs = VersionStore(store)
    version = vs.new_version_id()
    vs.publish(version, staging, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    facts["publish_seconds"] = round(time.perf_counter() - t, 1)
    facts["version"] = version
    facts["params"] = params.to_dict()
    size = 0
    for root, _, files in os.walk(vs.version_path(version)):
        size += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    facts["version_mb"] = round(size / 2 ** 20, 1)
    log(f"published {version} ({facts['version_mb']} MB; items/tables/publish {facts['publish_seconds']}s)")
    return facts


# -- the server ----------------------------------------------------------------------------------
def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body or b"{}")
    finally:
        conn.close()


def served_recall(port: int, exact: dict[str, list[str]], k: int) -> float | None:
    """Mean |served top-k ∩ exact top-k| / k over the check users (one keep-alive connection)."""
    if not exact:
        return None
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    hits = []
    try:
        for user, truth in exact.items():
            conn.request("POST", "/v1/retrieve", body=json.dumps({"user_id": user, "k": k}).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"recall check: HTTP {resp.status} for {user}: {data[:200]!r}")
            got = [item["item_id"] for item in json.loads(data)["items"]]
            hits.append(len(set(got) & set(truth)) / k)
    finally:
        conn.close()
    return round(sum(hits) / len(hits), 4)


def start_server(store: str, work: str, ready_timeout: float, log,
                 extra_args: tuple = ()) -> tuple[subprocess.Popen, int, dict, str]:
    """Start ``pipelines.cli serve`` (+ ``extra_args``) on 127.0.0.1:<free port>; return (proc, port, /readyz,
    log path)."""
    out_path = os.path.join(work, "serve.stdout")
    err_path = os.path.join(work, "serve.stderr")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--store", store, "--host", HOST,
                                 "--port", "0", "--poll-seconds", "3600", "--log-level", "WARNING",
                                 *extra_args],
                                cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    marker = f"listening on http://{HOST}:"
    port = None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {_tail(err_path)}")
            if time.monotonic() - t > ready_timeout:
                raise TimeoutError(f"server not ready within {ready_timeout}s: {_tail(err_path)}")
            if port is None:
                with open(out_path) as fh:
                    text = fh.read()
                if marker in text:
                    port = int(text.split(marker)[1].split()[0])
            if port is not None:
                try:
                    status, body = _get(port, "/readyz")
                except OSError:
                    status, body = 0, {}
                if status == 200:
                    body["seconds_to_ready"] = round(time.monotonic() - t, 1)
                    return proc, port, body, err_path
            time.sleep(0.2)
    except BaseException:
        stop_server(proc)
        raise


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path) as fh:
            return fh.read()[-n:]
    except OSError:
        return ""


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A live process's resident set size (``VmRSS``; ``VmHWM`` for the peak), MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- the clients ---------------------------------------------------------------------------------
def client(worker: int, port: int, users: int, k: int, seconds: float, seed: int, barrier, results,
           close_each: bool = False) -> None:
    """One client process: persistent connection, warm-up, barrier, then requests for ``seconds``.

    ``close_each``: a new TCP connection per request (``Connection: close``) instead; a request's
    time then includes its connect.
    """
    rng = random.Random(seed * 1000 + worker)
    lat: list[float] = []
    errors = 0
    first_error = None
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    headers = {"Content-Type": "application/json", **({"Connection": "close"} if close_each else {})}

    def one() -> str | None:
        body = json.dumps({"user_id": f"u{rng.randrange(users)}", "k": k}).encode()
        try:
            conn.request("POST", "/v1/retrieve", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            if close_each:
                conn.close()  # http.client opens a new connection for the next request
        if resp.status != 200:
            return f"HTTP {resp.status}: {data[:200]!r}"
        n = len(json.loads(data)["items"])
        return None if n == k else f"{n} items, expected {k}"

    try:
        warm = one()
        if warm:
            first_error = f"warm-up: {warm}"
    except Exception as exc:  # reported, not raised: the parent counts it
        first_error = f"warm-up: {type(exc).__name__}: {exc}"
        conn.close()
    try:
        barrier.wait(timeout=120)
    except Exception as exc:  # a sibling never started: measure anyway, say so
        first_error = first_error or f"barrier: {type(exc).__name__}"
    start = time.perf_counter()
    end = start + seconds
    last = start
    while True:
        t = time.perf_counter()
        if t >= end:
            break
        try:
            problem = one()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            conn.close()  # http.client reconnects on the next request
        last = time.perf_counter()
        if problem:
            errors += 1
            first_error = first_error or problem
        else:
            lat.append(last - t)
    conn.close()
    results.put({"worker": worker, "latencies": lat, "errors": errors, "first_error": first_error,
                 "elapsed": last - start})


def percentile_ms(lat: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in ms."""
    if not lat:
        return None
    return round(lat[min(len(lat) - 1, int(math.ceil(p / 100 * len(lat))) - 1)] * 1000, 2)


def load_test(port: int, clients: int, users: int, k: int, seconds: float, seed: int, target=None) -> dict:
    """``clients`` spawned processes running ``target`` (default :func:`client`; same signature),
    summarised: requests, errors, p50 / p99 / max / mean ms, queries/s over the longest window."""
    ctx = mp.get_context("spawn")  # no fork of a process that has TensorFlow loaded
    barrier = ctx.Barrier(clients)
    results = ctx.Queue()
    procs = [ctx.Process(target=target or client, args=(w, port, users, k, seconds, seed, barrier, results),
                         daemon=True)
             for w in range(clients)]
    for p in procs:
        p.start()
    got = []
    deadline = time.monotonic() + seconds + 180
    while len(got) < clients and time.monotonic() < deadline:
        try:
            got.append(results.get(timeout=5))
        except Exception:  # queue.Empty
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    missing = clients - len(got)
    lat = sorted(x for r in got for x in r["latencies"])
    errors = sum(r["errors"] for r in got) + missing
    first = next((r["first_error"] for r in got if r["first_error"]), None)
    if missing:
        first = first or f"{missing} client process(es) reported nothing"
    window = max((r["elapsed"] for r in got), default=0.0)
    return {"clients": clients, "requests": len(lat), "errors": errors, "first_error": first,
            "p50_ms": percentile_ms(lat, 50), "p99_ms": percentile_ms(lat, 99), "max_ms": round(lat[-1] * 1000, 2) if lat else None,
            "mean_ms": round(sum(lat) / len(lat) * 1000, 2) if lat else None,
            "qps": round(len(lat) / window, 1) if window > 0 else 0.0, "window_s": round(window, 2)}


# -- report --------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    p = report["build"]["params"]
    lines = [f"{report['n']:,} items x {DIMS} dims ({report['clusters']} clusters), {report['users']:,} users, "
             f"k={report['k']}, {report['seconds']:g} s per client count; index leaves {p['num_leaves']}, "
             f"search {p['num_leaves_to_search']}, reorder {p['reorder_k']}; {report['date_utc']}; "
             f"`{report['command']}`", "",
             "| server --max-batch | repeat | concurrent clients | requests | errors | p50 ms | p99 ms | max ms "
             "| queries/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['max_batch']} | {r['repeat']} | {r['clients']} | {r['requests']:,} | {r['errors']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['qps']:,.0f} |")
    if len(report["max_batches"]) > 1 or report["repeats"] > 1:
        lines += ["", "Median over repeats:", "",
                  "| server --max-batch | concurrent clients | p50 ms | p99 ms | queries/s |", "|---|---|---|---|---|"]
        for mb in report["max_batches"]:
            for c in report["clients"]:
                cell = [r for r in report["runs"] if r["max_batch"] == mb and r["clients"] == c]
                med = {key: statistics.median(r[key] for r in cell if r[key] is not None)
                       for key in ("p50_ms", "p99_ms", "qps")}
                lines.append(f"| {mb} | {c} | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} | {med['qps']:,.0f} |")
    b, s = report["build"], report["server"]
    lines += ["", f"Build: data {b['data_seconds']} s, query tower {b['tower_seconds']} s, index "
                  f"{b['index_build_seconds']} s, items/tables + publish {b['publish_seconds']} s; version "
                  f"{b['version_mb']} MB. Server: start to ready {s['seconds_to_ready']} s (load + verify + warm "
                  f"{s.get('load_seconds')} s), served recall@{report['k']} vs exact {s['recall_at_k_vs_exact']} "
                  f"({s['recall_users']} users), RSS {s['rss_mb_ready']} MB ready, {s['rss_mb_end']} MB after the "
                  f"load test. {report['cpus']} CPU cores; server and clients on the same machine."]
    errs = [r for r in report["runs"] if r["errors"]]
    for r in errs:
        lines.append(f"Errors at {r['clients']} clients, first: {r['first_error']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="catalog size (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="100,000 items")
    ap.add_argument("--seconds", type=float, default=15.0, help="measuring window per client count")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    ap.add_argument("--clusters", type=int, default=1500)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--users", type=int, default=10_000, help="query table size (user ids u0..)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-users", type=int, default=200,
                    help="users whose served top-k is compared with exact search before the load test")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds the server may take to load")
    ap.add_argument("--work-dir", default="", help="where the store goes (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the store and server logs")
    ap.add_argument("--out", default="", help="also write serve-<timestamp>.json / .md into this folder")
    ap.add_argument("--max-batch", default="64", help="comma-separated server --max-batch values, each its own "
                                                      "server, interleaved over --repeats (e.g. 1,64)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the --max-batch values")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 100_000
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    batches = [int(b) for b in args.max_batch.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.repeats < 1:
        ap.error("need --max-batch values >= 1 and --repeats >= 1")
    if not counts or min(counts) < 1 or args.n < 1000 or args.users < 1 or args.seconds <= 0 \
            or not 1 <= args.k <= 1000 or args.check_users < 0:
        ap.error("need --clients >= 1, --n >= 1000, --users >= 1, --seconds > 0, 1 <= --k <= 1000, "
                 "--check-users >= 0")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = args.work_dir or tempfile.mkdtemp(prefix="twotower-bench-serve-")
    os.makedirs(work, exist_ok=True)
    store = os.path.join(work, "store")
    proc = None
    try:
        build = build_store(args, store, log)
        exact = build.pop("exact")
        runs, server = [], None
        for repeat in range(1, args.repeats + 1):
            for mb in batches:
                proc, port, ready, err_path = start_server(store, work, args.ready_timeout, log,
                                                           ("--max-batch", str(mb)))
                if server is None:  # the first server's start-up and served recall stand for all
                    server = {"pid": proc.pid, "port": port, "seconds_to_ready": ready["seconds_to_ready"],
                              "load_seconds": (ready.get("last_reload") or {}).get("seconds"),
                              "version": ready.get("version"), "rss_mb_ready": rss_mb(proc.pid)}
                    log(f"server ready on {HOST}:{port} after {server['seconds_to_ready']}s "
                        f"(RSS {server['rss_mb_ready']} MB)")
                    server["recall_at_k_vs_exact"] = served_recall(port, exact, args.k)
                    server["recall_users"] = min(args.users, args.check_users)
                    log(f"served recall@{args.k} vs exact over {server['recall_users']} users: "
                        f"{server['recall_at_k_vs_exact']}")
                for c in counts:
                    r = {"max_batch": mb, "repeat": repeat,
                         **load_test(port, c, args.users, args.k, args.seconds, args.seed + repeat)}
                    runs.append(r)
                    log(f"max-batch {mb}, {c} clients: {r['requests']} requests, {r['errors']} errors, "
                        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['qps']} q/s")
                    if proc.poll() is not None:
                        raise RuntimeError(f"server died during the load test: {_tail(err_path)}")
                server["rss_mb_end"] = rss_mb(proc.pid)
                stop_server(proc)
                proc = None
    finally:
        if proc is not None:
            stop_server(proc)
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            log(f"kept {work}")
    report = {"date_utc": stamp, "command": " ".join(["bench/serve.py"] + sys.argv[1:] if argv is None
                                                      else ["bench/serve.py"] + list(argv)),
              "n": args.n, "clusters": args.clusters, "users": args.users, "k": args.k, "seconds": args.seconds,
              "cpus": os.cpu_count(), "platform": platform.platform(), "build": build, "server": server,
              "runs": runs, "max_batches": batches, "clients": counts, "repeats": args.repeats}
    text = markdown(report)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        _bench_index().write_report(os.path.join(args.out, f"serve-{stamp}"), report, text)
    return 0 if all(r["errors"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
