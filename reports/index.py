"""Index report: the index kind and parameters, recall@10 vs exact search, queries/s, and
the tuner's recall vs queries/s curve (when a sweep ran)."""

from __future__ import annotations

from reports import artifacts
from reports.base import files_section, start
from reports.html import Cell, Report


def build(out_dir: str, record: dict) -> Report:
    from core.contracts.files import INDEX_METRICS_FILE as METRICS
    from core.contracts.files import TUNING_FILE as TUNING

    metrics = artifacts.read_json(out_dir, METRICS) or record["result"]
    report = start("index", record, out_dir)
    report.facts([("kind", metrics.get("kind")), ("items", metrics.get("n_items")),
                  ("dimensions", metrics.get("dims")),
                  ("recall@10 vs exact", metrics.get("recall_at_10_vs_exact")),
                  ("queries/s, batched", metrics.get("qps_batched")),
                  ("queries/s, one at a time", metrics.get("qps_single")),
                  ("build seconds", metrics.get("build_seconds"))])
    if metrics.get("tune_queries"):
        split = f", {metrics['query_split']} split" if metrics.get("query_split") else ""
        report.facts([("measurement queries", f"{metrics['tune_queries']}{split}: "
                                              f"{metrics.get('n_tune_queries')} tuning, "
                                              f"{metrics.get('n_eval_queries')} reporting")])
    recall = metrics.get("recall_at_10_vs_exact")
    tuning = metrics.get("tuning") or {}
    target = tuning.get("target_recall")
    if isinstance(recall, (int, float)) and isinstance(target, (int, float)):
        met = recall >= target
        source = metrics.get("tune_queries")
        # Artifacts from before query embeddings existed carry no flag: they were stand-ins.
        queries = ("real queries (query tower embeddings, a sample disjoint from the tuner's)"
                   if source == "real" else "stand-in queries (perturbed item vectors)")
        ties = ("; items tied with the 10th exact score count as correct"
                if metrics.get("recall_definition") == "tie_aware" else "")
        report.note(f"Recall@10 against exact search {recall:.4f} {'meets' if met else 'is below'} the target "
                    f"{target} (measured on held-out {queries} after the build{ties}).", "ok" if met else "warn")
    if metrics.get("tune_queries") == "stand_in":
        report.note("No query embeddings came with the item embeddings, so the tuner measured on stand-in "
                    "queries (perturbed item vectors), not on the query tower's outputs.", "warn")

    report.heading("Parameters")
    params = metrics.get("params") or {}
    if params:
        report.facts([(k, v if v is not None else Cell("-")) for k, v in params.items()])
    else:
        report.paragraph("No parameters were recorded.")

    _embedding_map(report, out_dir)

    report.heading("Tuning")
    doc = artifacts.read_json(out_dir, TUNING)
    if tuning.get("enabled") is False:
        report.paragraph("Tuning was off (index.tune is false): the configured parameters were used as they are.")
    elif doc is None:
        report.paragraph(f"No {TUNING} in this artifact.")
    if doc is not None:
        _tuning(report, doc)
    return files_section(report, artifacts.children(out_dir))


def _embedding_map(report: Report, out_dir: str) -> None:
    from indexer.embedding_map import MAP_FILE, map_alt, map_svg

    doc = artifacts.read_json(out_dir, MAP_FILE)
    if doc is None:
        return
    report.heading("Embedding map")
    report.chart(map_svg(doc), alt=map_alt(doc),
                 caption="Item embeddings projected to their first two principal components; each ringed "
                         "query is joined to its positive items in its split. A projection keeps only part "
                         "of the space's spread (the axis labels say how much): read clusters, not distances "
                         "to the last pixel.")
    queries = doc.get("queries") or []
    if queries:
        report.table(["query", "key", "positives drawn", "mean score of its positives", "mean score of the catalog"],
                     [[f"q{i + 1}", q["key"], q["n_positives"], q["mean_score_positives"], q["mean_score_catalog"]]
                      for i, q in enumerate(queries)])


def _tuning(report: Report, doc: dict) -> None:
    from indexer.tuner import tuning_chart

    points = doc.get("points") or []
    if doc.get("reason"):
        report.paragraph(f"Choice: {doc['reason']}.")
    report.facts([("target recall@10", doc.get("target_recall")), ("target met", doc.get("met_target")),
                  ("configurations measured", doc.get("configs_tried", len(points))),
                  ("indexes built", doc.get("indexes_built")),
                  ("exact numpy queries/s (batched)", doc.get("exact_numpy_qps_batched")),
                  ("tuning seconds", doc.get("seconds"))])
    if len(points) < 2:
        # One measured point (exact search below the size threshold) is not a curve.
        report.paragraph("A single configuration was measured (no sweep), so there is no curve to plot.")
    else:
        report.chart(tuning_chart(doc), alt=_alt(doc),
                     caption="Each line is one built index and re-scoring pool, its points the leaves searched; "
                             "the dashed line is the recall target, the ringed point the choice.")
    chosen = doc.get("chosen_point")
    rows = []
    for p in points:
        is_chosen = p == chosen
        rows.append([Cell(f"{p.get('kind')}{' (chosen)' if is_chosen else ''}", strong=is_chosen),
                     _dash(p.get("num_leaves")), _dash(p.get("dims_per_block")),
                     _dash(p.get("num_leaves_to_search")), _dash(p.get("reorder_k")), p.get("recall_at_10"),
                     p.get("qps_batched"), p.get("qps_single"), p.get("meets_target")])
    report.table(["kind", "num_leaves", "dims/block", "leaves searched", "reorder_k", "recall@10",
                  "queries/s batched", "queries/s single", "meets target"], rows)


def _dash(v):
    return v if v is not None else Cell("-")


def _alt(doc: dict) -> str:
    points = doc.get("points") or []
    chosen = doc.get("chosen_point") or {}
    return (f"Recall@10 vs batched queries/s (log scale) for {len(points)} configurations; target "
            f"{doc.get('target_recall')}; chosen {chosen.get('kind')} at recall {chosen.get('recall_at_10')} "
            f"and {chosen.get('qps_batched')} queries/s")
