"""Evaluate report: recall@K / nDCG@K of the model vs the popularity baseline and vs the live
version (when one was scored), per item-popularity slice, as tables and grouped bar charts;
for a sampled evaluation, the 95% intervals and the paired differences."""

from __future__ import annotations

import re

from core.contracts import files as names
from core.svg_chart import BarSeries, bar_chart
from reports import artifacts
from reports.base import files_section, number, start
from reports.html import Cell, Report

#: Written by evaluation.evaluate.evaluate_model.
METRICS_FILE = names.METRICS_FILE
SLICE_ORDER = ("head", "torso", "tail", "cold")
_METRIC = re.compile(r"^(recall|ndcg)_at_(\d+)$")


def metric_keys(metrics: dict) -> list[str]:
    """recall_at_K keys by K, then ndcg_at_K keys by K (whatever evaluate.ks / ndcg_k were)."""
    found = [(m.group(1) != "recall", int(m.group(2)), k) for k in metrics for m in [_METRIC.match(k)] if m]
    return [k for *_, k in sorted(found)]


def label(key: str) -> str:
    """recall_at_10 -> recall@10."""
    m = _METRIC.match(key)
    return f"{m.group(1)}@{m.group(2)}" if m else key


def build(out_dir: str, record: dict) -> Report:
    metrics = artifacts.read_json(out_dir, METRICS_FILE) or record["result"]
    report = start("evaluate", record, out_dir)
    keys = metric_keys(metrics)
    pop = metrics.get("popularity") or {}
    live, live_note = _live(metrics)
    protocol = metrics.get("protocol") or {}
    headline = [k for k in ("recall_at_10", "ndcg_at_10") if k in metrics] or keys[:1]
    report.facts([(f"model {label(k)}", metrics[k]) for k in headline]
                 + [(f"popularity {label(k)}", pop.get(k)) for k in headline]
                 + [("live " + label(k), live.get(k)) for k in headline if live is not None]
                 + [("test queries", metrics.get("n_queries"))]
                 + ([("test queries in the split (sampled from)", metrics.get("n_queries_total"))]
                    if metrics.get("sampled") else [])
                 + [("test pairs", metrics.get("n_pairs")),
                    ("catalog items", metrics.get("n_items")),
                    ("protocol", f"per {protocol.get('per', 'n/a')}, seen items masked: "
                                 f"{'yes' if protocol.get('mask_seen') else 'no'}, "
                                 f"split {protocol.get('split', 'n/a')}")])
    report.note(*live_note)

    report.heading("Model vs baselines")
    if keys:
        headers = ["metric", "model", "popularity", "model − popularity"]
        if live is not None:
            headers += [f"live {live.get('version')}", "model − live"]
        rows = []
        for k in keys:
            row = [label(k), metrics.get(k), pop.get(k), _diff(metrics.get(k), pop.get(k))]
            if live is not None:
                row += [live.get(k), _diff(metrics.get(k), live.get(k))]
            rows.append(row)
        report.table(headers, rows)
        series = [BarSeries("model", [metrics.get(k) for k in keys], "#1f77b4"),
                  BarSeries("popularity", [pop.get(k) for k in keys], "#7f7f7f")]
        if live is not None:
            series.append(BarSeries(f"live {live.get('version')}", [live.get(k) for k in keys], "#ff7f0e"))
        report.chart(bar_chart([label(k) for k in keys], series, title="Held-out metrics",
                               y_label="score (fraction)", y_range=(0.0, 1.0)),
                     alt="Grouped bars per metric: " + "; ".join(
                         f"{label(k)} " + ", ".join(f"{s.name} {_short(v)}" for s, v in
                                                    ((s, s.values[i]) for s in series))
                         for i, k in enumerate(keys)),
                     caption=("Model, popularity baseline and live version" if live is not None
                              else "Model and popularity baseline") + " on the same test split and protocol.")
    else:
        report.paragraph(f"{METRICS_FILE} holds no recall@K / nDCG@K values.")

    if metrics.get("sampled") and keys:
        _sampling_section(report, metrics, keys, live)

    report.heading("Item popularity slices")
    slices = metrics.get("slices")
    if isinstance(slices, dict) and slices:
        names = [s for s in SLICE_ORDER if s in slices] + sorted(s for s in slices if s not in SLICE_ORDER)
        report.paragraph("Hit rate at 10 of the test pairs whose item is in the slice (head = the most popular "
                         "items holding half the train positives, torso = up to 80%, tail = the rest seen in "
                         "train, cold = never seen in train).")
        report.table(["slice", "test pairs", "model recall@10", "popularity recall@10", "chance recall@10"],
                     [[n, slices[n].get("n"), _na(slices[n], "recall_at_10"),
                       _na(slices[n], "popularity_recall_at_10"),
                       slices[n].get("chance_recall_at_10", Cell("-", numeric=True))]
                      for n in names])
        report.chart(bar_chart(names, [BarSeries("model", [slices[n].get("recall_at_10") for n in names], "#1f77b4"),
                                       BarSeries("popularity", [slices[n].get("popularity_recall_at_10")
                                                                for n in names], "#7f7f7f")],
                               title="Recall@10 by item popularity slice", y_label="recall@10 (fraction)",
                               y_range=(0.0, 1.0)),
                     alt="Recall@10 per slice: " + "; ".join(
                         f"{n} model {_short(slices[n].get('recall_at_10'))}, popularity "
                         f"{_short(slices[n].get('popularity_recall_at_10'))}" for n in names),
                     caption="Slices with no test pairs show n/a.")
    else:
        report.paragraph("Slices were not computed (evaluate.slices is false).")
    return files_section(report, artifacts.children(out_dir))


