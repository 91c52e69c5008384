"""reports: each stage's report.html / report.md from a hand-built artifact folder (and one real
ingest output): the numbers appear, data is escaped, every chart decodes to well-formed SVG
with one point / bar per value, the pages are self-contained, and missing optional inputs
render a sensible page instead of failing."""

from __future__ import annotations

import base64
import json
from html import escape as html_escape
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import reports
from reports import ReportInputError, write_stage_report
from tests.support.report_pages import IMG, NS, charts, md_rows, of_class, render, stage_dir

SCRIPT = "<script>alert(1)</script>"


# ---------------------------------------------------------------- ingest
def test_ingest_report_from_a_real_ingest_escapes_dead_letters(tmp_path):
    from features.ingest import ingest
    from tests.support.ingest_tables import good_tables, make_config, write_tables

    tables = good_tables()
    interactions = tables["interactions"]
    interactions["timestamp"] = interactions["timestamp"].astype(object)
    interactions.loc[1, "timestamp"] = SCRIPT  # a hostile value in a bad row
    data = write_tables(tmp_path / "data", tables, "csv")
    out = tmp_path / "ingested"
    result = ingest(make_config(data, max_bad_fraction=0.5), str(out))
    (out / "stage.json").write_text(json.dumps({"stage": "ingest", "seconds": 0.2, "result": result}))

    html, md = render("ingest", out)
    assert SCRIPT not in html and SCRIPT not in md and "<script" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    assert "&lt;script&gt;" in md
    assert result["fingerprint"] in html and result["fingerprint"] in md
    rows = md_rows(md)
    assert ["interactions", str(data / "interactions.csv"), "4", "3", "1"] == \
        [c.replace("\\_", "_") for c in next(r for r in rows if r[0] == "interactions")]
    assert ["**rows rejected**", "1"] in rows and ["**dead letters**", "1"] in rows
    # The dead-letter row names the field of the real bad row (row 2 = second data row).
    dead = next(r for r in rows if len(r) == 5 and r[2] == "timestamp")
    assert dead[1] == "2" and "interactions.csv" in dead[0]


def test_ingest_report_shows_the_first_ten_dead_letters_and_survives_missing_files(tmp_path):
    dead = [{"file": "items.csv", "row": i, "field": "price", "reason": f"not a number: {SCRIPT}",
             "raw": {"item_id": f"i{i}", "price": "<img src=x onerror=alert(1)>"}} for i in range(1, 13)]
    result = {"files": {"items": {"path": "/d/items.csv", "rows": 40, "ok": 28, "bad": 12}},
              "bad_fraction": 0.3, "fingerprint": "abc123"}
    out = stage_dir(tmp_path, "ingest", result,
                    {"ingest_stats.json": result, "dead_letter.jsonl": "\n".join(json.dumps(d) for d in dead) + "\n"})
    html, md = render("ingest", out)
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html
    assert "the first 10 of 12" in html
    dead_rows = [r for r in md_rows(md) if r[0] == "items.csv"]
    assert [r[1] for r in dead_rows] == [str(i) for i in range(1, 11)]
    assert "Warning" in md and "12 of 40 rows were rejected" in md

    bare = stage_dir(tmp_path / "bare", "ingest", {"fingerprint": "f00d"})  # no stats, no dead letters
    html, md = render("ingest", bare)
    assert "f00d" in md and "no dead-letter file" in md and "No rows were rejected." in md


