"""Retrieval quality: our two-tower model vs the TFRS basic-retrieval tutorial model, side by side.

    .venv/bin/python bench/quality.py                      # everything (~45 min on 2 CPU cores)
    .venv/bin/python bench/quality.py --quick              # smoke test: 1 seed, 2 epochs, B and C
    .venv/bin/python bench/quality.py --protocols A --seeds 0,1,2 --skip-ablation
    .venv/bin/python bench/quality.py --protocols B,C --only ablation,cold
    .venv/bin/python bench/quality.py --protocols B --only sweep --variant T=0.03:train.temperature=0.03 \\
        --variant T=0.1:train.temperature=0.1 [--cold]

Protocols (each transformed ONCE; ours and the reference train on that same split, per seed):

Part ``next_item`` (not in the default run; ~2 min per run): bench/next_item.py's protocols, each
user's last interaction held out (ours as published vs popularity, EASE, item transitions)
and users left out of training served from their first 5 items.

- A  MovieLens-100K, TFRS tutorial protocol: hashed 80/20 split (seed 42; 5 % valid for our
     early stopping), hit rate at K over all items, seen items NOT masked, averaged per test
     interaction (``evaluate.per=interaction``, ``evaluate.mask_seen=false``).
- B  MovieLens-100K, leave-last-out per user, seen items masked (core/configs/movielens.yaml as is).
- C  synth-shop (``twotower data synth-shop`` defaults, core/configs/shop.yaml as is).

Parts (``--only``): ``compare`` (ours vs reference, mean ± sd over seeds), ``throughput``
(ids-only ours vs the reference at equal batch sizes, MovieLens), ``ablation`` (one seed: each
negative strategy and feature group toggled against the protocol's default config), ``cold``
(``transform.cold_item_fraction=0.1``, every seed: hit rate of the held-out items among all
items and among the cold ones, vs chance, the ceiling and a content-profile yardstick), ``sweep``
(ours only, each ``--variant`` over every seed: validation recall@10 to choose on, test metrics
and with ``--cold`` the cold slice; not part of the default run).

Prints Markdown tables and writes ``bench/results/quality-<timestamp>.json`` (+ ``.md``).
MovieLens protocols are skipped when ../shared/data/movielens-100k is absent.
Options that the trainer / evaluator / transform do not implement yet are detected by
reading their source and reported as skipped rather than silently measured as the default.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)
from core.contracts.files import TRAINING_FILE  # noqa: E402

MOVIELENS_RAW = REPO.parent / "shared" / "data" / "movielens-100k"
RESULTS_DIR = REPO / "bench" / "results"

PROTOCOLS = {
    "A": {"dataset": "movielens", "config": "core/configs/movielens.yaml",
          "title": "A. MovieLens-100K, TFRS tutorial protocol (random 80/20, seed 42, "
                   "per-interaction hit rate, seen not masked)",
          "overrides": {"transform.split": "hashed", "transform.test_fraction": 0.2,
                        "transform.valid_fraction": 0.05, "transform.seed": 42,
                        "evaluate.per": "interaction", "evaluate.mask_seen": False},
          "needs": ["evaluate_per"]},
    "B": {"dataset": "movielens", "config": "core/configs/movielens.yaml",
          "title": "B. MovieLens-100K, leave-last-out per user, seen items masked",
          "overrides": {}, "needs": []},
    "C": {"dataset": "shop", "config": "core/configs/shop.yaml",
          "title": "C. synth-shop (defaults), hashed split, seen items masked",
          "overrides": {}, "needs": []},
}

METRICS = ["recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10"]

#: (feature implemented?) -> (file, marker strings any of which shows the implementation).
FEATURE_MARKERS = {
    "evaluate_per": ("evaluation/evaluate.py", ["evaluate.per", ".per =="]),
    "mask_seen": ("evaluation/evaluate.py", ["mask_seen"]),
    "slices": ("evaluation/evaluate.py", ["slices"]),
    "cold_items": ("features/transform.py", ["cold_item_fraction"]),
    "mixed_negatives": ("trainer", ["negative_samples_count"]),
    "negative_sampling": ("trainer", ["negative_sampling"]),
    "labelled_negatives": ("trainer", ["labelled_negative_weight"]),
    "hard_negatives": ("trainer", ["hard_negatives"]),
}


@functools.lru_cache(maxsize=None)
def implemented(feature: str) -> bool:
    """Whether the pipeline code already reads the config option behind ``feature``.

    Cached: ``main`` checks every feature once at start, before any pipeline module is
    imported, so a file edited later in the run cannot make a variant look implemented
    while the already-imported (older) code silently ignores it.
    """
    where, markers = FEATURE_MARKERS[feature]
    path = REPO / where
    files = sorted(path.glob("*.py")) if path.is_dir() else [path]
    text = "\n".join(f.read_text() for f in files if f.exists())
    return any(m in text for m in markers)


# --------------------------------------------------------------------------------------------
# data preparation

def prepare_dataset(dataset: str, work: Path) -> Path | None:
    """Canonical dataset folder under ``work`` (None when MovieLens raw files are absent)."""
    folder = work / "data" / dataset
    if (folder / "interactions.csv").exists():
        return folder
    if dataset == "shop":
        from datagen.synth_shop import generate_shop

        generate_shop(str(folder))  # the `twotower data synth-shop` defaults
        return folder
    if not (MOVIELENS_RAW / "u.data").exists():
        print(f"[quality] {MOVIELENS_RAW} is absent: MovieLens protocols skipped", flush=True)
        return None
    from datagen.movielens import convert_movielens

    convert_movielens(str(MOVIELENS_RAW), str(folder))
    return folder


def base_config(protocol: str, data: Path, work: Path, extra: dict | None = None,
                user_overrides: list[str] = ()):
    """The protocol's config: its YAML + the protocol overrides + ``--set`` overrides + ``extra``."""
    from core.config import load_config

    spec = PROTOCOLS[protocol]
    sets = [f"data.path={data}", f"publish.store={work}/store", f"pipeline.runs_dir={work}/runs"]
    sets += [f"{k}={json.dumps(v)}" for k, v in spec["overrides"].items()]
    sets += list(user_overrides)
    config = load_config(REPO / spec["config"], sets)
    if extra:
        config = config.with_overrides(extra)
    return config