def _sampling_section(report: Report, metrics: dict, keys: list[str], live: dict | None) -> None:
    """95% intervals of a sampled evaluation: each metric's, and the paired differences."""
    sampling = metrics.get("sampling") or {}
    report.heading("Sampled queries: 95% intervals")
    count = lambda v: f"{v:,}" if number(v) else "n/a"  # noqa: E731
    report.paragraph(f"{count(metrics.get('n_queries'))} of the {count(metrics.get('n_queries_total'))} test queries "
                     f"were scored (a seeded sample, seed {sampling.get('seed', 'n/a')}; evaluate.max_queries "
                     f"{count(sampling.get('max_queries'))}), the same ones for the model, the popularity baseline "
                     f"and the live version. Intervals: {sampling.get('interval', 'n/a')}. A difference is taken "
                     "query by query on the sample (paired), so it is tighter than the metrics' own intervals.")
    pop = metrics.get("popularity") or {}
    headers = ["metric", "model", "model 95%", "popularity 95%", "model − popularity (95%)"]
    if live is not None:
        headers += ["live 95%", "model − live (95%)"]
    rows = []
    for k in keys:
        row = [label(k), metrics.get(k), _span((metrics.get("ci95") or {}).get(k)),
               _span((pop.get("ci95") or {}).get(k)), _paired((pop.get("diff") or {}).get(k))]
        if live is not None:
            row += [_span((live.get("ci95") or {}).get(k)), _paired((live.get("diff") or {}).get(k))]
        rows.append(row)
    report.table(headers, rows)


def _span(interval) -> Cell:
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(number(v) for v in interval):
        return Cell(f"[{interval[0]:.4f}, {interval[1]:.4f}]", numeric=True)
    return Cell("n/a", numeric=True)


def _paired(diff) -> Cell:
    if isinstance(diff, dict) and number(diff.get("mean")):
        span = _span(diff.get("ci95"))
        return Cell(f"{diff['mean']:+.4f} {span.text}", numeric=True)
    return Cell("n/a", numeric=True)


def _live(metrics: dict) -> tuple[dict | None, tuple[str, str]]:
    """(the live version's metrics when scored, else None; (note text, note kind))."""
    if "live" not in metrics:
        return None, ("No live comparison: evaluate ran without a store.", "info")
    live = metrics["live"]
    if live is None:
        return None, ("No live version in the store: this would be the first publish (no baseline).", "info")
    if not isinstance(live, dict):
        raise artifacts.ReportInputError(f"{METRICS_FILE}: live must be null or an object, got {live!r}")
    if "error" in live:
        return None, (f"The live version {live.get('version')} could not be evaluated: {live['error']}", "warn")
    missing = live.get("n_items_missing")
    extra = f" ({missing} catalog items unknown to it count as misses)" if missing else ""
    return live, (f"Compared against live version {live.get('version')} on the same test split{extra}.", "info")


def _diff(a, b):
    if number(a) and number(b):
        return Cell(f"{a - b:+.4f}", numeric=True)
    return None


def _na(values: dict, key: str):
    v = values.get(key)
    return v if v is not None else Cell("n/a (no pairs)" if not values.get("n") else "n/a", numeric=True)


def _short(v) -> str:
    return f"{v:.4f}" if number(v) else "n/a"
