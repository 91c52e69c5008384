"""Evaluation stage: ``evaluate_model(config, transformed_dir, model_dir, out_dir, live_store=None) -> dict``.

Loads the exported towers with :class:`core.towers.Tower` (so a broken export fails
here, before indexing), embeds the whole catalog and the distinct test keys, ranks the
whole catalog for every key and computes recall@K for ``evaluate.ks`` and
nDCG@``evaluate.ndcg_k``, for the model and for the popularity baseline (train counts
from ``vocab/item_id.tsv``) under the same protocol:

- ``evaluate.mask_seen``: each key's train+valid items (except the held-out ones
  themselves) are excluded from its ranking; false = nothing masked (TFRS tutorial).
- ``evaluate.per``: ``query`` averages recall over keys; ``interaction`` makes every
  test (key, item) pair one trial (TFRS ``FactorizedTopK`` top-K accuracy), see
  :mod:`core.metrics`.
- ``evaluate.slices``: hit rate at 10 of the test pairs per item popularity slice
  (head / torso / tail / cold, :func:`core.metrics.item_slices`).

Cost is keys x items (every key against the whole catalog). Above
``evaluate.max_queries`` test keys, a seeded uniform sample of that many keys is scored
(:func:`core.sampling.sample_keys`, seed ``evaluate.seed``: the same keys for the same
data in every run), and the model, the popularity baseline and the live version are all
scored on that one sample, so their comparison is like with like. Every metric then
carries a 95% interval over the choice of keys, and every comparison a paired one
(:func:`core.metrics.ratio_interval`: normal approximation of the ratio estimator
with the finite population correction, so an exact evaluation has zero-width intervals).

Writes ``metrics.json``: ``{"recall_at_10", ..., "ndcg_at_10", "ci95": {"recall_at_10":
[lo, hi], ...}, "popularity": {same keys, "ci95": {...}, "diff": {"recall_at_10": {"mean",
"ci95"}, ...}}, "sampled", "n_queries", "n_queries_total", "n_items", "n_pairs",
"sampling": {"max_queries", "seed", "interval"}, "protocol": {"per", "mask_seen",
"split"}, "slices": {"head": {"recall_at_10", "popularity_recall_at_10", "n"}, ...,
"cold": {..., "chance_recall_at_10"}}}`` (``slices`` only when enabled). ``n_queries``
keys were scored of the ``n_queries_total`` eligible ones (``sampled`` when fewer);
``n_pairs`` and the slices count the scored keys' pairs; ``diff`` is model minus that
baseline, averaged over the same keys (paired). TensorFlow is imported inside the function.

Every path (``transformed_dir``, ``model_dir``, ``out_dir``, ``live_store``) may be a local
folder or a gs:// prefix; all reads and writes go through :mod:`core.storage` (TensorFlow
reads only local copies: TF's own GCS filesystem ignores ``STORAGE_EMULATOR_HOST``).

Live comparison (``live_store`` given, see :func:`evaluate_live`): the store's CURRENT
version is scored on the SAME test queries, relevant and masked items and cut-offs, and
``metrics.json["live"]`` holds ``{"version", "recall_at_10", ..., "ndcg_at_10", "ci95",
"diff", "n_items_missing"}`` (``diff``: model minus live per key, paired on the same
sampled keys); ``None`` only when the store has no live version (no CURRENT: first
publish); ``{"version", "error"}`` when CURRENT names a version that cannot be fetched,
loaded or scored (corrupt, incompatible tower inputs, a bug in the comparison), with the
traceback in the stage log. Without ``live_store`` the key is absent (no comparison asked
for). The gate (:mod:`publishing.gate`) reads it and, by default, refuses to publish on an
``error`` (``gate.publish_when_live_unusable``).

The live model ranks THIS run's catalog: each catalog item takes the embedding the live
version published for it (``items.parquet``). Items of this run's catalog absent from
the live catalog (new items) have no live embedding: they are masked out of the live
ranking, so the live model can never hit them (a test pair on a new item is a miss for
live and still counts as a trial). Items only in the live catalog (since removed) are
not ranked at all: neither model competes with them, and they cannot be relevant.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Mapping

import numpy as np

from core.contracts import files as names

EMBED_BATCH = 4096
#: Cut-off of the slice hit rates (fixed, so slices compare across configs).
SLICE_K = 10
#: How metrics.json's ci95 intervals are computed (recorded beside them).
INTERVAL_METHOD = ("95% normal approximation of the ratio estimator over the sampled keys, with the finite "
                   "population correction (zero width when every key is scored); the rule of three when "
                   "the sample has no spread")


def _embed(tower, columns: Mapping[str, np.ndarray], batch_size: int = EMBED_BATCH) -> np.ndarray:
    """Embed numpy columns [N] with a loaded ``core.towers.Tower`` -> float32 [N, D]."""
    n = len(next(iter(columns.values())))
    parts = [tower.embed({name: columns[name][s:s + batch_size] for name in tower.input_names})
             for s in range(0, n, batch_size)]
    return np.concatenate(parts).astype(np.float32)


def mask_splits_for(mask_seen: bool) -> tuple[str, ...]:
    """The seen.jsonl splits masked at test time: train+valid, or none."""
    return (names.TRAIN, names.VALID) if mask_seen else ()


def slice_report(model_ranks, popularity_ranks, slices: np.ndarray, k: int = SLICE_K) -> dict:
    """Per-slice hit rate at ``k`` for the model and the popularity baseline.

    Args:
        model_ranks, popularity_ranks: :class:`core.metrics.PairRanks` of the same
            relevant pairs (same queries, same masks), ranked to depth >= ``k``.
        slices: str [N] slice name per catalog position.
    Returns:
        ``{slice: {"recall_at_<k>", "popularity_recall_at_<k>", "n"}}`` for every slice
        (recalls None when ``n`` is 0); ``cold`` also has ``chance_recall_at_<k>`` =
        min(k, N) / N, the hit rate of a uniformly random ranking.
    """
    from core.metrics import slice_recall

    model = slice_recall(model_ranks, slices, k)
    pop = slice_recall(popularity_ranks, slices, k)
    key = f"recall_at_{k}"
    report = {name: {key: model[name][key], f"popularity_{key}": pop[name][key], "n": model[name]["n"]}
              for name in model}
    n_items = model_ranks.n_items
    report["cold"][f"chance_{key}"] = min(k, n_items) / n_items
    return report


def intervals(values: Mapping[str, np.ndarray], weights: np.ndarray, n_total: int) -> dict:
    """``{metric: [lo, hi]}``: 95% interval of each metric over the choice of sampled keys.

    Args:
        values, weights: per-key contributions [Q] (:func:`core.metrics.query_contributions`).
        n_total: keys the Q were sampled from.
    """
    from core.metrics import ratio_interval

    return {name: ratio_interval(v, weights, n_total) for name, v in values.items()}


def paired_differences(values: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray],
                       weights: np.ndarray, n_total: int) -> dict:
    """``{metric: {"mean", "ci95"}}``: model minus baseline on the same keys, with its 95% interval.

    The difference is taken key by key before averaging, so what both models find equally
    hard cancels out: its interval is narrower than the two metrics' own intervals would
    suggest when the models agree on most keys. ``mean`` equals the difference of
    the two metrics (up to rounding).
    """
    from core.metrics import ratio_estimate, ratio_interval

    out = {}
    for name, v in values.items():
        diff = v - baseline[name]
        out[name] = {"mean": ratio_estimate(diff, weights),
                     "ci95": ratio_interval(diff, weights, n_total, bounds=(-1.0, 1.0))}
    return out


def _protocol(config, transformed_dir: str) -> dict:
    """What the numbers mean: averaging unit, masking, and the transform's split method."""
    from core import storage

    path = storage.join(str(transformed_dir), names.TRANSFORM_STATS_FILE)
    try:
        stats = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (the transform writes it)") from None
    return {"per": config.evaluate.per, "mask_seen": bool(config.evaluate.mask_seen),
            "split": stats.get("split")}