class Stages:
    """Ingest once per dataset, transform once per (protocol, transform settings)."""

    def __init__(self, work: Path):
        self.work = work
        self.ingested: dict[str, str] = {}
        self.transformed: dict[str, tuple[str, dict]] = {}

    def transformed_dir(self, name: str, config) -> tuple[str, dict]:
        from features.ingest import ingest
        from features.transform import run_transform

        if name in self.transformed:
            return self.transformed[name]
        dataset = Path(config.data.path).name
        if dataset not in self.ingested:
            out = self.work / "ingested" / dataset
            shutil.rmtree(out, ignore_errors=True)
            ingest(config, str(out))
            self.ingested[dataset] = str(out)
        out = self.work / "transformed" / name
        # Always a fresh transform (the pipeline code may have changed since a kept --work-dir).
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        stats = run_transform(config, self.ingested[dataset], str(out))
        print(f"[quality] transform {name}: {stats.get('counts')} in {time.perf_counter() - started:.0f}s",
              flush=True)
        self.transformed[name] = (str(out), stats)
        return self.transformed[name]


# --------------------------------------------------------------------------------------------
# one run of ours / the reference

def run_ours(config, transformed: str, out: Path) -> dict:
    from evaluation.evaluate import evaluate_model
    from trainer.train import train_model

    shutil.rmtree(out, ignore_errors=True)  # train.resume would pick up a stale checkpoint
    started = time.perf_counter()
    training = train_model(config, transformed, str(out / "model"))
    train_s = time.perf_counter() - started
    metrics = evaluate_model(config, transformed, str(out / "model"), str(out / "eval"))
    return {"metrics": metrics, "train_seconds": train_s, "best_epoch": training.get("best_epoch"),
            "epochs": len(training.get("history", [])),
            "examples_per_second": training.get("examples_per_second")}


def run_reference(config, transformed: str, out: Path, seed: int, settings=None) -> dict:
    from bench.reference import ReferenceSettings, train_reference
    from evaluation.evaluate import evaluate_model

    settings = settings or ReferenceSettings()
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    training = train_reference(config, transformed, str(out / "model"), seed=seed, settings=settings)
    train_s = time.perf_counter() - started
    metrics = evaluate_model(config, transformed, str(out / "model"), str(out / "eval"))
    return {"metrics": metrics, "train_seconds": train_s, "epochs": len(training["history"]),
            "examples_per_second": training["examples_per_second"]}


# --------------------------------------------------------------------------------------------
# statistics and tables