# ---------------------------------------------------------------- transform
def test_transform_report_numbers_vocab_stats_lengths_and_cold_items(tmp_path):
    stats = {"counts": {"train": 8, "valid": 1, "test": 1, "train_negatives": 3, "items": 5, "queries": 4,
                        "cold_items": 2},
             "numeric": {"price": {"mean": 12.5, "std": 2.25, "min": 9.99, "max": 15.0, "count": 5}},
             "split": "leave_last_out", "vocab_sizes": {"item_id": 5, "title": 7}}
    out = stage_dir(tmp_path, "transform", stats, {
        "stats.json": stats,
        "vocab/title.tsv": "shoe\t4\nred\t3\n<b>bold</b>\t1\n",
        "vocab/item_id.tsv": "i1\t5\ni2\t3\n",
        "cold_items.txt": "i4\ni5\n",
        "query_table.jsonl": '{"query": "red shoe"}\n{"query": "running shoes for men"}\n',
        "items_display.jsonl": '{"item_id": "i1", "title": "Red Shoe", "price": 9.99}\n',
    })
    html, md = render("transform", out)
    rows = md_rows(md)
    assert ["train", "8", "80.0%"] in rows and ["test", "1", "10.0%"] in rows
    assert ["**cold items**", "2"] in rows and ["**split**", "leave\\_last\\_out"] in rows
    assert ["price", "5", "12.5000", "2.2500", "9.9900", "15.0000"] in rows
    title = next(r for r in rows if r[0] == "title")
    assert title[1] == "7" and "shoe (4)" in title[2] and "&lt;b&gt;bold&lt;/b&gt; (1)" in title[2]
    assert "<b>bold</b>" not in html
    # Queries "red shoe" (2 words, 8 chars) and "running shoes for men" (4 words, 21 chars).
    assert ["query", "query", "2", "0", "3.0000", "4", "14.5000", "21"] in rows
    assert "i4" in html and "2 items are held out as cold" in md

    bare = stage_dir(tmp_path / "bare", "transform", {"counts": {}, "split": "hashed"})
    html, md = render("transform", bare)
    assert "No numeric features." in md and "No cold items" in md and "No query or item table" in md


# ---------------------------------------------------------------- train
def training_doc(recalls=(0.1, 0.3, 0.4, 0.35), best=3, stopped=True) -> dict:
    return {"history": [{"epoch": i + 1, "loss": 100.0 - 10 * i, "val_recall_at_10": r, "seconds": 2.0}
                        for i, r in enumerate(recalls)],
            "best_epoch": best, "best_val_recall_at_10": recalls[best - 1] if recalls[0] is not None else None,
            "examples_per_second": 1234.5, "n_train": 2000, "n_valid_queries": 50, "stopped_early": stopped}


def test_train_report_two_curves_with_the_best_epoch_marked(tmp_path):
    doc = training_doc()
    doc["optimizer"], doc["lr"] = "adam", 0.01
    out = stage_dir(tmp_path, "train", doc, {"training.json": doc, "tensorboard": None, "checkpoints": None})
    html, md = render("train", out)
    found = charts(html)
    assert len(found) == 2
    for root, alt in found:
        assert len(of_class(root, "circle", "point")) == 4
        assert len(of_class(root, "circle", "mark")) == 1 and "best epoch 3" in alt
    loss_alt, recall_alt = found[0][1], found[1][1]
    assert "loss" in loss_alt.lower() and "epoch 4: 70" in loss_alt and "recall" in recall_alt.lower()
    rows = md_rows(md)
    assert ["**3 (best)**", "80.0000", "0.4000", "2.0000"] in rows
    assert ["**stopped early**", "yes"] in rows and ["**examples/s (median over epochs)**", "1,234.50"] in rows
    assert ["**optimizer**", "adam"] in rows and ["**lr**", "0.0100"] in rows
    assert "Early stopping ended training after epoch 4" in md
    assert f"tensorboard --logdir {out / 'tensorboard'}" in html


def test_train_report_without_validation_or_tensorboard(tmp_path):
    doc = training_doc(recalls=(None, None), best=2, stopped=False)
    out = stage_dir(tmp_path, "train", doc)  # only stage.json: the result is the training.json dict
    html, md = render("train", out)
    found = charts(html)
    assert len(found) == 1 and len(of_class(found[0][0], "circle", "point")) == 2
    assert "No validation recall was measured" in md and "No TensorBoard log folder" in md
    assert "does not record the optimiser settings" in md


