"""The whole loop through the real KFP local runner on the embedded default dataset.

One pipeline run (tests/integration/conftest.py, a few minutes on 2 cores) backs every assertion:
the summary contract, the published store, a fresh-process CLI query, and the
acceptance queries returning products of the matching kind. The acceptance queries are taken
out of the data before the run (no split, no vocabulary count has them), so they test
retrieval of unseen queries, judged by the catalogue's own category field, not memory.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.support.shop_runs import ACCEPTANCE_QUERIES

pytestmark = [pytest.mark.integration, pytest.mark.slow]



@pytest.fixture(scope="module")
def pipeline_run(shop_subprocess_run):
    """The shared run of tests/integration/conftest.py (the test of the docker runner compares with it)."""
    return shop_subprocess_run


def test_the_acceptance_queries_were_never_trained_on(pipeline_run):
    root, _, summary = pipeline_run
    transformed = next((root / "runs" / summary["run_id"]).rglob("query_table.jsonl"), None)
    assert transformed is not None
    keys = {json.loads(line)["query"] for line in transformed.read_text().splitlines()}
    assert len(keys) > 1000 and not keys & set(ACCEPTANCE_QUERIES)


def test_summary_contract(pipeline_run):
    root, _, summary = pipeline_run
    on_disk = json.loads((root / "runs" / summary["run_id"] / "summary.json").read_text())
    assert on_disk["run_id"] == summary["run_id"]
    for key in ("recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10", "popularity_recall_at_10"):
        assert 0.0 <= summary["metrics"][key] <= 1.0, key
    assert set(summary["stage_seconds"]) == {"ingest", "transform", "train", "evaluate", "embed", "index",
                                             "publish"}
    # Each step is its own process: it used CPU and holds at least the Python + library imports.
    assert set(summary["stage_resources"]) == set(summary["stage_seconds"]) - {"publish"} or \
        set(summary["stage_resources"]) == set(summary["stage_seconds"])
    for stage, used in summary["stage_resources"].items():
        assert used["cpu_seconds"] > 0 and used["peak_rss_mb"] > 20, (stage, used)
    assert summary["index"]["recall_at_10_vs_exact"] >= 0.99  # exact search on a small catalog
    assert summary["index"]["qps_batched"] > 0
    # a correct model clearly beats popularity on the planted structure
    assert summary["metrics"]["recall_at_10"] > 2 * summary["metrics"]["popularity_recall_at_10"]
    assert summary["published"] is True, summary["reasons"]
    assert summary["reasons"]


def test_store_has_the_live_version(pipeline_run):
    from indexer.store import VersionStore

    root, _, summary = pipeline_run
    store = VersionStore(str(root / "store"))
    assert store.current() == summary["version"]
    store.verify(summary["version"])
    manifest = store.read_manifest(summary["version"])
    assert manifest["lineage"]["run_id"] == summary["run_id"]
    assert manifest["lineage"]["data_fingerprint"]


def test_cli_query_in_a_fresh_process(pipeline_run):
    root, _, summary = pipeline_run
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "query", "--store", str(root / "store"),
                          "--text", "nike running shoes", "-k", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"version {summary['version']}")
    assert len(lines) == 6 and lines[1].lstrip().startswith("1.")
    listing = subprocess.run([sys.executable, "-m", "pipelines.cli", "index", "list", "--store",
                              str(root / "store")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[0] == summary["version"] and " * " in listing.stdout


@pytest.mark.parametrize("query", ACCEPTANCE_QUERIES)
def test_acceptance_queries_return_matching_products(pipeline_run, query):
    from datagen.synth_shop import expected_category
    from serving.retriever import Retriever

    root, _, _ = pipeline_run
    retriever = Retriever.load(str(root / "store"))
    answer = retriever.retrieve({"query": query}, k=10)
    categories = [item["category"] for item in answer["items"]]
    wanted = expected_category(query)
    assert wanted is not None
    hits = sum(c == wanted for c in categories)
    assert hits >= 7, f"{query!r}: expected mostly {wanted!r}, got {categories}"


def test_batch_retrieve_cli(pipeline_run, tmp_path):
    from pipelines.cli import main

    root, _, summary = pipeline_run
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "iphone 13"}\n{"features": {"query": "best laptop"}}\n')
    out = tmp_path / "r.jsonl"
    assert main(["retrieve", "--store", str(root / "store"), "--queries", str(queries), "-k", "7",
                 "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["iphone 13", {"query": "best laptop"}]
    for line in lines:
        assert len(line["items"]) == 7 and len(line["scores"]) == 7
        assert line["scores"] == sorted(line["scores"], reverse=True)
        assert line["version"] == summary["version"]


def test_display_fields_are_the_raw_product_data(pipeline_run):
    import pandas as pd

    from serving.retriever import Retriever

    root, config, _ = pipeline_run
    items = pd.read_csv(os.path.join(config.data.path, "items.csv")).set_index("item_id")
    answer = Retriever.load(str(root / "store")).retrieve({"query": "nike running shoes"}, k=3)
    for item in answer["items"]:
        assert item["title"] == items.loc[item["item_id"], "title"]  # as written, not normalised
        assert item["price"] == pytest.approx(items.loc[item["item_id"], "price"])
