"""Daily replay of MovieLens-100K: warm-started retrains against cold ones, day by day.

    .venv/bin/python bench/daily_replay.py --days 5            # the last 5 data dates, core/configs/movielens-history.yaml
    .venv/bin/python bench/daily_replay.py --days 5 --set train.warm_start_epochs=1
    .venv/bin/python bench/daily_replay.py --days 5 --chain fresh=train.warm_start_optimizer=fresh

The interactions are cut into day partitions by timestamp (UTC). For each of the last
``--days`` data dates d, the dataset is every interaction up to the end of d (the catalog and
users as they are), and two chains each run the pipeline's stages on it (ingest, Beam
transform, train, evaluate, embed, index, gate, publish into their own store):

- cold: ``train.warm_start`` off, every day trained from random weights (n_epochs, early stopping);
- warm: ``train.warm_start`` on, day d starts from the weights of the version the chain
  published for day d - 1 (its first day has no live version: a cold start) and trains
  ``train.warm_start_epochs``.

Each ``--chain NAME=key=value[,key=value...]`` adds another warm chain with those overrides
(on top of ``--set``), run side by side with the others on the same days. All chains share
each day's transform. Reported per day and chain: train seconds (wall, the
train stage alone), recall@10 on the run's own held-out test split (evaluate), and next-day
recall@10: each user with interactions on day d + 1 who is in the published query table,
asked by user id with seen items excluded, scored on the items they rated on day d + 1
(bench/baselines.py's ``recall_at_k``). Writes ``bench/results/daily_replay-<timestamp>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)

from bench import baselines  # noqa: E402
from bench.next_item import MOVIELENS_RAW, _published_embeddings, train_to_publish, write_results  # noqa: E402

K = 10


def day_folders(canonical: Path, work: Path, days: int) -> list[tuple[str, Path, pd.DataFrame]]:
    """(data date, dataset folder with every interaction up to its end, next day's rows)."""
    inter = pd.read_csv(canonical / "interactions.csv", dtype={"user_id": str, "item_id": str})
    day = pd.to_datetime(inter["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    dates = sorted(day.unique())
    out = []
    for date, following in zip(dates[-days - 1:-1], dates[-days:]):
        folder = work / f"date={date}"
        if not (folder / "interactions.csv").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for name in ("users.csv", "items.csv"):
                shutil.copy(canonical / name, folder / name)
            inter[day <= date].to_csv(folder / "interactions.csv", index=False)
        out.append((date, folder, inter[day == following]))
    return out


def next_day_recall(store: str, next_rows: pd.DataFrame) -> dict:
    """recall@10 of the store's live version on the next day's items of the users it knows."""
    from serving.retriever import Retriever

    retriever = Retriever.load(store)
    items = list(retriever.items)
    index = {item: i for i, item in enumerate(items)}
    embeddings = _published_embeddings(retriever)
    table = np.stack([embeddings[i] for i in items])
    users = [u for u in sorted(next_rows["user_id"].unique()) if u in retriever.query_table]
    resolved = [retriever.resolve({"user_id": u}) for u in users]
    vectors = retriever.tower.embed({n: [r.features[n] for r in resolved] for n in retriever.tower.input_names})
    by_user = next_rows.groupby("user_id")["item_id"].apply(list).to_dict()
    seen = [[index[i] for i in retriever.seen.get(u, ()) if i in index] for u in users]
    targets = [[index[i] for i in set(by_user[u]) - set(retriever.seen.get(u, ())) if i in index] for u in users]
    keep = [j for j, t in enumerate(targets) if t]
    figures = baselines.recall_at_k((vectors @ table.T)[keep], [targets[j] for j in keep], [seen[j] for j in keep], K)
    return {"users": len(keep), f"recall_at_{K}": figures[f"recall_at_{K}"]}


def run_day(chain: str, date: str, transformed: Path, config, work: Path, next_rows: pd.DataFrame) -> dict:
    run = work / f"{chain}-{date}"
    shutil.rmtree(run, ignore_errors=True)
    # The gate's live comparison is left out: this replay compares the chains, not the gate.
    training, train_s, metrics, result = train_to_publish(config, transformed, run)
    row = {"chain": chain, "date": date, "train_seconds": round(train_s, 1), "epochs": len(training["history"]),
           "warm_from": (training.get("warm_start") or {}).get("from"), "test_recall_at_10": metrics["recall_at_10"],
           "published": result["published"]}
    if result["published"]:
        row.update({f"next_day_{k}": v for k, v in next_day_recall(config.publish.store, next_rows).items()})
    print(f"[replay] {json.dumps(row)}", flush=True)
    return row


def parse_chains(specs: list[str]) -> dict[str, list[str]]:
    """{"cold": [...], "warm": [...], NAME: [its overrides]} from ``--chain`` specs."""
    chains = {"cold": ["train.warm_start=false"], "warm": ["train.warm_start=true"]}
    for spec in specs:
        name, _, overrides = spec.partition("=")
        if not name or not overrides or name in chains:
            raise SystemExit(f"--chain {spec!r}: expected NAME=key=value[,key=value...] with a new NAME")
        chains[name] = ["train.warm_start=true", *overrides.split(",")]
    return chains


def run(days: int, overrides: list[str], work: Path, config_path: Path, chains: dict[str, list[str]]) -> dict:
    from core.config import load_config
    from datagen.movielens import convert_movielens
    from features.ingest import ingest
    from features.transform import run_transform

    canonical = work / "movielens"
    if not (canonical / "interactions.csv").exists():
        convert_movielens(str(MOVIELENS_RAW), str(canonical))
    rows = []
    for chain in chains:  # a chain starts with no live version
        shutil.rmtree(work / f"{chain}-store", ignore_errors=True)
    for date, folder, next_rows in day_folders(canonical, work / "days", days):
        base = [f"data.path={folder}", *overrides]
        configs = {chain: load_config(config_path, [*base, f"publish.store={work}/{chain}-store", *extra])
                   for chain, extra in chains.items()}
        transformed = work / f"transformed-{date}"
        shutil.rmtree(transformed, ignore_errors=True)
        ingest(configs["cold"], str(transformed / "ingested"))
        run_transform(configs["cold"], str(transformed / "ingested"), str(transformed / "out"))
        for chain, config in configs.items():
            rows.append(run_day(chain, date, transformed / "out", config, work, next_rows))
    return {"days": days, "config": str(config_path), "overrides": overrides, "chains": chains, "rows": rows}


def table(result: dict) -> str:
    rows = result["rows"]
    lines = ["| data date | chain | started from | epochs | train s | test recall@10 | next-day recall@10 (users) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['date']} | {r['chain']} | {r['warm_from'] or 'random'} | {r['epochs']} | "
                     f"{r['train_seconds']:.1f} | {r['test_recall_at_10']:.4f} | "
                     f"{r.get('next_day_recall_at_10', float('nan')):.4f} ({r.get('next_day_users', 0)}) |")
    # Only the days the warm chains did start warm (their first day has no live version yet).
    warm_days = {r["date"] for r in rows if r["chain"] == "warm" and r["warm_from"]}
    chains = list(dict.fromkeys(r["chain"] for r in rows))
    summary = {}
    for chain in chains:
        mine = [r for r in rows if r["chain"] == chain and r["date"] in warm_days]
        if not mine:
            return "\n".join(lines + ["", "no warm-started day (needs --days >= 2)"])
        summary[chain] = {"train_seconds": statistics.median(r["train_seconds"] for r in mine),
                          "test": statistics.fmean(r["test_recall_at_10"] for r in mine),
                          "next_day": statistics.fmean(r.get("next_day_recall_at_10", 0.0) for r in mine)}
    lines += ["", f"Over the {len(warm_days)} warm-started day(s) (ratios against cold; per day: test recall):", "",
              "| chain | median train s | mean test recall@10 | mean next-day recall@10 | train s | test recall "
              "| per day |", "|---|---|---|---|---|---|---|"]
    cold = summary["cold"]
    by_day = {(r["chain"], r["date"]): r["test_recall_at_10"] for r in rows}
    for chain, s in summary.items():
        per_day = " ".join(f"{by_day[(chain, d)] / by_day[('cold', d)]:.2f}x" for d in sorted(warm_days))
        s["train_seconds_ratio"] = s["train_seconds"] / cold["train_seconds"]
        s["test_ratio"] = s["test"] / cold["test"]
        lines.append(f"| {chain} | {s['train_seconds']:.1f} | {s['test']:.4f} | {s['next_day']:.4f} | "
                     f"{s['train_seconds_ratio']:.2f}x | {s['test_ratio']:.3f}x | {per_day} |")
    result["summary"] = summary
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--config", default=str(REPO / "core" / "configs" / "movielens-history.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--chain", dest="chains", action="append", default=[],
                        help="another warm chain: NAME=key=value[,key=value...] (overrides on top of --set)")
    parser.add_argument("--work-dir", default="/tmp/twotower-replay")
    args = parser.parse_args(argv)
    chains = parse_chains(args.chains)
    if not (MOVIELENS_RAW / "u.data").exists():
        print(f"[replay] {MOVIELENS_RAW} is absent: skipped")
        return 0
    started = time.perf_counter()
    result = run(args.days, args.overrides, Path(args.work_dir), Path(args.config), chains)
    text = table(result)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = "bench/daily_replay.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(text)
    write_results("daily_replay", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
