"""The transform stage with sentence-encoder features, against catalog size: wall / CPU seconds
and peak RSS of the transform alone, per config, in a child process each.

    .venv/bin/python bench/encode_transform.py                                  # 2,000 products
    .venv/bin/python bench/encode_transform.py --products 100000 --queries 30000 --configs shop-encoder-bce
    .venv/bin/python bench/encode_transform.py --repo /tmp/base --repo .        # two checkouts side by side

For each size, ``generate_shop`` writes a synth-shop set (``--products``, ``--queries``; seed 0) and
the ingest stage reads it once per config (not timed). Then each config's transform
(``features.transform.run_transform``, Beam in-process, the config's runner) runs in its own child
process, once per ``--repo`` checkout and ``--repeats`` times, alternating checkouts so drift hits
both alike. Recorded per run: wall seconds, CPU seconds (user + system of the child and its reaped
children) and the child's peak RSS in MB; reported as medians over the repeats, with the
interactions, distinct queries and products the transform read.

Writes ``bench/results/encode_transform-<UTC>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The child: one transform, from the checkout it runs in (so an older checkout can be measured
# with the same harness), printing its stats' row counts.
CHILD = """
import json, sys
sys.path.insert(0, ".")
from core.config import load_config
from features.transform import run_transform
config = load_config(sys.argv[1], sys.argv[2:-2])
stats = run_transform(config, sys.argv[-2], sys.argv[-1])
import resource
peak_kb = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print("STATS " + json.dumps({"peak_kb": peak_kb, **stats["counts"]}))
"""


def run_child(repo: Path, config: str, overrides: list[str], ingested: str, out: str) -> dict:
    """One transform in a child process -> {"wall_s", "cpu_s", "peak_rss_mb", "rows"} (rows:
    the stats' integer counts)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, config, *overrides, ingested, out],
                          cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"transform failed in {repo}:\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("STATS "))
    rows = json.loads(line[len("STATS "):])
    return {"wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": rows.pop("peak_kb") / 1024,  # the child's own (or its largest child's)
            "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", default="2000", help="comma-separated catalog sizes")
    parser.add_argument("--queries", default="3000", help="comma-separated distinct queries, one per size")
    parser.add_argument("--configs", default="shop,shop-encoder-bce")
    parser.add_argument("--repo", action="append", default=None, help="checkout to run (repeatable; default this one)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--set", action="append", default=[], help="config override for every run")
    args = parser.parse_args(argv)

    from core.config import load_config
    from datagen.synth_shop import generate_shop
    from features.ingest import ingest

    repos = [Path(r).resolve() for r in (args.repo or [str(REPO)])]
    sizes = list(zip([int(p) for p in args.products.split(",")], [int(q) for q in args.queries.split(",")]))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="encode-transform-"))
    results = []
    for products, queries in sizes:
        data = work / f"shop-{products}"
        started = time.perf_counter()
        counts = generate_shop(str(data), products=products, queries=queries, seed=0)
        print(f"[encode_transform] {products} products: data in {time.perf_counter() - started:.0f} s, {counts}",
              flush=True)
        for name in args.configs.split(","):
            overrides = [f"data.path={data}", *args.set]
            ingested = work / f"ingested-{products}-{name}"
            ingest(load_config(name, overrides), str(ingested))
            runs = {str(r): [] for r in repos}
            for round_ in range(args.repeats):
                for repo in repos:
                    out = work / f"transformed-{products}-{name}-{repos.index(repo)}-{round_}"
                    run = run_child(repo, name, overrides, str(ingested), str(out))
                    runs[str(repo)].append(run)
                    print(f"[encode_transform] {products} {name} {repo.name} round {round_}: "
                          f"{run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU", flush=True)
            for repo, done in runs.items():
                results.append({
                    "products": products, "queries": queries, "interactions": counts["interactions"],
                    "config": name, "repo": repo,
                    "wall_s": statistics.median(r["wall_s"] for r in done),
                    "cpu_s": statistics.median(r["cpu_s"] for r in done),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in done),
                    "runs": done})
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"encode_transform-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| products | queries | interactions | config | checkout | wall s | CPU s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['products']:,} | {r['queries']:,} | {r['interactions']:,} | {r['config']} | "
                     f"{Path(r['repo']).name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    (out_dir / f"encode_transform-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
