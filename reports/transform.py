"""Transform report: split sizes, vocabulary sizes (with their top tokens and what each cut
folded: a warning per id feature whose cap folded ids), numeric feature statistics,
lengths of the raw string fields, and the cold items."""

from __future__ import annotations

import json

from core.contracts import files as names
from reports import artifacts
from reports.base import files_section, start
from reports.html import Cell, Report

#: Rows of query_table.jsonl / items_display.jsonl sampled for string lengths (the head of
#: the file: enough for a mean, cheap for a million-item catalog).
LENGTH_SAMPLE = 20_000
#: Most frequent tokens shown per vocabulary.
TOP_TOKENS = 5
SPLIT_ORDER = (*names.RECORD_SPLITS, "queries", "cold_items")


def build(out_dir: str, record: dict) -> Report:
    from features.transform import folded_ids_sentence

    stats = artifacts.read_json(out_dir, names.TRANSFORM_STATS_FILE) or record["result"]
    counts = stats.get("counts") or {}
    report = start("transform", record, out_dir)
    n_cold = artifacts.count_lines(out_dir, names.COLD_ITEMS_FILE)
    if n_cold is None:
        n_cold = counts.get("cold_items")
    positives = sum(int(counts.get(k) or 0) for k in names.SPLITS)
    report.facts([("split", stats.get("split")), ("positive pairs", positives),
                  ("catalog items", counts.get("items")), ("query keys", counts.get("queries")),
                  ("cold items", n_cold)])
    coverage = stats.get("vocab_coverage") or {}
    # Folded ids first, where nobody can miss them: each is a share of users / items with no row.
    for feature, cov in sorted(coverage.items()):
        if cov.get("type") == "id" and cov.get("folded"):
            report.note(folded_ids_sentence(feature, cov), "warn")

    report.heading("Split sizes")
    shown = [k for k in SPLIT_ORDER if k in counts] + sorted(k for k in counts if k not in SPLIT_ORDER)
    if shown:
        report.table(["output", "rows", "share of positives"],
                     [[n, counts[n], _share(counts[n], positives) if n in names.SPLITS else None]
                      for n in shown])
    else:
        report.paragraph("No counts were recorded.")

    report.heading("Vocabularies")
    vocab = stats.get("vocab_sizes") or {}
    if vocab and coverage:
        report.paragraph("distinct = values seen (train rows for query features, the catalog for item features; "
                         "item_id: items with train positives, the ones an id row can serve); folded = distinct "
                         "values without their own row (past the cap, or under vocab_min_count); folded "
                         "interactions = train positives carrying a folded id. id features keep every id unless "
                         "transform.max_id_vocab_size caps them.")
        report.table(["feature", "type", "entries", "distinct", "folded", "cap", "folded interactions",
                      f"top {TOP_TOKENS} (train count)"],
                     [[name, cov.get("type"), size, cov.get("distinct"), cov.get("folded"), _cap(cov),
                       _folded_interactions(cov), _top_tokens(out_dir, name)]
                      for name, size in sorted(vocab.items()) for cov in [coverage.get(name) or {}]])
    elif vocab:
        report.table(["feature", "entries", f"top {TOP_TOKENS} (train count)"],
                     [[name, size, _top_tokens(out_dir, name)] for name, size in sorted(vocab.items())])
    else:
        report.paragraph("No vocabularies (no id, categorical or text features).")

    report.heading("Numeric features")
    numeric = stats.get("numeric") or {}
    if numeric:
        report.table(["feature", "count", "mean", "std", "min", "max"],
                     [[name, s.get("count"), s.get("mean"), s.get("std"), s.get("min"), s.get("max")]
                      for name, s in sorted(numeric.items())])
    else:
        report.paragraph("No numeric features.")

    report.heading("String field lengths")
    rows = (_lengths(out_dir, names.QUERY_TABLE_FILE, "query") + _lengths(out_dir, names.ITEMS_DISPLAY_FILE, "item"))
    if rows:
        report.paragraph(f"Raw values as ingested (before normalisation), from the first {LENGTH_SAMPLE:,} "
                         "rows of the query table and the item display table; words = whitespace-separated.")
        report.table(["side", "field", "rows", "empty", "mean words", "max words", "mean chars", "max chars"], rows)
    else:
        report.paragraph("No query or item table to measure.")

    report.heading("Cold items")
    if n_cold:
        sample = list(artifacts.iter_lines(out_dir, names.COLD_ITEMS_FILE, 10))
        report.paragraph(f"{n_cold} items are held out as cold (every positive in test, train count 0); "
                         f"the item tower embeds them from content only. First {len(sample)}:")
        report.bullets(sample)
    else:
        report.paragraph("No cold items (transform.cold_item_fraction is 0).")
    return files_section(report, artifacts.children(out_dir))


def _share(n, total: int):
    return Cell(f"{100.0 * n / total:.1f}%", numeric=True) if total and isinstance(n, (int, float)) else None


def _cap(cov: dict):
    """The cap that applied, 'none' for an uncapped vocabulary, None when not recorded."""
    if not cov:
        return None
    return "none" if cov.get("max_size") is None else cov["max_size"]


def _folded_interactions(cov: dict):
    """'3 of 7 (42.9%)' for an id feature, None otherwise."""
    n, folded = cov.get("interactions"), cov.get("folded_interactions")
    if n is None or folded is None:
        return None
    return Cell(f"{folded:,} of {n:,}" + (f" ({100.0 * folded / n:.1f}%)" if n else ""), numeric=True)


def _top_tokens(out_dir: str, feature: str) -> str:
    """'tok (count), ...' from vocab/<feature>.tsv (count-descending), '' when absent."""
    out = []
    for line in artifacts.iter_lines(out_dir, names.vocab_file(feature), TOP_TOKENS):
        token, _, count = line.partition("\t")
        out.append(f"{token} ({count})" if count else token)
    return ", ".join(out)


def _lengths(out_dir: str, name: str, side: str) -> list[list]:
    """One row per string field of a JSONL table: side, field, rows, empty, words and chars."""
    acc: dict[str, list] = {}  # field -> [rows, empty, words sum, words max, chars sum, chars max]
    for line in artifacts.iter_lines(out_dir, name, LENGTH_SAMPLE):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise artifacts.ReportInputError(f"{artifacts.path(out_dir, name)}: a line is not valid JSON") from None
        for field, value in row.items():
            if not isinstance(value, str):
                continue
            a = acc.setdefault(field, [0, 0, 0, 0, 0, 0])
            words, chars = len(value.split()), len(value)
            a[0] += 1
            a[1] += not value.strip()
            a[2] += words
            a[3] = max(a[3], words)
            a[4] += chars
            a[5] = max(a[5], chars)
    return [[side, field, a[0], a[1], a[2] / a[0], a[3], a[4] / a[0], a[5]] for field, a in acc.items()]
