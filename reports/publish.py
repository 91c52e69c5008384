"""Gate + publish report: published or not, the version, the live baseline it was compared
with, every gate reason, versions removed by retention, and (when summary.json is already in
the folder) this run's headline metrics and seconds per stage."""

from __future__ import annotations

from core.contracts.files import SUMMARY_FILE
from reports import artifacts
from reports.base import TITLES, files_section, number, start
from reports.evaluate import label, metric_keys
from reports.html import Cell, Report



def build(out_dir: str, record: dict) -> Report:
    result = record["result"]
    summary = artifacts.read_json(out_dir, SUMMARY_FILE) or {}
    report = start("publish", record, out_dir)
    published, version = bool(result.get("published")), result.get("version")
    if published:
        report.note(f"Published version {version}; it is now the live version of {result.get('store')}.", "ok")
    else:
        report.note("Not published: the gate refused this run (reasons below); the live version is unchanged.",
                    "bad")
    baseline = result.get("baseline")
    report.facts([("published", published), ("version", version if version else Cell("none")),
                  ("store", result.get("store")), ("run id", summary.get("run_id") or Cell("not recorded")),
                  ("compared against", _baseline_text(baseline))])

    report.heading("Against the live version")
    metrics = summary.get("metrics") or {}
    run_recall = metrics.get("recall_at_10")
    live_recall = baseline.get("recall_at_10") if isinstance(baseline, dict) else None
    if isinstance(baseline, dict):
        diff = Cell(f"{run_recall - live_recall:+.4f}", numeric=True) \
            if number(run_recall) and number(live_recall) else None
        rel = Cell(f"{(run_recall - live_recall) / live_recall:+.1%}", numeric=True) \
            if number(run_recall) and number(live_recall) and live_recall else None
        report.table(["metric", "this run", f"live {baseline.get('version')}", "difference", "relative"],
                     [["recall@10", run_recall if run_recall is not None else Cell("see evaluate"),
                       live_recall if live_recall is not None else Cell("not evaluated"), diff, rel]])
        if baseline.get("error"):
            report.note(f"The live version could not be evaluated: {baseline['error']}", "warn")
    else:
        report.paragraph("No live baseline: the store had no live version (first publish), or evaluate made no "
                         "comparison.")
    if metrics:
        keys = metric_keys(metrics)
        pop = [k for k in metrics if k.startswith("popularity_")]
        report.table(["headline metric", "this run"],
                     [[label(k), metrics[k]] for k in keys]
                     + [["popularity " + label(k[len("popularity_"):]), metrics[k]] for k in sorted(pop)])

    report.heading("Gate reasons")
    reasons = list(result.get("reasons") or [])
    if reasons:
        report.bullets(reasons)
    else:
        report.paragraph("No reasons were recorded.")

    report.heading("Retention")
    deleted = list(result.get("deleted") or [])
    if deleted:
        report.paragraph(f"{len(deleted)} old version(s) removed by retention:")
        report.bullets(deleted)
    else:
        report.paragraph("No versions were removed.")

    stage_seconds = summary.get("stage_seconds") or {}
    if stage_seconds:
        report.heading("Seconds per stage")
        order = list(TITLES) + sorted(k for k in stage_seconds if k not in TITLES)
        # CPU seconds above wall seconds: the stage used more than one core.
        resources = summary.get("stage_resources") or {}

        def cell(value) -> Cell:
            return Cell("not measured") if value is None else Cell(f"{float(value):.1f}", numeric=True)

        report.table(["stage", "seconds", "CPU seconds", "peak RSS (MB)"],
                     [[k, cell(stage_seconds[k]), cell((resources.get(k) or {}).get("cpu_seconds")),
                       cell((resources.get(k) or {}).get("peak_rss_mb"))]
                      for k in order if k in stage_seconds])
    return files_section(report, artifacts.children(out_dir))


def _baseline_text(baseline) -> object:
    if not isinstance(baseline, dict):
        return Cell("no live baseline")
    recall = baseline.get("recall_at_10")
    return Cell(f"live version {baseline.get('version')}"
                + (f" (recall@10 {recall:.4f})" if number(recall) else " (not evaluated)"))