def _live_item_embeddings(items_path: str, catalog_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The live version's embeddings in this run's catalog order.

    Returns:
        (float32 [N, D] with zero rows for items the live catalog lacks,
         int64 positions of those missing items).
    Raises:
        ValueError: items.parquet lacks item_id / embedding or has ragged embeddings.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core import storage

    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(items_path)))
    except pa.ArrowException as exc:  # read from bytes: name the file, as reading the path would
        raise ValueError(f"{items_path}: not a readable parquet file ({exc})") from exc
    for column in ("item_id", "embedding"):
        if column not in table.column_names:
            raise ValueError(f"{items_path}: no {column!r} column (have {table.column_names})")
    ids = [str(i) for i in table.column("item_id").to_pylist()]
    emb = table.column("embedding").combine_chunks()
    n = len(ids)
    if n == 0:
        raise ValueError(f"{items_path}: the live catalog is empty")
    lengths = np.asarray(emb.value_lengths().to_numpy(zero_copy_only=False))
    if (lengths != lengths[0]).any() or lengths[0] < 1:
        raise ValueError(f"{items_path}: embeddings have differing or zero lengths")
    matrix = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, int(lengths[0]))
    row_of = {item: i for i, item in enumerate(ids)}
    out = np.zeros((len(catalog_ids), matrix.shape[1]), dtype=np.float32)
    missing = []
    for pos, item in enumerate(catalog_ids):
        row = row_of.get(item)
        if row is None:
            missing.append(pos)
        else:
            out[pos] = matrix[row]
    return out, np.asarray(missing, dtype=np.int64)


