"""The whole pipeline against catalog size: per-stage wall / CPU seconds and peak RSS, quality, the index.

    .venv/bin/python bench/scale.py                                  # 10k, 100k and 1M items
    .venv/bin/python bench/scale.py --items 10000,100000 --epochs 4
    .venv/bin/python bench/scale.py --items 1000000 --keep /tmp/scale-1m  # keep data, runs and store

For each catalog size N (``--items``): ``twotower data synth-interactions`` writes N items, N x
``--users-per-item`` users and N x ``--interactions-per-item`` interactions (defaults 0.5 and 10:
1M items -> 500k users, 10M interactions; seed 0), then ``twotower run --config
core/configs/synth-interactions.yaml`` runs the whole local pipeline on it as a user would (a separate
process; the KFP local runner starts every step in its own process), with ``data.path``,
``publish.store`` and ``pipeline.runs_dir`` pointed into a scratch folder and ``train.n_epochs`` =
``--epochs`` (default: the config's, early stopping on). The sizes run one after another, smallest
first, nothing else in parallel.

Recorded per size (``bench/results/scale-<UTC>.json``):

- per stage, from the run's ``summary.json`` (``stage_seconds``, ``stage_resources``, written by
  ``components.runtime.run_stage`` inside each step's process): wall seconds, CPU seconds (user +
  system of the step's process and its reaped children, e.g. Beam workers) and peak RSS in MB (the
  step's process or its largest child). Step-process start and imports are outside a stage's figures;
  the whole run's wall time, CPU time and largest process are recorded too;
- the data generation's wall seconds (not a pipeline stage);
- quality: test recall@10 of the model and of the popularity baseline (``evaluate``, sampled at
  ``evaluate.max_queries`` keys with its 95% interval), whether the gate published;
- the index: kind, tuned parameters, tie-aware recall@10 against exact search on real query
  embeddings, batched queries/s, numpy brute force queries/s on the same queries and the ratio;
- how cost grows: for each stage the exponent b of cost ~ N^b between consecutive sizes
  (log(cost ratio) / log(size ratio)); b = 1 is linear.

Writes ``bench/results/scale-<UTC>.json`` and ``.md`` (Markdown tables), and ``--svg`` (default
``docs/images/scale.svg``): wall seconds per stage against catalog size, both axes log10.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = REPO / "core" / "configs" / "synth-interactions.yaml"
STAGES = ("ingest", "transform", "train", "evaluate", "embed", "index", "publish")


def generate(folder: Path, items: int, users: int, interactions: int) -> float:
    """Write the dataset; returns wall seconds."""
    from datagen.synth_interactions import generate_interactions

    started = time.perf_counter()
    generate_interactions(str(folder), items=items, users=users, interactions=interactions, seed=0)
    return time.perf_counter() - started


def run_pipeline(work: Path, data: Path, epochs: int | None, overrides: list[str], config: str = str(CONFIG)) -> dict:
    """One ``twotower run --config config`` in a child process; returns its summary.json plus the
    whole run's wall seconds, CPU seconds and largest process (RSS MB) from the reaped children's
    rusage."""
    runs, store = work / "runs", work / "store"
    command = [sys.executable, "-m", "pipelines.cli", "run", "--config", config,
               "--set", f"data.path={data}", "--set", f"publish.store={store}",
               "--set", f"pipeline.runs_dir={runs}"]
    if epochs:
        command += ["--set", f"train.n_epochs={epochs}"]
    for item in overrides:
        command += ["--set", item]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    log = work / "run.log"
    work.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.run(command, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"twotower run failed (exit {proc.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    from core.contracts.files import SUMMARY_FILE

    summaries = sorted(runs.glob(f"*/{SUMMARY_FILE}"))
    if len(summaries) != 1:
        raise SystemExit(f"expected one run under {runs}, found {len(summaries)}")
    summary = json.loads(summaries[0].read_text())
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"summary": summary, "run_wall_seconds": round(wall, 1), "run_cpu_seconds": round(cpu, 1),
            "largest_process_rss_mb": round(after.ru_maxrss * 1024 / 1e6, 1)}


def size_record(items: int, users: int, interactions: int, generate_seconds: float, run: dict) -> dict:
    summary = run["summary"]
    resources = summary.get("stage_resources") or {}
    stages = {s: {"seconds": summary["stage_seconds"].get(s), **(resources.get(s) or {})} for s in STAGES
              if s in summary["stage_seconds"]}
    index = summary["index"]
    tuning = index.get("tuning") or {}
    return {
        "items": items, "users": users, "interactions": interactions,
        "generate_seconds": round(generate_seconds, 1),
        "stages": stages,
        "run_wall_seconds": run["run_wall_seconds"], "run_cpu_seconds": run["run_cpu_seconds"],
        "largest_process_rss_mb": run["largest_process_rss_mb"],
        "peak_stage_rss_mb": max((v.get("peak_rss_mb") or 0.0) for v in stages.values()),
        "recall_at_10": summary["metrics"]["recall_at_10"],
        "popularity_recall_at_10": summary["metrics"]["popularity_recall_at_10"],
        "n_queries": summary["metrics"].get("n_queries"),
        "published": summary["published"], "reasons": summary["reasons"],
        "index": {k: index.get(k) for k in ("kind", "n_items", "recall_at_10_vs_exact", "qps_batched",
                                            "qps_single", "qps_brute_force", "speedup_vs_brute_force", "params")},
        "tuner_met_target": tuning.get("met_target"), "tuner_reason": tuning.get("reason"),
    }


def growth(records: list[dict], key) -> list[float | None]:
    """Exponents b (cost ~ items^b) between consecutive sizes for ``key(record) -> cost``."""
    out = []
    for a, b in zip(records, records[1:]):
        ca, cb = key(a), key(b)
        ok = ca and cb and ca > 0 and cb > 0
        out.append(round(math.log(cb / ca) / math.log(b["items"] / a["items"]), 2) if ok else None)
    return out


def markdown(records: list[dict]) -> str:
    sizes = [f"{r['items']:,}" for r in records]
    lines = ["| stage | " + " | ".join(f"{s} items: wall s / CPU s / peak RSS MB" for s in sizes)
             + " | growth exponent of wall (CPU) between sizes |",
             "|---|" + "---|" * len(records) + "---|"]
    for stage in STAGES:
        cells = []
        for r in records:
            v = r["stages"].get(stage) or {}
            cells.append(f"{v.get('seconds', float('nan')):.1f} / {v.get('cpu_seconds', float('nan')):.1f} / "
                         f"{v.get('peak_rss_mb', float('nan')):,.0f}")
        wall = growth(records, lambda r: (r["stages"].get(stage) or {}).get("seconds"))
        cpu = growth(records, lambda r: (r["stages"].get(stage) or {}).get("cpu_seconds"))
        exps = ", ".join(f"{w} ({c})" for w, c in zip(wall, cpu))
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {exps} |")
    whole_wall = growth(records, lambda r: r["run_wall_seconds"])
    whole_cpu = growth(records, lambda r: r["run_cpu_seconds"])
    lines.append("| **whole run** (process start to end) | " + " | ".join(
        f"{r['run_wall_seconds']:.0f} / {r['run_cpu_seconds']:.0f} / {r['largest_process_rss_mb']:,.0f}"
        for r in records) + " | " + ", ".join(f"{w} ({c})" for w, c in zip(whole_wall, whole_cpu)) + " |")
    lines += ["", "| items | users | interactions | recall@10 | popularity recall@10 | published | index | "
              "index recall@10 vs exact | index q/s | brute force q/s | speed-up | tuner |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        i = r["index"]
        lines.append(
            f"| {r['items']:,} | {r['users']:,} | {r['interactions']:,} | {r['recall_at_10']:.4f} | "
            f"{r['popularity_recall_at_10']:.4f} | {'yes' if r['published'] else 'no'} | {i['kind']} | "
            f"{i['recall_at_10_vs_exact']} | {i['qps_batched']:,.0f} | {(i['qps_brute_force'] or 0):,.0f} | "
            f"{i['speedup_vs_brute_force']}x | {r['tuner_reason'] or 'not tuned'} |")
    return "\n".join(lines)


def chart(records: list[dict], path: Path) -> None:
    from core.svg_chart import Series, line_chart

    series = [Series(stage, [(math.log10(r["items"]), r["stages"][stage]["seconds"]) for r in records
                             if (r["stages"].get(stage) or {}).get("seconds")]) for stage in STAGES]
    series.append(Series("whole run", [(math.log10(r["items"]), r["run_wall_seconds"]) for r in records]))
    svg = line_chart(series, title="Pipeline cost against catalog size (10 interactions per item, 2 cores)",
                     x_label="log10 items", y_label="wall seconds (log scale)", log_y=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", default="10000,100000,1000000")
    ap.add_argument("--users-per-item", type=float, default=0.5)
    ap.add_argument("--interactions-per-item", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=None, help="train.n_epochs (default: the config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    ap.add_argument("--keep", default=None, help="scratch folder to keep (default: a temp folder, deleted)")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--svg", default=str(REPO / "docs" / "images" / "scale.svg"))
    args = ap.parse_args(argv)

    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    records = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("items", "users_per_item", "interactions_per_item", "epochs",
                                               "overrides")}
    try:
        for items in (int(x) for x in args.items.split(",")):
            users = max(1, int(items * args.users_per_item))
            interactions = items * args.interactions_per_item
            work = scratch / f"items-{items}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            seconds = generate(work / "data", items, users, interactions)
            print(f"[scale] {items:,} items: data generated in {seconds:.1f}s; running the pipeline", flush=True)
            record = size_record(items, users, interactions, seconds,
                                 run_pipeline(work, work / "data", args.epochs, args.overrides))
            print(json.dumps(record), flush=True)
            records.append(record)
            # Written after every size, so a long run leaves its finished sizes behind.
            (out / f"scale-{stamp}.json").write_text(json.dumps({"settings": settings, "sizes": records}, indent=2))
            if not args.keep:
                shutil.rmtree(work / "data", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    table = markdown(records)
    (out / f"scale-{stamp}.md").write_text(table + "\n")
    chart(records, Path(args.svg))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
