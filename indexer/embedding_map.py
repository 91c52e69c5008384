"""The embedding map: item and query embeddings projected to two dimensions, for a person to read.

The embed stage writes ``embedding_map.json`` (:func:`embedding_map`) beside the embeddings; the
index stage draws it as ``embedding_map.svg`` (:func:`map_svg`) and the index report shows it.

- Projection: PCA (numpy SVD of a seeded sample of at most ``max_items`` item embeddings, centred
  on that sample's mean); the queries go through the same mean and components. PCA rather than
  t-SNE: no well-kept t-SNE is in the pinned dependencies, and a linear map keeps distances
  readable (two points far apart on the map are far apart in the space, not the other way round).
- Colour: the item categorical ``train.category_alignment.feature`` when set, else the schema's
  first categorical item feature (a multi_categorical by its first value); the 9 largest
  categories by drawn items keep their colour, the rest are "other".
- Queries: a seeded sample of the embed stage's real "eval" queries that have positives in
  their split, each ringed and joined to its positive items, with the mean score (core/similarity.py)
  of its positives against that of the whole catalog, so "positives near, the rest far" is a
  number as well as a picture.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from core import similarity as similarities
from core.config import MULTI_VALUE_SEPARATOR, Config, FeatureSpec
from core.contracts import files as names
from core.records import ITEM_KEY, tf_feature_description

MAP_FILE = names.EMBEDDING_MAP_FILE
MAP_SVG_FILE = names.EMBEDDING_MAP_SVG_FILE
#: Items drawn at most (a seeded sample beyond it): enough to see the clusters, small in an HTML page.
MAX_ITEMS = 3000
#: Queries ringed on the map, and the most positives drawn per query.
N_QUERIES = 6
MAX_POSITIVES = 20
#: Categories with their own colour; the rest share "other".
MAX_CATEGORIES = 9
OTHER = "other"
SEED = 0


def map_feature(config: Config) -> Optional[FeatureSpec]:
    """The item feature the map is coloured by (see the module docstring), or None."""
    features = config.schema.item_features
    chosen = config.train.category_alignment.feature
    if chosen:
        return next(f for f in features if f.name == chosen)
    return (next((f for f in features if f.type == "categorical"), None)
            or next((f for f in features if f.type == "multi_categorical"), None))


def _records(files: Sequence[str], specs: Sequence[FeatureSpec]):
    """Yield parsed batches ({name: numpy [n]}) of ``files`` for ``specs`` (strings as bytes)."""
    import tensorflow as tf

    if not files:
        return
    description = tf_feature_description(specs)
    ds = tf.data.TFRecordDataset(list(files)).batch(4096).map(lambda rec: tf.io.parse_example(rec, description))
    for batch in ds:
        yield {s.name: batch[s.name].numpy() for s in specs}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def item_categories(config: Config, transformed_dir: str, spec: Optional[FeatureSpec]) -> dict[str, str]:
    """item_id -> its category (a multi_categorical's first value; "" when none) from the catalog records."""
    from core.queries import split_files

    if spec is None:
        return {}
    out = {}
    for batch in _records(split_files(transformed_dir, names.ITEMS_SPLIT), [FeatureSpec(name=ITEM_KEY, type="id"),
                                                                            spec]):
        for item, value in zip(batch[ITEM_KEY], batch[spec.name]):
            text = _text(value)
            if spec.type == "multi_categorical":
                text = text.split(MULTI_VALUE_SEPARATOR)[0]
            out[_text(item)] = text.strip()
    return out


def split_positives(config: Config, transformed_dir: str, split: str, keys: set[str]) -> dict[str, list[str]]:
    """query key -> its items in ``split`` (first-seen order, distinct), for the keys in ``keys``."""
    from core.queries import split_files

    key = config.schema.query_key
    key_spec = next(f for f in config.schema.query_features if f.name == key)
    out: dict[str, list[str]] = {}
    for batch in _records(split_files(transformed_dir, split), [key_spec, FeatureSpec(name=ITEM_KEY, type="id")]):
        for k, item in zip(batch[key], batch[ITEM_KEY]):
            k = _text(k)
            if k in keys:
                items = out.setdefault(k, [])
                if _text(item) not in items:
                    items.append(_text(item))
    return out


def pca_2d(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(mean [D], components [D, 2], explained variance share of each) of ``sample`` [n, D]."""
    mean = sample.mean(axis=0)
    _, singular, vt = np.linalg.svd(sample - mean, full_matrices=False)
    variance = singular ** 2
    share = (variance[:2] / max(float(variance.sum()), 1e-12)).tolist()
    return mean, vt[:2].T, [round(float(s), 4) for s in share + [0.0] * (2 - len(share))]


def embedding_map(config: Config, transformed_dir: str, item_ids: Sequence[str], items: np.ndarray,
                  query_keys: Sequence[str], queries: np.ndarray, split: Optional[str],
                  max_items: int = MAX_ITEMS, n_queries: int = N_QUERIES) -> dict:
    """The map's content (``embedding_map.json``).

    Args:
        item_ids / items: the catalog, [N] ids and [N, D] embeddings.
        query_keys / queries: sampled real queries, [Q] keys and [Q, D] embeddings (may be empty).
        split: the interaction split those queries came from (their positives are read from it).
    Returns:
        {"method": "pca", "explained_variance": [2], "similarity", "category_feature" (or None),
        "categories": [names, "other" last when used], "n_items_total", "items": {"x", "y",
        "category" (index into categories)}, "queries": [{"key", "x", "y", "positives": [[x, y]],
        "n_positives", "mean_score_positives", "mean_score_catalog"}]}.
    """
    rng = np.random.default_rng(SEED)
    n = len(item_ids)
    drawn = np.sort(rng.choice(n, size=min(max_items, n), replace=False)) if n else np.zeros(0, int)
    mean, components, explained = pca_2d(items[drawn].astype(np.float64))
    project = lambda rows: np.round((np.asarray(rows, np.float64) - mean) @ components, 4)  # noqa: E731
    spec = map_feature(config)
    categories_by_item = item_categories(config, transformed_dir, spec)
    drawn_categories = [categories_by_item.get(item_ids[i], "") or "(none)" for i in drawn]
    counts: dict[str, int] = {}
    for c in drawn_categories:
        counts[c] = counts.get(c, 0) + 1
    kept = sorted(counts, key=lambda c: (-counts[c], c))[:MAX_CATEGORIES] if spec is not None else []
    names_ = kept + ([OTHER] if len(counts) > len(kept) or spec is None else [])
    index = {c: i for i, c in enumerate(names_)}
    xy = project(items[drawn]) if len(drawn) else np.zeros((0, 2))
    doc = {"method": "pca", "explained_variance": explained, "similarity": config.train.similarity,
           "category_feature": spec.name if spec is not None else None, "categories": names_,
           "n_items_total": n,
           "items": {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
                     "category": [index.get(c, index.get(OTHER, 0)) for c in drawn_categories]},
           "queries": []}
    if not len(query_keys) or split is None:
        return doc
    positions = {item: i for i, item in enumerate(item_ids)}
    positives = split_positives(config, transformed_dir, split, set(query_keys))
    candidates = [i for i, k in enumerate(query_keys) if any(p in positions for p in positives.get(k, []))]
    chosen = sorted(rng.choice(len(candidates), size=min(n_queries, len(candidates)), replace=False).tolist())
    for c in chosen:
        row = candidates[c]
        key = query_keys[row]
        rows = [positions[p] for p in positives[key] if p in positions][:MAX_POSITIVES]
        scores = similarities.scores(queries[row:row + 1], items, config.train.similarity)[0]
        qxy = project(queries[row:row + 1])[0]
        doc["queries"].append({"key": key, "x": float(qxy[0]), "y": float(qxy[1]),
                               "positives": project(items[rows]).tolist(), "n_positives": len(rows),
                               "mean_score_positives": round(float(scores[rows].mean()), 4),
                               "mean_score_catalog": round(float(scores.mean()), 4)})
    return doc


def map_svg(doc: dict, width: int = 760, height: int = 520) -> str:
    """The map as an SVG document: items as dots coloured by category, each sampled query ringed
    (``q1``..) and joined to its positives by grey lines."""
    from core.svg_chart import PALETTE, Mark, Series, line_chart

    items = doc.get("items") or {}
    names_ = doc.get("categories") or []
    series = []
    for c, name in enumerate(names_):
        points = [(x, y) for x, y, k in zip(items.get("x", []), items.get("y", []), items.get("category", []))
                  if k == c]
        colour = "#b0b0b0" if name == OTHER else PALETTE[c % len(PALETTE)]
        series.append(Series(name=str(name), points=points, colour=colour, line=False))
    marks = []
    for i, q in enumerate(doc.get("queries") or []):
        star = []
        for p in q["positives"]:
            star += [(q["x"], q["y"]), (p[0], p[1])]
        series.append(Series(name="query - its positives" if i == 0 else "", points=star, colour="#222", line=True))
        marks.append(Mark(q["x"], q["y"], f"q{i + 1}"))
    share = doc.get("explained_variance") or [0.0, 0.0]
    feature = doc.get("category_feature")
    return line_chart(series, title=f"Embedding map (PCA{', coloured by ' + feature if feature else ''})",
                      x_label=f"first principal component ({100 * share[0]:.1f}% of the variance)",
                      y_label=f"second component ({100 * share[1]:.1f}%)", width=width, height=height, marks=marks)


def map_alt(doc: dict) -> str:
    """One sentence describing the map (the chart's alt text)."""
    queries = doc.get("queries") or []
    closer = sum(q["mean_score_positives"] > q["mean_score_catalog"] for q in queries)
    return (f"{len(doc.get('items', {}).get('x', []))} of {doc.get('n_items_total')} items projected by PCA, "
            f"coloured by {doc.get('category_feature') or 'nothing'}; {len(queries)} queries ringed, "
            f"{closer} of them scoring their positives above the catalog's mean")