def _untrained_by(seen_path: str, queries, catalog) -> np.ndarray:
    """bool [Q]: the queries none of whose relevant items the version's seen.jsonl lists for
    that key (in any split: a refit version trained on all of them)."""
    from core import storage

    seen = {}
    for line in storage.read_text(seen_path).split("\n"):
        if line.strip():
            row = json.loads(line)
            seen[str(row["key"])] = {i for part in names.SPLITS for i in row.get(part, [])}
    return np.array([not any(catalog.ids[int(p)] in seen.get(key, ()) for p in relevant)
                     for key, relevant in zip(queries.keys, queries.relevant)], dtype=bool)


def evaluate_live(live_store: str, queries, catalog, ks, ndcg_k: int, per: str, depth: int,
                  candidate_values: Mapping[str, np.ndarray] | None = None) -> dict | None:
    """Score the store's live version on this run's test queries (see the module doc).

    Args:
        queries, catalog: the :class:`trainer.evalset.QuerySet` / ``Catalog`` the
            candidate was scored on (same sampled keys, relevant and masked positions).
        candidate_values: the candidate's per-key contributions on ``queries``
            (:func:`core.metrics.query_contributions`); when given, ``diff`` holds the
            paired candidate-minus-live differences.
    Returns:
        None when the store has no CURRENT version (the only silent case); ``{"version",
        "recall_at_K"..., "ndcg_at_K", "ci95", ["diff",] "n_items_missing"}``; or
        ``{"version", "error"}`` when the live version cannot be fetched, loaded or scored,
        whatever the cause (the traceback is printed to stderr; the gate refuses on it
        unless told otherwise).
    Raises:
        Whatever reading CURRENT raises (an unreadable store is not "no live version").
    """
    import tempfile

    from core import storage
    from core.store import VersionStore
    from core.towers import Tower
    from core.metrics import embedding_rank_relevant, estimates, query_contributions

    store = VersionStore(live_store)
    version = store.current()
    if version is None:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="twotower-live-") as tmp:
            vdir = store.fetch_version(version, tmp)
            item_emb, missing = _live_item_embeddings(storage.join(vdir, names.VERSION_ITEMS_FILE), catalog.ids)
            query_emb = _embed(Tower(storage.join(vdir, names.QUERY_TOWER_DIR)), queries.features)
            record = store.manifest_record(version)
            weights = record.published_weights
            # The live model is scored as it is served: by its own similarity, not the candidate's.
            live_similarity = record.serving.similarity if record.serving is not None else "cosine"
            saw = (weights.splits if weights is not None else None) or [names.TRAIN]
            fresh = (_untrained_by(storage.join(vdir, names.SEEN_FILE), queries, catalog)
                     if names.TEST in saw else None)
        masked = queries.masked
        if len(missing):
            masked = [np.union1d(m, missing).astype(np.int64) for m in masked]
        ranks = embedding_rank_relevant(query_emb, item_emb, queries.relevant, masked, depth,
                                        similarity=live_similarity)
        values, weights = query_contributions(ranks, ks, ndcg_k, per)
        n_total = queries.n_total
        compared = {}
        if fresh is not None:
            # The live weights were refit on every split it had, so they trained on the test
            # pairs this run shares with its data: compare on the keys whose test items it
            # never saw, the candidate too (its figures on them in "candidate").
            values = {name: v[fresh] for name, v in values.items()}
            weights = weights[fresh]
            n_total = max(int(round(n_total * fresh.mean())), int(fresh.sum())) if len(fresh) else 0
            if candidate_values is not None:
                candidate_values = {name: v[fresh] for name, v in candidate_values.items()}
                compared["candidate"] = estimates(candidate_values, weights)
            compared["compared_on"] = (f"{int(fresh.sum())} of {len(fresh)} keys whose test items the live "
                                       f"version never trained on (its weights saw {'+'.join(saw)})")
            if not fresh.any():
                raise ValueError("every test key's items were in the live version's training data "
                                 "(it was refit on every split): nothing to compare on")
        live = estimates(values, weights)
        live["ci95"] = intervals(values, weights, n_total)
        live.update(compared)
        if candidate_values is not None:
            live["diff"] = paired_differences(candidate_values, values, weights, n_total)
    except Exception as exc:  # noqa: BLE001 - recorded, logged in full, and the gate refuses on it
        # A live version that exists but cannot be compared is never "no baseline": the error
        # goes into metrics["live"], where the gate refuses to publish on it by default
        # (gate.publish_when_live_unusable), and the whole traceback into the stage log, so a
        # bug here is as visible as one in the candidate's own scoring.
        print(f"[evaluate] live version {version} of {live_store} cannot be evaluated:", file=sys.stderr,
              flush=True)
        traceback.print_exc(file=sys.stderr)
        return {"version": version, "error": f"{type(exc).__name__}: {exc}"}
    return {"version": version, **live, "n_items_missing": int(len(missing))}


