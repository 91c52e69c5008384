"""Learned-from-scratch text towers (``shop``) against the sentence-encoder towers
(``shop-encoder``) on the synth-shop set: the test split, and queries in words no training query
used (datagen/shop_paraphrases.py).

    .venv/bin/python bench/paraphrases.py                       # seeds 0, 1, 2
    .venv/bin/python bench/paraphrases.py --seeds 0 --configs shop-encoder

Per seed: ``twotower data``'s synth-shop generator (that seed) writes the dataset; each config
runs the whole pipeline on it as a user would (``twotower run`` in a child process, the data,
``train.seed`` and ``transform.seed`` set to the seed). Then the published version answers every
paraphrase (``Retriever.retrieve``, k = 10), and each answer is judged by the catalogue's own
category column: category precision@10 (the share of the 10 items in the asked-for category) and
category hit@1. Also recorded: test recall@10 and popularity's (the run's evaluate stage), each
stage's wall / CPU seconds and peak RSS (summary.json), and the query service's p50 / p99 ms per
text request over the paraphrases (one call each, after one warm-up call). Writes
``bench/results/paraphrases-<UTC>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import run_pipeline  # noqa: E402
from evaluation.paraphrases import judge_paraphrases  # noqa: E402

STAGES = ("transform", "train", "evaluate", "embed", "index")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--configs", default="shop,shop-encoder")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides for every run")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    import pandas as pd

    from datagen.synth_shop import PARAPHRASES_FILE, generate_shop

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-paraphrases-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    runs = []
    for seed in seeds:
        data = work / f"data-{seed}"
        generate_shop(str(data), seed=seed)
        paraphrases = pd.read_csv(data / PARAPHRASES_FILE)
        for config in configs:
            folder = work / f"{config}-{seed}"
            run = run_pipeline(folder, data, None, [f"train.seed={seed}", f"transform.seed={seed}", *args.overrides],
                               config=config)
            summary = run["summary"]
            resources = summary.get("stage_resources") or {}
            record = {"seed": seed, "config": config, "recall_at_10": summary["metrics"]["recall_at_10"],
                      "popularity_recall_at_10": summary["metrics"]["popularity_recall_at_10"],
                      "published": summary.get("published"),
                      "stages": {s: {"seconds": summary["stage_seconds"].get(s), **(resources.get(s) or {})}
                                 for s in STAGES},
                      "run_wall_seconds": run["run_wall_seconds"],
                      **judge_paraphrases(str(folder / "store"), str(data / "items.csv"), paraphrases)}
            runs.append(record)
            print(f"[paraphrases] seed {seed} {config}: {json.dumps(record)}", flush=True)

    def mean_sd(config: str, key: str) -> str:
        values = [r[key] for r in runs if r["config"] == config]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    command = " ".join([".venv/bin/python", "bench/paraphrases.py", *sys.argv[1:]])
    lines = [f"Command: `{command}`  ", f"Date (UTC): {stamp}; seeds {seeds}.", "",
             "| config | test recall@10 | paraphrase category precision@10 | paraphrase category hit@1 | "
             "transform s | train s | p50 / p99 ms per text request |", "|---|---|---|---|---|---|---|"]
    for config in configs:
        rs = [r for r in runs if r["config"] == config]
        transform = statistics.median(r["stages"]["transform"]["seconds"] or 0 for r in rs)
        train = statistics.median(r["stages"]["train"]["seconds"] or 0 for r in rs)
        lines.append(f"| {config} | {mean_sd(config, 'recall_at_10')} | {mean_sd(config, 'category_precision_at_10')} | "
                     f"{mean_sd(config, 'category_hit_at_1')} | {transform:.1f} | {train:.1f} | "
                     f"{statistics.median(r['p50_ms'] for r in rs):.2f} / "
                     f"{statistics.median(r['p99_ms'] for r in rs):.2f} |")
    out = Path(args.out_dir) / f"paraphrases-{stamp}"
    out.with_suffix(".json").write_text(json.dumps({"command": command, "date_utc": stamp, "runs": runs}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
