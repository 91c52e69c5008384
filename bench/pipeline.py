"""Benchmark the whole local pipeline: seconds per stage and quality, median over repeats.

    .venv/bin/python bench/pipeline.py --dataset shop --repeats 3
    .venv/bin/python bench/pipeline.py --dataset movielens --repeats 3   # needs ../shared/data/movielens-100k

Each repeat is a full ``twotower run`` through the KFP local runner (fresh run folder and
store), so the figures include every component's process start. Prints a Markdown table
for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)

MOVIELENS_RAW = REPO.parent / "shared" / "data" / "movielens-100k"
CONFIGS = {"shop": REPO / "core" / "configs" / "shop.yaml", "movielens": REPO / "core" / "configs" / "movielens.yaml"}
QUALITY = ["recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10", "popularity_recall_at_10"]


def prepare_data(dataset: str, folder: Path) -> Path:
    """Write the dataset in the canonical format into ``folder``; returns its path."""
    if dataset == "shop":
        from datagen.synth_shop import generate_shop

        generate_shop(str(folder))
    else:
        from datagen.movielens import convert_movielens

        if not MOVIELENS_RAW.exists():
            raise SystemExit(f"{MOVIELENS_RAW} is absent; MovieLens benchmark skipped")
        convert_movielens(str(MOVIELENS_RAW), str(folder))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="shop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from core.config import load_config
    from pipelines.local_run import run_local

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        data = prepare_data(args.dataset, Path(tmp) / "data")
        for repeat in range(args.repeats):
            config = load_config(CONFIGS[args.dataset], [
                f"data.path={data}", f"publish.store={tmp}/store-{repeat}", f"pipeline.runs_dir={tmp}/runs",
                *args.overrides])
            started = time.perf_counter()
            summary = run_local(config)
            summary["wall_seconds"] = time.perf_counter() - started
            runs.append(summary)
            print(f"repeat {repeat + 1}/{args.repeats}: {summary['wall_seconds']:.1f}s wall, "
                  f"recall@10 {summary['metrics']['recall_at_10']:.4f}, published {summary['published']}",
                  flush=True)

    def median(values):
        return statistics.median(values)

    print(f"\n### {args.dataset}: median of {len(runs)} runs\n")
    print("| stage | seconds (median) | min | max |\n|---|---|---|---|")
    for stage in runs[0]["stage_seconds"]:
        vals = [r["stage_seconds"][stage] for r in runs]
        print(f"| {stage} | {median(vals):.1f} | {min(vals):.1f} | {max(vals):.1f} |")
    walls = [r["wall_seconds"] for r in runs]
    print(f"| whole run (wall, incl. process starts) | {median(walls):.1f} | {min(walls):.1f} | {max(walls):.1f} |")
    print("\n| metric | median | min | max |\n|---|---|---|---|")
    for key in QUALITY:
        vals = [r["metrics"][key] for r in runs]
        print(f"| {key} | {median(vals):.4f} | {min(vals):.4f} | {max(vals):.4f} |")
    index_qps = [r["index"]["qps_batched"] for r in runs]
    print(f"| index queries/s (batched, {runs[0]['index']['kind']}) | {median(index_qps):.0f} | "
          f"{min(index_qps):.0f} | {max(index_qps):.0f} |")
    print(f"\npublished: {sum(r['published'] for r in runs)}/{len(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