def evaluate_model(config, transformed_dir, model_dir: str, out_dir: str,
                   live_store: str | None = None) -> dict:
    """Test-split metrics of the exported towers in ``model_dir`` vs popularity.

    Args:
        transformed_dir: the transform's folder, or a :class:`trainer.artifacts.TransformedData`.
        live_store: a version store; when given, its live version is scored on the same
            test keys and protocol into ``metrics["live"]`` (see the module doc).

    Returns:
        The ``metrics.json`` dict.
    Raises:
        FileNotFoundError: missing catalog, vocabulary, stats.json or tower.
        ValueError: the test split has no query with a relevant catalog item.
    """
    import tempfile

    from core import storage
    from core.contracts.records import write_metrics
    from core.records import ITEM_KEY
    from core.towers import Tower
    from trainer import artifacts
    from trainer.evalset import catalog_popularity, load_catalog, load_queries, local_transformed
    from core.metrics import embedding_rank_relevant, estimates, popularity_scores, query_contributions

    model_dir = model_dir.rstrip("/")
    out_dir = out_dir.rstrip("/")
    ecfg = config.evaluate
    ks, ndcg_k, per = list(ecfg.ks), ecfg.ndcg_k, ecfg.per
    depth = max(*ks, ndcg_k, SLICE_K if ecfg.slices else 1)
    protocol = _protocol(config, transformed_dir)
    mask_splits = mask_splits_for(ecfg.mask_seen)

    # A gs:// transform folder is read through core.storage: only the parts evaluation
    # reads are downloaded (see trainer.evalset.local_transformed); a local one is read in place.
    with tempfile.TemporaryDirectory(prefix="twotower-evaluate-") as tmp:
        needed = (names.TRANSFORM_STATS_FILE, names.vocab_file(ITEM_KEY)) + ((names.SEEN_FILE,) if mask_splits else ())
        # One handle on the (local) folder: the item vocabulary and seen.jsonl are read once.
        local = artifacts.TransformedData(local_transformed(str(transformed_dir), tmp,
                                                            (names.ITEMS_SPLIT, names.TEST), needed))
        catalog = load_catalog(config, local)
        queries = load_queries(config, local, names.TEST, mask_splits, catalog,
                               max_queries=ecfg.max_queries, seed=ecfg.seed)
        counts, slices = catalog_popularity(local, catalog)
    if not len(queries):
        raise ValueError(f"{transformed_dir}: the test split has no query with a catalog item")

    # Tower downloads a gs:// SavedModel through core.storage before TF loads it. A refit
    # model is scored by its early-stopped twin: the refit one trained on the test split.
    scored_dir = artifacts.evaluated_model_dir(model_dir)
    query_tower = Tower(storage.join(scored_dir, names.QUERY_TOWER_DIR))
    item_tower = Tower(storage.join(scored_dir, names.ITEM_TOWER_DIR))
    item_emb = _embed(item_tower, catalog.features)
    query_emb = _embed(query_tower, queries.features)
    model_ranks = embedding_rank_relevant(query_emb, item_emb, queries.relevant, queries.masked, depth,
                                          similarity=config.train.similarity)

    pop_ranks = embedding_rank_relevant(None, None, queries.relevant, queries.masked, depth,
                                        item_bias=popularity_scores(counts))
    model_values, weights = query_contributions(model_ranks, ks, ndcg_k, per)
    pop_values, _ = query_contributions(pop_ranks, ks, ndcg_k, per)
    model_metrics, pop_metrics = estimates(model_values, weights), estimates(pop_values, weights)
    n_total = queries.n_total

    metrics = {**model_metrics, "ci95": intervals(model_values, weights, n_total),
               "popularity": {**pop_metrics, "ci95": intervals(pop_values, weights, n_total),
                              "diff": paired_differences(model_values, pop_values, weights, n_total)},
               "sampled": queries.sampled, "n_queries": len(queries), "n_queries_total": n_total,
               "n_items": len(catalog.ids), "n_pairs": len(model_ranks),
               "sampling": {"max_queries": ecfg.max_queries, "seed": ecfg.seed, "interval": INTERVAL_METHOD},
               "protocol": protocol}
    if ecfg.slices:
        metrics["slices"] = slice_report(model_ranks, pop_ranks, slices)
    from evaluation.cascade import evaluate_cascade, prerank_doc

    cascade = prerank_doc(model_dir)
    if cascade is not None:  # train.cascade: the pre-ranker over the same keys' top-N
        metrics["cascade"] = evaluate_cascade(model_dir, cascade, queries, catalog, query_emb, item_emb,
                                              config.train.similarity, ks, ndcg_k, per, intervals,
                                              paired_differences, _embed)
    if live_store:
        metrics["live"] = evaluate_live(live_store, queries, catalog, ks, ndcg_k, per, depth,
                                        candidate_values=model_values)
    write_metrics(storage.join(out_dir, names.METRICS_FILE), metrics)  # validated: a bad document fails here
    _log(metrics, model_metrics, pop_metrics, ks[0])
    return metrics


