"""Next-item retrieval on MovieLens-100K: our published model against the model-free baselines,
on the same split and with the same scoring code (bench/baselines.py's ``recall_at_k``).

    .venv/bin/python bench/next_item.py --protocol last_item --seeds 0,1,2
    .venv/bin/python bench/next_item.py --protocol cold_users --seeds 0,1,2 --variants attention
    .venv/bin/python bench/quality.py --only next_item        # both protocols, every variant

Protocols (bench/baselines.py): ``last_item`` holds out each user's last interaction and gives
the pipeline everything before it; ``cold_users`` leaves 10% of the users out of training
entirely and asks for each of them with their first 5 items as a request-time history, scored
on their next 10. Ours runs the pipeline's own stages (ingest, Beam transform, train with its
early stopping on its own internal split, evaluate, embed, index, gate, publish) on the
split's training folder, then answers through the published version as serving does
(``Retriever.resolve``: the query table's history for a known user, the request's clicks
for a cold one); its scores are the published query tower's embeddings against the published
item embeddings (the index is exact below 10,000 items), ranked by ``recall_at_k`` with the
baselines' seen masks.

Variants (``--variants``, comma-separated names of :data:`VARIANTS`) change the config; each
runs once per seed (``train.seed``). Prints a Markdown table; writes
``bench/results/next_item-<protocol>-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)

from bench import baselines  # noqa: E402

MOVIELENS_RAW = REPO.parent / "shared" / "data" / "movielens-100k"
RESULTS_DIR = REPO / "bench" / "results"
K = 10


def _history(pooling: str = "attention", max_length: int = 20, item_embedding: str = "separate") -> dict:
    return {"name": "history", "type": "history", "max_length": max_length, "pooling": pooling,
            "item_embedding": item_embedding}


_USER = [{"name": "user_id", "type": "id"}, {"name": "age", "type": "numeric"},
         {"name": "gender", "type": "categorical"}, {"name": "occupation", "type": "categorical"}]

def _variant(history: dict | None = None, refit: str = "full", ids: bool = True) -> dict:
    features = [*_USER, history] if history else _USER
    return {"schema.query_features": features, "train.refit": refit, "train.use_item_ids_as_features": ids}


_SHIPPED = _history("recency", item_embedding="shared")

#: name -> config overrides on core/configs/movielens-history.yaml. ``history`` is that config's
#: choice (recency-weighted mean over the item tower's id table, refit on every split,
#: ``train.anonymous_query_rate`` 0.3 from the config); the others change one thing each.
VARIANTS = {
    "history": _variant(_SHIPPED),
    "history_attention": _variant(_history("attention", item_embedding="shared")),
    "history_mean": _variant(_history("mean", item_embedding="shared")),
    "history_no_anonymous": {**_variant(_SHIPPED), "train.anonymous_query_rate": 0.0},
    "history_no_refit": _variant(_SHIPPED, refit="none"),
    "history_refit_continue": _variant(_SHIPPED, refit="continue"),
    "history_separate_table": _variant(_history("recency")),
    "history_no_item_ids": _variant(_history("recency"), ids=False),
    "history_50": _variant(_history("recency", max_length=50, item_embedding="shared")),
    "history_key_dropout": {**_variant(_SHIPPED), "train.query_key_dropout": 0.3},
    "no_history": _variant(None),
}


def split(protocol: str, work: Path) -> tuple[Path, list, list, dict]:
    """(training folder, queries [(request, targets, seen)], items, counts) of ``protocol``."""
    from datagen.movielens import convert_movielens

    canonical = work / "movielens"
    if not (canonical / "interactions.csv").exists():
        convert_movielens(str(MOVIELENS_RAW), str(canonical))
    out, holdout = work / f"{protocol}-train", work / f"{protocol}-holdout.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    if protocol == "last_item":
        counts = baselines.last_item_holdout(str(canonical), str(out), str(holdout))
        train = baselines._read_sequences(str(out))
        queries = [({"user_id": row["user_id"]}, [row["item_id"]], set(train[row["user_id"]]))
                   for row in baselines.read_jsonl(str(holdout))]
    else:
        counts = baselines.cold_user_split(str(canonical), str(out), str(holdout))
        queries = [({"history": row["history"]}, row["next"], set(row["history"]))
                   for row in baselines.read_jsonl(str(holdout))]
    return out, queries, baselines._read_items(str(out)), counts


def run_baselines(train_dir: Path, queries: list, items: list) -> dict:
    train = baselines._read_sequences(str(train_dir))
    histories = []
    for request, _, _ in queries:
        histories.append(train[request["user_id"]] if "user_id" in request else request["history"])
    return baselines.evaluate_baselines(train, items, [(h, t, s) for h, (_, t, s) in zip(histories, queries)], k=K)


def run_ours(overrides: dict, train_dir: Path, queries: list, items: list, work: Path, seed: int,
             transformed: dict) -> dict:
    """One pipeline run (in-process stages) and its published version's next-item figures."""
    from core.config import load_config
    from features.ingest import ingest
    from features.transform import run_transform
    from serving.retriever import Retriever

    run = work / f"run-{seed}-{hashlib.md5(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]}"
    shutil.rmtree(run, ignore_errors=True)
    config = load_config(REPO / "core" / "configs" / "movielens-history.yaml",
                         [f"data.path={train_dir}", f"publish.store={run}/store"]).with_overrides(
        {**overrides, "train.seed": seed})
    # The transform depends on the schema only: shared by variants that differ in training.
    key = json.dumps(config.schema.model_dump(by_alias=True), sort_keys=True)
    if key not in transformed:
        folder = work / f"transformed-{len(transformed)}"
        shutil.rmtree(folder, ignore_errors=True)
        ingest(config, str(folder / "ingested"))
        started = time.perf_counter()
        run_transform(config, str(folder / "ingested"), str(folder / "out"))
        transformed[key] = (folder / "out", time.perf_counter() - started)
    out, transform_s = transformed[key]
    training, train_s, metrics, result = train_to_publish(config, out, run)
    if not result["published"]:
        return {"published": False, "reasons": result["reasons"]}
    retriever = Retriever.load(config.publish.store)
    index = {item: i for i, item in enumerate(items)}
    table = np.zeros((len(items), int(retriever.manifest["serving"]["embedding_dims"])), dtype=np.float32)
    embeddings = _published_embeddings(retriever)
    for item, vector in embeddings.items():
        table[index[item]] = vector
    resolved = [retriever.resolve(request) for request, _, _ in queries]
    vectors = retriever.tower.embed({n: [r.features[n] for r in resolved] for n in retriever.tower.input_names})
    scores = vectors @ table.T
    targets = [[index[i] for i in t] for _, t, _ in queries]
    seen = [[index[i] for i in s if i in index] for _, _, s in queries]
    figures = baselines.recall_at_k(scores, targets, seen, K)
    return {"published": True, f"recall_at_{K}": figures[f"recall_at_{K}"], f"ndcg_at_{K}": figures[f"ndcg_at_{K}"],
            "internal_test_recall_at_10": metrics["recall_at_10"], "best_epoch": training["best_epoch"],
            "published_weights": training["published_weights"], "train_seconds": round(train_s, 1),
            "transform_seconds": round(transform_s, 1),
            "history_unknown": sum(r.history["ignored"] for r in resolved if r.history)}


