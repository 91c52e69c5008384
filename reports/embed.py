"""Embed report: items embedded, embedding width, throughput of the batch inference."""

from __future__ import annotations

from reports import artifacts
from reports.base import files_section, number, start
from reports.html import Report


def build(out_dir: str, record: dict) -> Report:
    from core.contracts.files import ITEM_EMBEDDINGS_FILE as FILENAME

    result = record["result"]
    report = start("embed", record, out_dir)
    n, seconds = result.get("n_items"), result.get("seconds")
    rate = result.get("items_per_second")
    if rate is None and number(n) and number(seconds) and seconds > 0:
        rate = n / seconds
    report.facts([("items embedded", n), ("embedding dimension", result.get("dims")),
                  ("inference seconds", seconds), ("items/s", rate)])
    if artifacts.exists(out_dir, FILENAME):
        report.paragraph(f"{FILENAME}: one row per catalog item (item_id, L2-normalised float32 embedding).")
    else:
        report.note(f"{FILENAME} is missing from this artifact.", "warn")
    return files_section(report, artifacts.children(out_dir))
