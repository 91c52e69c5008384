"""Text requests through ``twotower serve``: what the sentence encoder adds per query over HTTP.

    .venv/bin/python bench/paraphrases.py --seeds 0 --configs shop,shop-encoder --work-dir W
    .venv/bin/python bench/serve_text.py --store W/shop-0/store --store W/shop-encoder-0/store \\
        --queries W/data-0/paraphrases.csv

For each store in turn (so they never share the cores): the real service
(``python -m pipelines.cli serve``, bench/serve.py's ``start_server``) on 127.0.0.1, one client on
one persistent HTTP/1.1 connection sending ``POST /v1/retrieve {"query": <text>, "k": 10}`` for
every query of ``--queries`` (a CSV with a ``query`` column), ``--rounds`` times, after one warm-up
request; each request is timed to the end of its body. Any answer but a 200 with k items is an
error. Reports p50 / p99 ms per store, and each store's p50 minus the first store's (the
baseline). Markdown on stdout; ``--out-dir`` gets ``serve_text-<UTC>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve import HOST, percentile_ms, start_server, stop_server  # noqa: E402


def time_requests(port: int, texts: list[str], rounds: int, k: int) -> dict:
    """p50 / p99 ms of ``rounds`` passes over ``texts`` on one connection, and the error count."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    headers = {"Content-Type": "application/json"}

    def ask(text: str) -> bool:
        conn.request("POST", "/v1/retrieve", body=json.dumps({"query": text, "k": k}), headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status == 200 and len(json.loads(body)["items"]) == k

    ask("warm up")
    latencies, errors = [], 0
    for _ in range(rounds):
        for text in texts:
            began = time.perf_counter()
            ok = ask(text)
            latencies.append(time.perf_counter() - began)  # seconds: percentile_ms's unit
            errors += not ok
    conn.close()
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", action="append", required=True, help="a publish store (first = baseline)")
    ap.add_argument("--queries", required=True, help="CSV with a query column")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    import pandas as pd

    texts = [str(t) for t in pd.read_csv(args.queries)["query"]]
    results = []
    for store in args.store:
        with tempfile.TemporaryDirectory(prefix="bench-serve-text-") as work:
            proc, port, ready, _ = start_server(store, work, 300.0, print)
            try:
                record = {"store": store, "version": ready.get("version"),
                          "seconds_to_ready": ready.get("seconds_to_ready"),
                          **time_requests(port, texts, args.rounds, args.k)}
            finally:
                stop_server(proc)
        results.append(record)
        print(f"[serve_text] {json.dumps(record)}", flush=True)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    command = " ".join([".venv/bin/python", "bench/serve_text.py", *sys.argv[1:]])
    base = results[0]["p50_ms"]
    lines = [f"Command: `{command}`  ", f"Date (UTC): {stamp}; {len(texts)} queries x {args.rounds} rounds per store.",
             "", "| store | requests | errors | p50 ms | p99 ms | p50 minus the baseline's |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['store']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['p50_ms'] - base:+.2f} |")
    out = Path(args.out_dir) / f"serve_text-{stamp}"
    out.with_suffix(".json").write_text(json.dumps({"command": command, "date_utc": stamp, "runs": results},
                                                   indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