def train_to_publish(config, transformed: Path, run: Path) -> tuple[dict, float, dict, dict]:
    """The stages after the transform, in process, into ``run``: (training.json, train stage wall
    seconds, metrics.json, the publish result). Evaluate gets no store: the gate's live
    comparison is not what these benches measure."""
    from indexer.build import build_index_stage
    from indexer.embed import embed_items
    from publishing.publish import gate_and_publish
    from evaluation.evaluate import evaluate_model
    from trainer.train import train_model

    started = time.perf_counter()
    training = train_model(config, str(transformed), str(run / "model"))
    train_s = time.perf_counter() - started
    metrics = evaluate_model(config, str(transformed), str(run / "model"), str(run / "eval"))
    embed_items(config, str(transformed), str(run / "model"), str(run / "emb"))
    build_index_stage(config, str(run / "emb"), str(run / "index"))
    result = gate_and_publish(config, str(transformed), str(run / "model"), str(run / "emb"), str(run / "index"),
                              metrics, run_id=run.name, lineage={"run_id": run.name})
    return training, train_s, metrics, result


def _published_embeddings(retriever) -> dict:
    import pyarrow.parquet as pq

    from core.contracts.files import VERSION_ITEMS_FILE

    frame = pq.read_table(os.path.join(retriever.folder, VERSION_ITEMS_FILE), columns=["item_id", "embedding"])
    return {str(i): np.asarray(e, dtype=np.float32)
            for i, e in zip(frame.column("item_id").to_pylist(), frame.column("embedding").to_pylist())}


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(protocol: str, result: dict) -> str:
    base = result["baselines"]
    rows = [f"**{protocol}**: {base['queries']} queries x {base['items']} items, seen masked, seeds "
            f"{result['seeds']}", "", f"| model | recall@{K} | ndcg@{K} | recall / transition (last 3) | "
            f"recall / EASE | train s |", "|---|---|---|---|---|---|"]
    transition = base["transition_last3"][f"recall_at_{K}"]
    ease = base["ease"][f"recall_at_{K}"]
    for name in ("popularity", "ease", "transition_last3", "transition_chosen"):
        r = base[name][f"recall_at_{K}"]
        rows.append(f"| {name} | {r:.4f} | {base[name][f'ndcg_at_{K}']:.4f} | {r / transition:.2f}x | "
                    f"{r / ease:.2f}x | |")
    for name, runs in result["ours"].items():
        ok = [r for r in runs if r.get("published")]
        if not ok:
            rows.append(f"| ours: {name} | not published | | | | |")
            continue
        rec = [r[f"recall_at_{K}"] for r in ok]
        m = statistics.fmean(rec)
        rows.append(f"| ours: {name} | {mean_sd(rec)} | {mean_sd([r[f'ndcg_at_{K}'] for r in ok])} | "
                    f"{m / transition:.2f}x | {m / ease:.2f}x | {statistics.fmean(r['train_seconds'] for r in ok):.0f} |")
    return "\n".join(rows)


