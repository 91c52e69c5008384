"""Ingest report: rows read / kept / rejected per table, dead letters, the data fingerprint."""

from __future__ import annotations

import json

from reports import artifacts
from reports.base import files_section, start
from reports.html import Cell, Report

#: Dead-letter rows shown in the report (the file holds them all).
DEAD_LETTER_SAMPLES = 10
#: Characters of a rejected row's raw values shown (rows can be arbitrarily wide).
RAW_CHARS = 160


def build(out_dir: str, record: dict) -> Report:
    from core.contracts.files import DEAD_LETTER_FILE
    from core.contracts.files import INGEST_STATS_FILE as STATS_FILE

    # ingest_stats.json is the contract; stage.json's result carries the same numbers.
    stats = artifacts.read_json(out_dir, STATS_FILE) or record["result"]
    files = stats.get("files") or {}
    report = start("ingest", record, out_dir)

    read = sum(int(f.get("rows") or 0) for f in files.values())
    kept = sum(int(f.get("ok") or 0) for f in files.values())
    bad = sum(int(f.get("bad") or 0) for f in files.values())
    n_dead = artifacts.count_lines(out_dir, DEAD_LETTER_FILE)
    report.facts([("rows read", read), ("rows kept", kept), ("rows rejected", bad),
                  ("bad fraction", stats.get("bad_fraction")),
                  ("dead letters", n_dead if n_dead is not None else Cell("no dead-letter file")),
                  ("data fingerprint (sha256)", stats.get("fingerprint"))])
    if bad:
        report.note(f"{bad} of {read} rows were rejected; see the dead letters below.", "warn")
    else:
        report.note("Every row passed validation.", "ok")

    report.heading("Tables")
    if files:
        report.table(["table", "source", "rows read", "kept", "rejected"],
                     [[name, f.get("path"), f.get("rows"), f.get("ok"), f.get("bad")] for name, f in files.items()])
    else:
        report.paragraph("No per-table counts were recorded.")

    report.heading("Dead letters")
    samples = [_dead_row(line) for line in artifacts.iter_lines(out_dir, DEAD_LETTER_FILE, DEAD_LETTER_SAMPLES)]
    if samples:
        shown = f"the first {len(samples)} of {n_dead}" if n_dead and n_dead > len(samples) else f"all {len(samples)}"
        report.paragraph(f"Rejected rows ({shown}; row = 1-based data row, header excluded; "
                         f"full list in {DEAD_LETTER_FILE}).")
        report.table(["file", "row", "field", "reason", "raw values"], samples)
    else:
        report.paragraph("No rows were rejected.")
    return files_section(report, artifacts.children(out_dir))


def _dead_row(line: str) -> list:
    """[file, row, field, reason, raw (truncated JSON)] of one dead_letter.jsonl line."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError:
        # Shown, not hidden: a reader should see the line the file really holds.
        return ["?", None, "?", "unreadable dead-letter line", _clip(line)]
    if not isinstance(d, dict):
        return ["?", None, "?", "unreadable dead-letter line", _clip(line)]
    raw = d.get("raw")
    raw_text = json.dumps(raw, ensure_ascii=False, sort_keys=True, default=str) if raw is not None else ""
    return [d.get("file"), d.get("row"), d.get("field"), d.get("reason"), _clip(raw_text)]


def _clip(text: str) -> str:
    return text if len(text) <= RAW_CHARS else text[:RAW_CHARS - 1] + "…"