# ---------------------------------------------------------------- evaluate
def metrics_doc(live) -> dict:
    doc = {"recall_at_10": 0.5, "recall_at_50": 0.75, "recall_at_100": 0.9, "ndcg_at_10": 0.3,
           "popularity": {"recall_at_10": 0.1, "recall_at_50": 0.2, "recall_at_100": 0.3, "ndcg_at_10": 0.05},
           "n_queries": 40, "n_items": 100, "n_pairs": 45,
           "protocol": {"per": "query", "mask_seen": True, "split": "hashed"},
           "slices": {"head": {"recall_at_10": 0.6, "popularity_recall_at_10": 0.2, "n": 20},
                      "torso": {"recall_at_10": 0.5, "popularity_recall_at_10": 0.0, "n": 15},
                      "tail": {"recall_at_10": 0.4, "popularity_recall_at_10": 0.0, "n": 10},
                      "cold": {"recall_at_10": None, "popularity_recall_at_10": None, "n": 0,
                               "chance_recall_at_10": 0.1}}}
    if live != "absent":
        doc["live"] = live
    return doc


def test_evaluate_report_against_popularity_and_live(tmp_path):
    live = {"version": "v1", "recall_at_10": 0.4, "recall_at_50": 0.7, "recall_at_100": 0.85, "ndcg_at_10": 0.25,
            "n_items_missing": 3}
    doc = metrics_doc(live)
    out = stage_dir(tmp_path, "evaluate", doc, {"metrics.json": doc})
    html, md = render("evaluate", out)
    rows = md_rows(md)
    assert ["recall@10", "0.5000", "0.1000", "+0.4000", "0.4000", "+0.1000"] in rows
    assert ["ndcg@10", "0.3000", "0.0500", "+0.2500", "0.2500", "+0.0500"] in rows
    assert [r[0] for r in rows if r[0].startswith(("recall@", "ndcg@"))][:4] == \
        ["recall@10", "recall@50", "recall@100", "ndcg@10"]  # by K, recall first
    assert ["cold", "0", "n/a (no pairs)", "n/a (no pairs)", "0.1000"] in rows
    assert "live version v1" in md and "3 catalog items unknown" in md
    (metric_chart, alt), (slice_chart, slice_alt) = charts(html)
    assert len(of_class(metric_chart, "rect", "bar")) == 12  # 4 metrics x (model, popularity, live)
    assert "recall@10 model 0.5000, popularity 0.1000, live v1 0.4000" in alt
    assert len(of_class(slice_chart, "rect", "bar")) == 6  # cold has no pairs: n/a, no bars
    assert "cold model n/a" in slice_alt


@pytest.mark.parametrize("live,expected", [
    ("absent", "evaluate ran without a store"),
    (None, "first publish"),
    ({"version": "v0", "error": f"ValueError: {SCRIPT}"}, "could not be evaluated"),
])
def test_evaluate_report_without_a_live_comparison(tmp_path, live, expected):
    doc = metrics_doc(live)
    del doc["slices"]
    out = stage_dir(tmp_path, "evaluate", doc, {"metrics.json": doc})
    html, md = render("evaluate", out)
    assert expected in md and SCRIPT not in html and SCRIPT not in md
    (metric_chart, _), = charts(html)  # no slices chart
    assert len(of_class(metric_chart, "rect", "bar")) == 8
    assert ["recall@10", "0.5000", "0.1000", "+0.4000"] in md_rows(md)
    assert "Slices were not computed" in md


# ---------------------------------------------------------------- embed
def test_embed_report(tmp_path):
    out = stage_dir(tmp_path, "embed", {"n_items": 4000, "dims": 64, "seconds": 2.0, "items_per_second": 2000.0},
                    {"item_embeddings.parquet": "x"})
    html, md = render("embed", out)
    rows = md_rows(md)
    assert ["**items embedded**", "4,000"] in rows and ["**embedding dimension**", "64"] in rows
    assert ["**items/s**", "2,000.00"] in rows
    bare = stage_dir(tmp_path / "bare", "embed", {"n_items": 10, "seconds": 4.0})
    html, md = render("embed", bare)
    assert ["**items/s**", "2.5000"] in md_rows(md) and "is missing" in md