def run(protocol: str, variants: list[str], seeds: list[int], work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    train_dir, queries, items, counts = split(protocol, work)
    result = {"protocol": protocol, "seeds": seeds, "split": counts,
              "baselines": run_baselines(train_dir, queries, items), "ours": {}}
    transformed: dict = {}
    for name in variants:
        result["ours"][name] = []
        for seed in seeds:
            figures = run_ours(VARIANTS[name], train_dir, queries, items, work, seed, transformed)
            print(f"[next_item] {protocol} {name} seed {seed}: {json.dumps(figures)}", flush=True)
            result["ours"][name].append(figures)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=("last_item", "cold_users"), default="last_item")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work-dir", default="/tmp/twotower-next-item")
    args = parser.parse_args(argv)
    if not (MOVIELENS_RAW / "u.data").exists():
        print(f"[next_item] {MOVIELENS_RAW} is absent: skipped")
        return 0
    started = time.perf_counter()
    result = run(args.protocol, args.variants.split(","), [int(s) for s in args.seeds.split(",")],
                 Path(args.work_dir))
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = "bench/next_item.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = table(args.protocol, result)
    print(text)
    write_results(f"next_item-{args.protocol}", result, text)
    return 0


def write_results(name: str, result: dict, text: str) -> None:
    """``bench/results/<name>-<UTC timestamp>.json`` (the result) and ``.md`` (the table)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS_DIR / f"{name}-{stamp}.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