def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 4) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def metric_names(protocol: str, metrics: dict) -> list[tuple[str, str]]:
    """(key, label) rows; protocol A labels recall as the tutorial's hit rate."""
    rows = []
    for key in METRICS:
        if key in metrics:
            label = key.replace("recall_at_", "hit rate@" if protocol == "A" else "recall@") \
                       .replace("ndcg_at_", "ndcg@")
            rows.append((key, label))
    return rows


def compare_table(protocol: str, result: dict) -> str:
    ours, ref = result["ours"], result["reference"]
    if not ours or not ref:
        return ""
    seeds = result["seeds"]
    lines = [f"#### {PROTOCOLS[protocol]['title']}", "",
             f"Mean ± sd over seeds {seeds}; test split: {ours[0]['metrics'].get('n_queries')} "
             f"queries x {ours[0]['metrics'].get('n_items')} items.", "",
             "| metric | ours | TFRS reference | ours / reference | popularity |",
             "|---|---|---|---|---|"]
    for key, label in metric_names(protocol, ours[0]["metrics"]):
        o = [r["metrics"][key] for r in ours]
        f = [r["metrics"][key] for r in ref]
        pop = ours[0]["metrics"].get("popularity", {}).get(key)
        ratio = mean_sd(o)[0] / mean_sd(f)[0] if mean_sd(f)[0] > 0 else float("nan")
        lines.append(f"| {label} | {fmt(o)} | {fmt(f)} | {ratio:.2f}x | "
                     f"{'' if pop is None else f'{pop:.4f}'} |")
    o = [r["train_seconds"] for r in ours]
    f = [r["train_seconds"] for r in ref]
    lines.append(f"| train seconds (wall) | {fmt(o, 0)} | {fmt(f, 0)} | {mean_sd(o)[0] / mean_sd(f)[0]:.2f}x | |")
    lines.append(f"| epochs run (ours: early stopping) | {fmt([r['epochs'] for r in ours], 1)} | "
                 f"{fmt([r['epochs'] for r in ref], 1)} | | |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# parts

def part_compare(protocol: str, stages: Stages, data: Path, work: Path, seeds: list[int], args) -> dict:
    config = base_config(protocol, data, work, user_overrides=args.overrides)
    transformed, stats = stages.transformed_dir(protocol, config)
    result = {"protocol": protocol, "seeds": seeds, "transform_counts": stats.get("counts"),
              "config_overrides": PROTOCOLS[protocol]["overrides"], "ours": [], "reference": []}
    ref_settings = reference_settings(args)
    for seed in seeds:
        cfg = config.with_overrides({"train.seed": seed, **quick_train(args)})
        print(f"[quality] {protocol} seed {seed}: ours", flush=True)
        result["ours"].append({"seed": seed, **run_ours(cfg, transformed, work / "runs" / protocol / f"ours-{seed}")})
        print(f"[quality] {protocol} seed {seed}: reference", flush=True)
        result["reference"].append({"seed": seed, **run_reference(
            cfg, transformed, work / "runs" / protocol / f"ref-{seed}", seed, ref_settings)})
    result["table"] = compare_table(protocol, result)
    print("\n" + result["table"] + "\n", flush=True)
    return result


def ids_config_towers() -> dict:
    """The tower sizes of core/configs/movielens-ids.yaml, the shipped ids-only configuration."""
    from bench.throughput import IDS_CONFIG
    from core.config import load_config

    train = load_config(IDS_CONFIG).train
    return {"train.embedding_dims": train.embedding_dims, "train.hidden_dims": list(train.hidden_dims)}


def part_throughput(stages: Stages, data: Path, work: Path, args) -> dict:
    """Training examples/s (median over 3 epochs, one run each) on protocol B's split, equal batch
    sizes: a quick look; ``bench/throughput.py`` is the interleaved, repeated, wall + CPU figure."""
    from bench.reference import ReferenceSettings
    from bench.throughput import ids_only_overrides

    config = base_config("B", data, work, user_overrides=args.overrides)
    transformed, _ = stages.transformed_dir("B", config)
    default_bs = config.train.batch_size
    rows = []
    for bs in sorted({8192, default_bs}, reverse=True):
        row = {"batch_size": bs, "loadavg_1min_before": os.getloadavg()[0]}
        try:
            cfg = config.with_overrides({**ids_only_overrides(config), **ids_config_towers(), "train.batch_size": bs,
                                         "train.n_epochs": 3, "train.patience": 10, "train.seed": 0})
            res = run_ours(cfg, transformed, work / "runs" / "throughput" / f"ours-{bs}")
            row["ours_ids_only"] = res["examples_per_second"]
            row["ours_ids_only_recall_at_10"] = res["metrics"]["recall_at_10"]
        except Exception as exc:  # reported in the table and JSON, not hidden
            traceback.print_exc()
            row["ours_ids_only_error"] = f"{type(exc).__name__}: {exc}"
        if bs == default_bs:  # (at 8192 it costs minutes per epoch on 2 cores; skipped)
            cfg = config.with_overrides({"train.n_epochs": 3, "train.patience": 10, "train.seed": 0,
                                         "train.batch_size": bs})
            res = run_ours(cfg, transformed, work / "runs" / "throughput" / f"ours-full-{bs}")
            row["ours_full"] = res["examples_per_second"]
        res = run_reference(config, transformed, work / "runs" / "throughput" / f"ref-{bs}", 0,
                            ReferenceSettings(batch_size=bs))
        row["reference"] = res["examples_per_second"]
        row["loadavg_1min_after"] = os.getloadavg()[0]
        rows.append(row)
    lines = ["#### Training throughput (MovieLens-100K leave-last-out train split, examples/s, "
             "median over 3 epochs)", "",
             "| batch size | ours, ids only | ours, default features | TFRS reference | "
             "ours ids-only / reference | 1-min load avg (before/after) |", "|---|---|---|---|---|---|"]
    for row in rows:
        ids = row.get("ours_ids_only")
        ids_s = f"{ids:,.0f}" if ids else f"failed: {row.get('ours_ids_only_error')}"
        ratio = f"{ids / row['reference']:.2f}x" if ids else "n/a"
        full = f"{row['ours_full']:,.0f}" if "ours_full" in row else "not run"
        lines.append(f"| {row['batch_size']} | {ids_s} | {full} | {row['reference']:,.0f} | {ratio} | "
                     f"{row['loadavg_1min_before']:.1f} / {row['loadavg_1min_after']:.1f} |")
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    return {"rows": rows, "table": table}


def ablation_variants(protocol: str, config) -> list[tuple[str, dict, list[str]]]:
    """(name, overrides, required features) toggled one at a time against the default config."""
    t, schema = config.train, config.schema
    key = schema.query_key
    out = [("default", {}, [])]
    out.append((f"logQ {'off' if t.logq_correction else 'on'}",
                {"train.logq_correction": not t.logq_correction}, []))
    out.append(("mixed negatives: +512 uniform",
                {"train.negative_samples_count": 512, "train.negative_sampling": "uniform"},
                ["mixed_negatives"]))
    out.append(("mixed negatives: +512 popularity",
                {"train.negative_samples_count": 512, "train.negative_sampling": "popularity"},
                ["mixed_negatives", "negative_sampling"]))
    if protocol == "C":
        out.append(("labelled negatives (weight 0.5)", {"train.labelled_negative_weight": 0.5},
                    ["labelled_negatives"]))
    out.append(("hard negatives (top 32 in-batch)", {"train.hard_negatives": 32}, ["hard_negatives"]))

    def dump(feats):
        return [{"name": f.name, "type": f.type} for f in feats]

    ids_on = t.use_item_ids_as_features
    out.append((f"item id embedding {'off' if ids_on else 'on'}", {"train.use_item_ids_as_features": not ids_on}, []))
    groups = {"text features off": ("text",), "categorical features off": ("categorical", "multi_categorical")}
    for name, types in groups.items():
        q = [f for f in schema.query_features if f.name == key or f.type not in types]
        i = [f for f in schema.item_features if f.type not in types]
        if len(q) < len(schema.query_features) or len(i) < len(schema.item_features):
            out.append((name, {"schema.query_features": dump(q), "schema.item_features": dump(i)}, []))
    if schema.user_features:
        out.append(("user features off",
                    {"schema.query_features": dump([f for f in schema.query_features if f.name == key])}, []))
    return out


def part_ablation(protocol: str, stages: Stages, data: Path, work: Path, args, compare: dict | None) -> dict:
    config = base_config(protocol, data, work, user_overrides=args.overrides)
    transformed, _ = stages.transformed_dir(protocol, config)
    seed = args.seed_list[0]
    rows = []
    wanted = set(args.ablations.split(",")) if args.ablations else None
    for name, overrides, needs in ablation_variants(protocol, config):
        if wanted is not None and name != "default" and not any(w in name for w in wanted):
            continue
        row = {"variant": name, "overrides": overrides}
        missing = [n for n in needs if not implemented(n)]
        if missing:
            row["skipped"] = f"not implemented in the trainer yet ({', '.join(missing)})"
            print(f"[quality] ablation {protocol} {name}: skipped, {row['skipped']}", flush=True)
            rows.append(row)
            continue
        if name == "default" and compare and compare.get("ours"):
            first = next((r for r in compare["ours"] if r["seed"] == seed), None)
            if first is not None:
                rows.append({**row, **first})
                continue
        try:
            cfg = config.with_overrides({**overrides, "train.seed": seed, **quick_train(args)})
            print(f"[quality] ablation {protocol}: {name}", flush=True)
            safe = "".join(c if c.isalnum() else "-" for c in name)
            rows.append({**row, **run_ours(cfg, transformed, work / "runs" / protocol / f"abl-{safe}")})
        except Exception as exc:  # reported in the table and JSON, not hidden
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    base = next((r for r in rows if r["variant"] == "default" and "metrics" in r), None)
    rec = "hit rate" if protocol == "A" else "recall"  # per test interaction under protocol A
    lines = [f"#### Ablation, protocol {protocol} (seed {seed}; each row changes one thing vs the default)", "",
             f"| variant | {rec}@10 | Δ vs default | ndcg@10 | Δ vs default | {rec}@100 | epochs | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "metrics" not in r:
            lines.append(f"| {r['variant']} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        m = r["metrics"]
        d10 = "" if base is None or r is base else f"{m['recall_at_10'] - base['metrics']['recall_at_10']:+.4f}"
        dn = "" if base is None or r is base else f"{m['ndcg_at_10'] - base['metrics']['ndcg_at_10']:+.4f}"
        lines.append(f"| {r['variant']} | {m['recall_at_10']:.4f} | {d10} | {m['ndcg_at_10']:.4f} | {dn} | "
                     f"{m.get('recall_at_100', float('nan')):.4f} | {r['epochs']} | {r['train_seconds']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    return {"rows": rows, "table": table}


def part_cold(protocol: str, stages: Stages, data: Path, work: Path, args) -> dict:
    """``transform.cold_item_fraction=0.1``: cold test pairs retrieved by ours (default and
    with the item-id embedding flipped, every seed) and the reference (first seed), against
    chance, the all-items ceiling and a content-profile yardstick (:mod:`bench.cold`)."""
    if not implemented("cold_items"):
        return {"skipped": "transform.cold_item_fraction not implemented in features/transform.py yet"}
    from bench.cold import KS, cold_figures, content_profile_scores, load_cold_test_set, model_scores, yardsticks

    config = base_config(protocol, data, work, extra={"transform.cold_item_fraction": 0.1},
                         user_overrides=args.overrides)
    transformed, stats = stages.transformed_dir(f"{protocol}-cold", config)
    cold_set = load_cold_test_set(config, transformed)
    ids_on = config.train.use_item_ids_as_features
    flipped = {"train.use_item_ids_as_features": not ids_on}
    models = [("ours (default)", {}, args.seed_list), (f"ours, item id embedding {'off' if ids_on else 'on'}",
                                                        flipped, args.seed_list),
              ("TFRS reference", None, args.seed_list[:1])]
    rows = []
    for name, overrides, seeds in models:
        runs = []
        for seed in seeds:
            print(f"[quality] cold {protocol}: {name} seed {seed}", flush=True)
            safe = "".join(c if c.isalnum() else "-" for c in name)
            out = work / "runs" / f"{protocol}-cold" / f"{safe}-{seed}"
            cfg = config.with_overrides({"train.seed": seed, **quick_train(args)})
            try:
                res = (run_reference(cfg, transformed, out, seed, reference_settings(args)) if overrides is None
                       else run_ours(cfg.with_overrides(overrides), transformed, out))
                res["cold"] = cold_figures(model_scores(str(out / "model"), cold_set), cold_set)
            except Exception as exc:  # reported, not hidden
                traceback.print_exc()
                res = {"error": f"{type(exc).__name__}: {exc}"}
            runs.append({"seed": seed, **res})
        rows.append({"model": name, "runs": runs})
    profile = content_profile_scores(config, transformed, cold_set)
    baselines = {f"k{k}": yardsticks(cold_set, k) for k in KS}
    baselines["content_profile"] = None if profile is None else cold_figures(profile, cold_set)
    table = cold_table(protocol, rows, baselines, cold_set, args.seed_list)
    print("\n" + table + "\n", flush=True)
    return {"rows": rows, "baselines": baselines, "table": table, "transform_counts": stats.get("counts"),
            "cold_items": int(cold_set.cold.sum()), "cold_test_pairs": cold_set.n_pairs}


def cold_table(protocol: str, rows: list[dict], baselines: dict, cold_set, seeds: list[int]) -> str:
    """Markdown: every model's cold figures (mean ± sd over its seeds), then the yardsticks."""
    k10, k100 = baselines["k10"], baselines["k100"]

    def times(values: list[float], chance: float) -> str:
        return f"{statistics.fmean(values) / chance:.1f}x" if values else ""

    lines = [f"#### Cold items, protocol {protocol} (transform.cold_item_fraction=0.1; "
             f"{int(cold_set.cold.sum())} of {len(cold_set.cold)} items held out, {cold_set.n_pairs:,} cold test "
             f"pairs; ours: mean ± sd over seeds {seeds})", "",
             "| model | **hit rate@10, all items** | x chance | hit rate@100, all items | x chance | "
             "hit rate@10 among cold items | x chance | overall test recall@10 |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ok = [r for r in row["runs"] if "cold" in r]
        if not ok:
            lines.append(f"| {row['model']} | {row['runs'][0].get('error')} | | | | | | |")
            continue
        a10 = [r["cold"]["all_items_at_10"] for r in ok]
        a100 = [r["cold"]["all_items_at_100"] for r in ok]
        c10 = [r["cold"]["among_cold_at_10"] for r in ok]
        lines.append(f"| {row['model']} | {fmt(a10)} | {times(a10, k10['chance_all_items'])} | {fmt(a100)} | "
                     f"{times(a100, k100['chance_all_items'])} | {fmt(c10)} | {times(c10, k10['chance_among_cold'])} | "
                     f"{fmt([r['metrics']['recall_at_10'] for r in ok])} |")
    profile = baselines.get("content_profile")
    if profile:
        lines.append(f"| content profile (genre-like features; no training) | {profile['all_items_at_10']:.4f} | "
                     f"{profile['all_items_at_10'] / k10['chance_all_items']:.1f}x | {profile['all_items_at_100']:.4f} | "
                     f"{profile['all_items_at_100'] / k100['chance_all_items']:.1f}x | "
                     f"{profile['among_cold_at_10']:.4f} | "
                     f"{profile['among_cold_at_10'] / k10['chance_among_cold']:.1f}x | |")
    lines.append(f"| chance (uniformly random ranking) | {k10['chance_all_items']:.4f} | 1.0x | "
                 f"{k100['chance_all_items']:.4f} | 1.0x | {k10['chance_among_cold']:.4f} | 1.0x | |")
    lines.append(f"| ceiling (a perfect ranking; one top-K per user) | {k10['ceiling_all_items']:.4f} | "
                 f"{k10['ceiling_all_items'] / k10['chance_all_items']:.0f}x | {k100['ceiling_all_items']:.4f} | "
                 f"{k100['ceiling_all_items'] / k100['chance_all_items']:.0f}x | | | |")
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict]:
    """``"T=0.1:train.temperature=0.1;train.lr=0.01"`` -> ("T=0.1", {...}); values parsed as YAML."""
    from core.config import parse_override

    name, _, sets = text.partition(":")
    return name, dict(parse_override(s) for s in sets.split(";") if s.strip())


def part_sweep(protocol: str, stages: Stages, data: Path, work: Path, args) -> dict:
    """Ours only, every ``--variant`` x every seed: validation recall@10 (the only figure a
    setting may be chosen on), test metrics and, with ``--cold``, the cold-item slice."""
    extra = {"transform.cold_item_fraction": 0.1} if args.cold else None
    config = base_config(protocol, data, work, extra=extra, user_overrides=args.overrides)
    transformed, _ = stages.transformed_dir(f"{protocol}{'-cold' if args.cold else ''}", config)
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    rows = []
    for name, overrides in variants:
        runs = []
        for seed in args.seed_list:
            cfg = config.with_overrides({**overrides, "train.seed": seed, **quick_train(args)})
            print(f"[quality] sweep {protocol} {name} seed {seed}", flush=True)
            safe = "".join(c if c.isalnum() else "-" for c in name)
            out = work / "runs" / f"sweep-{protocol}" / f"{safe}-{seed}"
            res = run_ours(cfg, transformed, out)
            res["val_recall_at_10"] = json.loads((out / "model" / TRAINING_FILE).read_text()).get(
                "best_val_recall_at_10")
            runs.append({"seed": seed, **res})
        rows.append({"variant": name, "overrides": overrides, "runs": runs})

    def col(runs, get):
        values = [v for v in (get(r) for r in runs) if v is not None]
        return fmt(values) if values else "n/a"

    cold = lambda r: ((r["metrics"].get("slices") or {}).get("cold") or {})  # noqa: E731
    lines = [f"#### Sweep, protocol {protocol}{' with 10 % cold items' if args.cold else ''} "
             f"(mean ± sd over seeds {args.seed_list})", "",
             "| variant | valid recall@10 | test recall@10 | ndcg@10 | recall@100 | cold hit rate@10 | "
             "chance | epochs |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = row["runs"]
        chance = cold(runs[0]).get("chance_recall_at_10")
        lines.append(f"| {row['variant']} | {col(runs, lambda r: r['val_recall_at_10'])} | "
                     f"{col(runs, lambda r: r['metrics']['recall_at_10'])} | "
                     f"{col(runs, lambda r: r['metrics']['ndcg_at_10'])} | "
                     f"{col(runs, lambda r: r['metrics'].get('recall_at_100'))} | "
                     f"{col(runs, lambda r: cold(r).get('recall_at_10')) if args.cold else ''} | "
                     f"{'' if chance is None or not args.cold else f'{chance:.4f}'} | "
                     f"{fmt([r['epochs'] for r in runs], 1)} |")
    lines += cascade_lines(rows, col)
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)
    return {"rows": rows, "table": table}


def cascade_lines(rows: list[dict], col) -> list[str]:
    """The sweep's cascade table (variants trained with train.cascade): the test keys' recall@10 of
    retrieval's top N alone and re-ordered by the pre-ranker, their paired gain, and the latency
    the re-ranking adds per query (evaluation/cascade.py)."""
    with_cascade = [r for r in rows if any((run["metrics"].get("cascade") or {}) for run in r["runs"])]
    if not with_cascade:
        return []
    lines = ["", "| variant | top N | retrieval recall@10 | cascade recall@10 | paired gain | cascade ndcg@10 | "
                 "+ms p50 at N=100 | +ms p50 at N=500 |", "|---|---|---|---|---|---|---|---|"]
    for row in with_cascade:
        runs = [r for r in row["runs"] if r["metrics"].get("cascade")]
        c = lambda r: r["metrics"]["cascade"]  # noqa: E731
        lines.append(f"| {row['variant']} | {c(runs[0])['top_n']} | "
                     f"{col(runs, lambda r: c(r)['retrieval']['recall_at_10'])} | "
                     f"{col(runs, lambda r: c(r)['cascade']['recall_at_10'])} | "
                     f"{col(runs, lambda r: c(r)['cascade']['diff']['recall_at_10']['mean'])} | "
                     f"{col(runs, lambda r: c(r)['cascade']['ndcg_at_10'])} | "
                     f"{col(runs, lambda r: c(r)['latency_ms']['100']['p50'])} | "
                     f"{col(runs, lambda r: c(r)['latency_ms']['500']['p50'])} |")
    return lines


# --------------------------------------------------------------------------------------------

def quick_train(args) -> dict:
    return {"train.n_epochs": 2} if args.quick else {}


def reference_settings(args):
    from bench.reference import ReferenceSettings

    return ReferenceSettings(epochs=1) if args.quick else ReferenceSettings()


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:
        pass
    return str(obj)


def part_next_item(work: Path, args) -> dict:
    """Next-item protocols (bench/next_item.py): each user's last interaction held out, and users
    left out of training served from their first 5 items; ours as published (refit, query table
    or request-time history) beside popularity, EASE and the item-transition baseline, on the
    same split with the same scoring code."""
    from bench import next_item

    out = {}
    for protocol in ("last_item", "cold_users"):
        variants = list(next_item.VARIANTS) if protocol == "last_item" else ["history", "no_history"]
        result = next_item.run(protocol, variants, args.seed_list, work / "next_item")
        result["table"] = next_item.table(protocol, result)
        out[protocol] = result
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default=None, help="comma list of A,B,C (default all; --quick: B,C)")
    parser.add_argument("--seeds", default=None, help="comma list of seeds (default 0,1,2; --quick: 0)")
    parser.add_argument("--only", default="compare,throughput,ablation,cold",
                        help="comma list of parts: compare, throughput, ablation, cold, sweep, next_item")
    parser.add_argument("--variant", action="append", default=None,
                        help="sweep part: 'name:key=value;key=value' (repeatable; default: the config as is)")
    parser.add_argument("--cold", action="store_true",
                        help="sweep part: hold 10 %% of the items out (transform.cold_item_fraction=0.1)")
    parser.add_argument("--skip-ablation", action="store_true", help="no ablation and no cold-item runs")
    parser.add_argument("--ablations", default=None, help="comma list of substrings of variant names")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs (reference 1), protocols B,C")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra key=value config override for every run (ours and reference)")
    parser.add_argument("--work-dir", default=None, help="keep intermediate folders here (default: temp)")
    parser.add_argument("--out", default=None, help="results JSON path (default bench/results/quality-<ts>.json)")
    args = parser.parse_args(argv)

    protocols = (args.protocols or ("B,C" if args.quick else "A,B,C")).upper().split(",")
    args.seed_list = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    parts = set(args.only.split(","))
    if args.skip_ablation:
        parts -= {"ablation", "cold"}
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        parser.error(f"unknown protocol(s) {bad}")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_json = Path(args.out) if args.out else RESULTS_DIR / f"quality-{stamp}.json"
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-quality-")
        work = Path(tmp)

    results = {"command": " ".join([".venv/bin/python bench/quality.py", *(argv or sys.argv[1:])]),
               "date_utc": stamp, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                               "python": platform.python_version(),
                                               "loadavg_at_start": os.getloadavg()},
               "implemented": {f: implemented(f) for f in FEATURE_MARKERS},
               "protocols": protocols, "seeds": args.seed_list, "quick": args.quick,
               "compare": {}, "throughput": None, "ablation": {}, "cold": {}, "sweep": {}, "skipped": {}}
    print(f"[quality] options implemented in the pipeline code: {results['implemented']}", flush=True)
    started = time.perf_counter()
    stages = Stages(work)
    try:
        datasets = {}
        for p in protocols:
            ds = PROTOCOLS[p]["dataset"]
            if ds not in datasets:
                datasets[ds] = prepare_dataset(ds, work)
        for p in protocols:
            data = datasets[PROTOCOLS[p]["dataset"]]
            if data is None:
                results["skipped"][p] = f"{MOVIELENS_RAW} absent"
                continue
            missing = [n for n in PROTOCOLS[p]["needs"] if not implemented(n)]
            if missing:
                results["skipped"][p] = f"needs {missing}, not implemented yet"
                print(f"[quality] protocol {p} skipped: {results['skipped'][p]}", flush=True)
                continue
            if "compare" in parts:
                results["compare"][p] = part_compare(p, stages, data, work, args.seed_list, args)
        if "throughput" in parts and datasets.get("movielens") is not None and "B" in protocols:
            results["throughput"] = part_throughput(stages, datasets["movielens"], work, args)
        for p in protocols:
            data = datasets[PROTOCOLS[p]["dataset"]]
            if data is None or p in results["skipped"]:
                continue
            if "ablation" in parts:
                results["ablation"][p] = part_ablation(p, stages, data, work, args, results["compare"].get(p))
            if "cold" in parts and p in ("B", "C"):
                results["cold"][p] = part_cold(p, stages, data, work, args)
            if "sweep" in parts:
                results["sweep"][p] = part_sweep(p, stages, data, work, args)
        if "next_item" in parts and datasets.get("movielens") is not None:
            results["next_item"] = part_next_item(work, args)
    finally:
        results["seconds"] = time.perf_counter() - started
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2, default=_json_default))
        tables = [results["compare"][p]["table"] for p in results["compare"]]
        if results["throughput"]:
            tables.append(results["throughput"]["table"])
        tables += [results["ablation"][p]["table"] for p in results["ablation"]]
        tables += [results["cold"][p].get("table") or f"Cold items {p}: {results['cold'][p].get('skipped')}"
                   for p in results["cold"]]
        tables += [results["sweep"][p]["table"] for p in results["sweep"]]
        tables += [r["table"] for r in (results.get("next_item") or {}).values()]
        header = (f"Command: `{results['command']}`  \nDate (UTC): {stamp}; machine: {os.cpu_count()} CPU cores "
                  f"({platform.platform()}); wall time {results['seconds'] / 60:.1f} min.")
        md = "\n\n".join([header, *[t for t in tables if t]])
        out_json.with_suffix(".md").write_text(md + "\n")
        print("\n" + md)
        print(f"\n[quality] wrote {out_json} (+ .md) in {results['seconds'] / 60:.1f} min", flush=True)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
