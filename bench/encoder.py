"""The sentence encoder's cost on this machine, by route: all-MiniLM-L6-v2 in TensorFlow
(core/sentence_encoder.py, the project's route) against sentence-transformers on PyTorch.

    .venv/bin/python bench/encoder.py                 # TF route; the PyTorch route when importable
    .venv/bin/python bench/encoder.py --routes tf --products 2000 --queries 500

Texts are the synth-shop set's own (``datagen.synth_shop``, seed 0, written to a scratch folder):
product texts as the transform would join them (title, description, bullet points, brand, colour)
and the search queries. Per route, in its own process (PyTorch and TensorFlow in one process
crash on this machine): the model load seconds; batch encode of every product and of every query
(items/s, queries/s: the Beam transform's case, batch 64); one query per call, ``--single``
calls (p50 / p99 ms: what serving adds per text request); the process's peak RSS. Rounds of the
two routes alternate (``--rounds``) and medians are reported. When both routes ran, the largest
absolute difference of their vectors is reported too. Writes ``bench/results/encoder-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def texts(products: int, queries: int, folder: str) -> tuple[list[str], list[str]]:
    """(product texts, query texts) from a generated synth-shop set."""
    import pandas as pd

    from datagen.synth_shop import generate_shop

    generate_shop(folder, products=products, queries=queries, seed=0)
    items = pd.read_csv(Path(folder) / "items.csv").fillna("")
    fields = [c for c in ("title", "description", "bullet_points", "brand", "color") if c in items.columns]
    product_texts = [" ".join(str(v) for v in row if str(v)) for row in items[fields].itertuples(index=False)]
    inter = pd.read_csv(Path(folder) / "interactions.csv")
    return product_texts, [str(q) for q in inter["query"].drop_duplicates().tolist()[:queries]]


def run_route(route: str, folder: str, data: str, single: int, out: str) -> None:
    """One route's measurements, in this (fresh) process; writes ``out`` (JSON + vectors .npy)."""
    import resource

    import numpy as np

    doc = json.loads(Path(data).read_text())
    began = time.perf_counter()
    if route == "tf":
        from core.sentence_encoder import SentenceEncoder

        model = SentenceEncoder(folder, batch_size=64)
        encode = model.encode
    else:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(folder, device="cpu")
        encode = lambda t: st.encode(t, batch_size=64, normalize_embeddings=False)  # noqa: E731
    load = time.perf_counter() - began
    encode(doc["queries"][:8])  # first call traces / warms up
    result = {"route": route, "load_s": round(load, 3)}
    for name in ("products", "queries"):
        began, cpu = time.perf_counter(), time.process_time()
        vectors = encode(doc[name])
        wall = time.perf_counter() - began
        result[f"{name}_per_s"] = round(len(doc[name]) / wall, 1)
        result[f"{name}_cpu_s"] = round(time.process_time() - cpu, 2)
        np.save(f"{out}.{name}.npy", vectors)
    latencies = []
    for q in doc["queries"][:single]:
        began = time.perf_counter()
        encode([q])
        latencies.append((time.perf_counter() - began) * 1e3)
    result["single_p50_ms"] = round(float(np.percentile(latencies, 50)), 3)
    result["single_p99_ms"] = round(float(np.percentile(latencies, 99)), 3)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(out).write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", default="tf,torch")
    ap.add_argument("--products", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=300, help="queries encoded one call each")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--_route", help=argparse.SUPPRESS)
    ap.add_argument("--_folder", help=argparse.SUPPRESS)
    ap.add_argument("--_data", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._route:
        run_route(args._route, args._folder, args._data, args.single, args._out)
        return

    import importlib.util

    import numpy as np

    from core.sentence_encoder import folder_checksum, packaged_model_folder

    routes = [r for r in args.routes.split(",") if r]
    if "torch" in routes and importlib.util.find_spec("sentence_transformers") is None:
        print("[encoder] sentence-transformers is not installed: the PyTorch route is skipped", flush=True)
        routes.remove("torch")
    folder = packaged_model_folder()
    scratch = tempfile.mkdtemp(prefix="bench-encoder-")
    product_texts, query_texts = texts(args.products, args.queries, scratch)
    data = Path(scratch) / "texts.json"
    data.write_text(json.dumps({"products": product_texts, "queries": query_texts}))
    runs: dict[str, list[dict]] = {r: [] for r in routes}
    for round_ in range(args.rounds):
        for route in routes:
            out = str(Path(scratch) / f"{route}-{round_}.json")
            subprocess.run([sys.executable, __file__, "--_route", route, "--_folder", folder, "--_data", str(data),
                            "--_out", out, "--single", str(args.single)], check=True)
            runs[route].append(json.loads(Path(out).read_text()))
            print(f"[encoder] round {round_ + 1} {route}: {runs[route][-1]}", flush=True)
    keys = ("load_s", "products_per_s", "queries_per_s", "single_p50_ms", "single_p99_ms", "peak_rss_mb")
    summary = {r: {k: statistics.median(x[k] for x in rs) for k in keys} for r, rs in runs.items()}
    result = {"command": " ".join([".venv/bin/python", "bench/encoder.py", *sys.argv[1:]]),
              "date_utc": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
              "model_folder_sha256": folder_checksum(folder), "n_products": len(product_texts),
              "n_queries": len(query_texts), "rounds": args.rounds, "median": summary, "runs": runs}
    if len(routes) == 2:
        a, b = (np.load(str(Path(scratch) / f"{r}-0.json.products.npy")) for r in routes)
        result["max_abs_diff_products"] = float(np.abs(a - b).max())
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    out = Path(args.out_dir) / f"encoder-{result['date_utc']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