def _log(metrics: dict, model_metrics: dict, pop_metrics: dict, k: int) -> None:
    p = metrics["protocol"]
    key = f"recall_at_{k}"
    what = (f"{metrics['n_queries']} of {metrics['n_queries_total']} queries (seeded sample)"
            if metrics["sampled"] else f"{metrics['n_queries']} queries")
    print(f"[evaluate] {what} ({metrics['n_pairs']} pairs) x {metrics['n_items']} "
          f"items, per {p['per']}, mask_seen={p['mask_seen']}: "
          + " ".join(f"{name}={v:.4f}" for name, v in model_metrics.items())
          + f" | popularity {key}={pop_metrics[key]:.4f}", flush=True)
    if metrics["sampled"]:
        lo, hi = metrics["ci95"][key]
        print(f"[evaluate] {key} 95% interval [{lo:.4f}, {hi:.4f}] over the sampled keys", flush=True)
    if "live" in metrics:
        live = metrics["live"]
        if live is None:
            print("[evaluate] live: none (first publish)", flush=True)
        elif "error" in live:
            print(f"[evaluate] live {live['version']}: cannot evaluate ({live['error']})", flush=True)
        else:
            diff = live["diff"][key]
            print(f"[evaluate] live {live['version']}: {key}={live[key]:.4f}, model - live "
                  f"{diff['mean']:+.4f} (95% [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}]) "
                  f"({live['n_items_missing']} catalog items unknown to it)", flush=True)
    for name, s in metrics.get("slices", {}).items():
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"[evaluate]   {name:5s} n={s['n']:<7d} recall_at_{SLICE_K}={fmt(s[f'recall_at_{SLICE_K}'])} "
              f"popularity={fmt(s[f'popularity_recall_at_{SLICE_K}'])}", flush=True)