# ---------------------------------------------------------------- index
def tuning_doc() -> dict:
    def point(kind, leaves, search, reorder, recall, qps):
        return {"kind": kind, "num_leaves": leaves, "dims_per_block": 2 if leaves else None,
                "num_leaves_to_search": search, "reorder_k": reorder, "recall_at_10": recall,
                "qps_batched": qps, "qps_single": qps / 10, "meets_target": recall >= 0.9}
    points = [point("tree_ah", 100, 2, 20, 0.7, 9000.0), point("tree_ah", 100, 3, 20, 0.85, 7000.0),
              point("tree_ah", 100, 4, 20, 0.93, 5000.0), point("tree_ah", 100, 2, 50, 0.91, 6000.0),
              point("brute_force", None, None, None, 1.0, 800.0)]
    return {"n_items": 20000, "dims": 32, "n_queries": 200, "k": 10, "target_recall": 0.9, "met_target": True,
            "reason": "fastest of 3 configurations meeting recall@10 >= 0.9 (of 5 tried)",
            "chosen": {"kind": "tree_ah", "num_leaves": 100, "num_leaves_to_search": 2, "reorder_k": 50},
            "chosen_point": points[3], "configs_tried": 5, "indexes_built": 1,
            "build_seconds": {"tree_ah/leaves=100/dpb=2": 1.0, "brute_force": 0.1}, "seconds": 3.0,
            "exact_numpy_qps_batched": 700.0, "points": points}


def test_index_report_with_a_tuning_sweep(tmp_path):
    doc = tuning_doc()
    metrics = {"kind": "tree_ah", "n_items": 20000, "dims": 32, "recall_at_10_vs_exact": 0.912,
               "qps_batched": 5800.0, "qps_single": 610.0, "build_seconds": 1.2,
               "params": {"kind": "tree_ah", "num_leaves": 100, "num_leaves_to_search": 2, "reorder_k": 50},
               "tuning": {"enabled": True, "target_recall": 0.9, "met_target": True, "reason": doc["reason"]}}
    out = stage_dir(tmp_path, "index", metrics, {"index_metrics.json": metrics, "tuning.json": doc})
    html, md = render("index", out)
    rows = md_rows(md)
    assert ["**recall@10 vs exact**", "0.9120"] in rows and ["**queries/s, batched**", "5,800.00"] in rows
    assert ["**num\\_leaves\\_to\\_search**", "2"] in rows
    assert "fastest of 3 configurations" in md and "meets the target 0.9" in md
    (chart, alt), = charts(html)
    assert len(of_class(chart, "circle", "point")) == 5  # every measured configuration
    assert len(of_class(chart, "polyline", "series")) == 1  # reorder 20's ladder; the others are single points
    assert len(of_class(chart, "circle", "mark")) == 1 and len(of_class(chart, "line", "vline")) == 1
    assert "5 configurations" in alt and "0.91" in alt
    chosen = [r for r in rows if "(chosen)" in r[0]]
    assert len(chosen) == 1 and chosen[0][1:6] == ["100", "2", "2", "50", "0.9100"]


def test_index_report_for_brute_force_and_for_tuning_off(tmp_path):
    single = {**tuning_doc(), "points": [tuning_doc()["points"][-1]], "configs_tried": 1, "indexes_built": 0,
              "reason": "400 items < index.brute_force_below=10000: exact search, no sweep"}
    single["chosen_point"] = single["points"][0]
    metrics = {"kind": "brute_force", "n_items": 400, "dims": 64, "recall_at_10_vs_exact": 1.0,
               "qps_batched": 77735.3, "qps_single": 29715.3, "build_seconds": 6.4, "params": {"kind": "brute_force",
                                                                                              "num_leaves": None},
               "tuning": {"enabled": True, "target_recall": 0.95, "met_target": True}}
    out = stage_dir(tmp_path, "index", metrics, {"index_metrics.json": metrics, "tuning.json": single})
    html, md = render("index", out)
    assert charts(html) == [] and "no curve to plot" in md and "brute\\_force\\_below=10000" in md
    assert ["**queries/s, batched**", "77,735"] in md_rows(md)

    off = {**metrics, "kind": "tree_ah", "tuning": {"enabled": False}}
    out = stage_dir(tmp_path / "off", "index", off, {"index_metrics.json": off})
    html, md = render("index", out)
    assert "Tuning was off" in md and charts(html) == []


