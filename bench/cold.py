"""Cold items: how far above chance held-out items are retrieved, and against what yardsticks.

On a transform with ``transform.cold_item_fraction`` > 0, a hashed share of the catalog has
no train (or valid) positive; every positive of those items is a test pair. For the cold test
pairs (query, held-out item), each query's train + valid items masked as the evaluator does:

- ``all_items``: hit rate at K when ranking the whole catalog: the evaluator's
  ``slices.cold`` figure. Chance is K / N. Its ceiling is below 1: one query's top K is
  shared by all of its cold pairs, so at best sum_q min(K, c_q) / sum_q c_q (c_q = the
  query's cold test items).
- ``among_cold``: hit rate at K when ranking the cold items only (warm items masked too):
  can the model tell which new item a user will pick, whatever the warm items score?
  Chance is K / N_cold.
- ``content_profile``: a model-free yardstick from the same content: a query's profile is
  the mean multi-hot vector of the categorical and multi-categorical item features
  (MovieLens: genres) over its train items; an item scores the cosine between the profile
  and its own multi-hot vector. It needs per-user history (query key ``user_id``).

Used by ``bench/quality.py --only cold``; numpy + the trainer's evaluation readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: Depths reported (the evaluator's slices use 10).
KS = (10, 100)


@dataclass
class ColdTestSet:
    """The test queries of a cold split. ``cold`` bool [N] marks the held-out items."""

    catalog: object  # trainer.evalset.Catalog
    test: object  # trainer.evalset.QuerySet (train + valid masked)
    cold: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(sum(self.cold[rel].sum() for rel in self.test.relevant))


def load_cold_test_set(config, transformed_dir: str) -> ColdTestSet:
    """Catalog, test queries (train + valid masked) and the cold mask of ``transformed_dir``.

    Raises:
        ValueError: the split has no cold items (``transform.cold_item_fraction`` was 0).
    """
    from trainer.evalset import catalog_popularity, load_catalog, load_queries

    catalog = load_catalog(config, transformed_dir)
    _, slices = catalog_popularity(transformed_dir, catalog)
    cold = slices == "cold"
    if not cold.any():
        raise ValueError(f"{transformed_dir}: no cold items (set transform.cold_item_fraction > 0)")
    test = load_queries(config, transformed_dir, "test", ("train", "valid"), catalog)
    return ColdTestSet(catalog=catalog, test=test, cold=cold)


def cold_hit_rate(scores: np.ndarray, data: ColdTestSet, k: int, among_cold: bool = False) -> float:
    """Hit rate at ``k`` of the cold test pairs, ranking every item (or only the cold ones).

    Args:
        scores: float [Q, N], the test queries x the catalog, higher = better.
    """
    hits = total = 0
    for row, relevant in enumerate(data.test.relevant):
        cold_relevant = relevant[data.cold[relevant]]
        if not len(cold_relevant):
            continue
        s = np.asarray(scores[row], dtype=np.float64).copy()
        s[data.test.masked[row]] = -np.inf
        if among_cold:
            s[~data.cold] = -np.inf
        depth = min(k, len(s))
        top = np.argpartition(-s, depth - 1)[:depth]
        hits += int(np.isin(cold_relevant, top[np.isfinite(s[top])]).sum())
        total += len(cold_relevant)
    return hits / total if total else float("nan")


def yardsticks(data: ColdTestSet, k: int) -> dict:
    """Chance (all items, among cold) and the all-items ceiling at ``k``."""
    per_query = np.array([data.cold[rel].sum() for rel in data.test.relevant])
    n, n_cold = len(data.cold), int(data.cold.sum())
    return {"chance_all_items": min(k, n) / n, "chance_among_cold": min(k, n_cold) / n_cold,
            "ceiling_all_items": float(np.minimum(per_query, k).sum() / max(per_query.sum(), 1))}


def content_profile_scores(config, transformed_dir: str, data: ColdTestSet) -> Optional[np.ndarray]:
    """float32 [Q, N] content-profile scores (see the module docstring), or None when the
    query key is not a user id or the items have no categorical feature."""
    from core.config import MULTI_VALUE_SEPARATOR
    from core.records import ITEM_KEY, interaction_specs
    from trainer import artifacts
    from trainer.data import read_columns

    schema = config.schema
    features = [f for f in schema.item_features if f.type in ("categorical", "multi_categorical")]
    if schema.query_key != "user_id" or not features:
        return None
    columns = []  # one multi-hot block per feature
    for feature in features:
        values = [[v for v in str(x).split(MULTI_VALUE_SEPARATOR) if v] if feature.type == "multi_categorical"
                  else ([str(x)] if x else []) for x in data.catalog.features[feature.name]]
        vocab = {v: i for i, v in enumerate(sorted({v for vs in values for v in vs}))}
        block = np.zeros((len(values), len(vocab)), np.float32)
        for row, vs in enumerate(values):
            block[row, [vocab[v] for v in vs]] = 1.0
        columns.append(block)
    items = np.concatenate(columns, axis=1)
    train = read_columns(artifacts.split_files(transformed_dir, "train"), interaction_specs(schema))
    row_of = {key: row for row, key in enumerate(data.test.keys)}
    position = data.catalog.index
    profiles = np.zeros((len(data.test.keys), items.shape[1]), np.float32)
    for key, item in zip(train[schema.query_key], train[ITEM_KEY]):
        if key in row_of and item in position:
            profiles[row_of[key]] += items[position[item]]

    def unit(m: np.ndarray) -> np.ndarray:
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-9)

    return unit(profiles) @ unit(items).T


def model_scores(model_dir: str, data: ColdTestSet) -> np.ndarray:
    """float32 [Q, N]: dot products of an exported model's query and item towers."""
    from core.towers import Tower

    from core.contracts import files as names

    query_tower = Tower(f"{model_dir}/{names.QUERY_TOWER_DIR}")
    item_tower = Tower(f"{model_dir}/{names.ITEM_TOWER_DIR}")
    queries = query_tower.embed({n: data.test.features[n] for n in query_tower.input_names})
    items = item_tower.embed({n: data.catalog.features[n] for n in item_tower.input_names})
    return queries @ items.T


def cold_figures(scores: np.ndarray, data: ColdTestSet, ks=KS) -> dict:
    """``{"all_items_at_<k>", "among_cold_at_<k>"}`` hit rates for every k in ``ks``."""
    out = {}
    for k in ks:
        out[f"all_items_at_{k}"] = cold_hit_rate(scores, data, k)
        out[f"among_cold_at_{k}"] = cold_hit_rate(scores, data, k, among_cold=True)
    return out
