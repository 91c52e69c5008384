"""The embedding map (indexer/embedding_map.py): PCA against numpy, categories from the catalog
records, queries with their positives from their split, the SVG and the index report section."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests.support.report_pages import charts, of_class, render, stage_dir  # noqa: E402
from tests.support.trainer_data import CATEGORIES, ITEMS_PER_CATEGORY, make_config, write_transformed  # noqa: E402


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The tiny planted data, items embedded at their category's axis (+ noise), each valid query
    at its category's axis: its positives (all of that category) sit near it, the rest far."""
    root = tmp_path_factory.mktemp("transformed_map")
    config = make_config(str(root))
    write_transformed(root, config)
    rng = np.random.default_rng(1)
    item_ids = [f"i{i:02d}" for i in range(len(CATEGORIES) * ITEMS_PER_CATEGORY)]
    axes = np.eye(len(CATEGORIES), 8, dtype=np.float32)
    items = np.stack([axes[i // ITEMS_PER_CATEGORY] for i in range(len(item_ids))])
    items = items + 0.05 * rng.normal(size=items.shape).astype(np.float32)
    keys = [f"red {cat}" for cat in CATEGORIES] + [f"pro {cat}" for cat in CATEGORIES]
    queries = np.stack([axes[CATEGORIES.index(k.split()[1])] for k in keys])
    return config, root, item_ids, items, keys, queries


def test_the_map_projects_by_pca_and_marks_queries_near_their_positives(planted):
    from indexer.embedding_map import embedding_map

    config, root, item_ids, items, keys, queries = planted
    doc = embedding_map(config, str(root), item_ids, items, keys, queries, "valid", n_queries=5)
    assert doc["category_feature"] == "category"  # the schema's first categorical item feature
    assert sorted(doc["categories"]) == sorted(CATEGORIES)  # 4 categories: none folded into "other"
    assert len(doc["items"]["x"]) == len(item_ids) == doc["n_items_total"]
    # The same projection as numpy's PCA (up to each component's sign).
    centred = items - items.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    got = np.stack([doc["items"]["x"], doc["items"]["y"]], axis=1)
    for axis in range(2):
        assert min(np.abs(got[:, axis] - expected[:, axis]).max(),
                   np.abs(got[:, axis] + expected[:, axis]).max()) < 1e-3
    assert sum(doc["explained_variance"]) == pytest.approx(float((singular[:2] ** 2).sum() / (singular ** 2).sum()),
                                                           abs=1e-3)
    # Every item is coloured by its own category (the planted ids run category by category).
    for i, c in enumerate(doc["items"]["category"]):
        assert doc["categories"][c] == CATEGORIES[i // ITEMS_PER_CATEGORY]
    assert len(doc["queries"]) == 5
    for q in doc["queries"]:
        assert q["n_positives"] == 1  # one valid item per query in the planted split
        assert q["mean_score_positives"] > q["mean_score_catalog"] + 0.5
    json.dumps(doc)  # what the embed stage writes


def test_few_categories_shown_and_the_rest_are_other(planted, monkeypatch):
    import indexer.embedding_map as embedding_map_module

    config, root, item_ids, items, keys, queries = planted
    monkeypatch.setattr(embedding_map_module, "MAX_CATEGORIES", 2)
    doc = embedding_map_module.embedding_map(config, str(root), item_ids, items, [], items[:0], None)
    assert len(doc["categories"]) == 3 and doc["categories"][-1] == "other" and doc["queries"] == []
    assert doc["items"]["category"].count(2) == 2 * ITEMS_PER_CATEGORY


def test_the_svg_and_the_index_report_show_the_map(planted, tmp_path):
    from indexer.embedding_map import embedding_map, map_svg

    config, root, item_ids, items, keys, queries = planted
    doc = embedding_map(config, str(root), item_ids, items, keys, queries, "valid", n_queries=3)
    svg = ET.fromstring(map_svg(doc))
    points = of_class(svg, "circle", "point")
    assert len(points) == len(item_ids) + 2 * 3  # the items, then each query star's two ends
    assert len(of_class(svg, "circle", "mark")) == 3
    metrics = {"kind": "brute_force", "n_items": len(item_ids), "dims": 8, "recall_at_10_vs_exact": 1.0,
               "tuning": {"enabled": False}}
    out = stage_dir(tmp_path, "index", metrics, {"index_metrics.json": metrics, "embedding_map.json": doc})
    html, md = render("index", out)
    assert "Embedding map" in md
    (chart, alt), = charts(html)
    assert "48 of 48 items" in alt and "3 of them scoring their positives above" in alt