# ---------------------------------------------------------------- publish
def test_publish_report_published_with_a_live_baseline(tmp_path):
    result = {"published": True, "version": "v2", "store": "gs://bucket/store", "deleted": ["v0"],
              "baseline": {"version": "v1", "recall_at_10": 0.4},
              "reasons": ["recall@10 0.5000 meets the minimum 0.1000",
                          "recall@10 0.5000 beats the popularity baseline's 0.1000",
                          "recall@10 0.5000 matches or beats live version v1's 0.4000"]}
    summary = {"run_id": "run-7", "metrics": {"recall_at_10": 0.5, "popularity_recall_at_10": 0.1},
               "stage_seconds": {"publish": 1.0, "ingest": 2.0, "train": 30.0},
               "stage_resources": {"train": {"cpu_seconds": 55.5, "peak_rss_mb": 812.3}}}
    out = stage_dir(tmp_path, "publish", result, {"summary.json": summary})
    html, md = render("publish", out)
    rows = md_rows(md)
    assert "Published version v2" in md and ["**run id**", "run-7"] in rows
    assert ["recall@10", "0.5000", "0.4000", "+0.1000", "+25.0%"] in rows
    assert ["popularity recall@10", "0.1000"] in rows
    for reason in result["reasons"]:
        assert f"- {reason}" in md and html_escape(reason) in html
    assert "- v0" in md
    assert [r[0] for r in rows if r[0] in ("ingest", "train", "publish")] == ["ingest", "train", "publish"]
    assert ["train", "30.0", "55.5", "812.3"] in rows and ["ingest", "2.0", "not measured", "not measured"] in rows


def test_publish_report_refused_without_baseline_or_summary(tmp_path):
    result = {"published": False, "version": None, "store": "/s", "deleted": [], "baseline": None,
              "reasons": ["recall@10 0.0100 does not beat the popularity baseline's 0.0200",
                          f"no live version: first publish has no baseline {SCRIPT}"]}
    out = stage_dir(tmp_path, "publish", result)
    html, md = render("publish", out)
    assert "Not published" in md and ["**version**", "none"] in md_rows(md)
    assert "No live baseline" in md and "does not beat the popularity baseline" in md
    assert SCRIPT not in html and SCRIPT not in md

    errored = {**result, "baseline": {"version": "v1", "recall_at_10": None, "error": "OSError: gone"}}
    out = stage_dir(tmp_path / "err", "publish", errored)
    html, md = render("publish", out)
    assert ["recall@10", "see evaluate", "not evaluated", "n/a", "n/a"] in md_rows(md)
    assert "could not be evaluated: OSError: gone" in md


# ---------------------------------------------------------------- the entry point
def test_entry_point_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no report for stage 'serve'"):
        write_stage_report("serve", str(tmp_path))
    with pytest.raises(ReportInputError, match="stage.json does not exist"):
        write_stage_report("ingest", str(tmp_path))
    out = stage_dir(tmp_path, "train", training_doc())
    with pytest.raises(ReportInputError, match="for stage 'train', not 'evaluate'"):
        write_stage_report("evaluate", str(out))
    out = stage_dir(tmp_path / "bad", "evaluate", {}, {"metrics.json": "{not json"})
    with pytest.raises(ReportInputError, match="metrics.json: not valid JSON"):
        write_stage_report("evaluate", str(out))
    assert not (out / "report.html").exists()
    assert list(reports.STAGES) == ["ingest", "transform", "train", "evaluate", "embed", "index", "publish"]


def test_rewriting_a_report_is_idempotent_and_lists_no_report_files(tmp_path):
    out = stage_dir(tmp_path, "embed", {"n_items": 3, "dims": 2, "seconds": 1.0})
    first = render("embed", out)
    assert render("embed", out) == first
    assert "report.html" not in first[1] and "- stage.json" in first[1]
