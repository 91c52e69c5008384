"""What every stage report shares: the title line and the closing list of files."""

from __future__ import annotations

from core.contracts.files import REPORT_HTML_FILE, REPORT_MARKDOWN_FILE
from reports.html import Report, fmt

#: Human names of the stages (the report titles).
TITLES = {"ingest": "Ingest", "transform": "Transform", "train": "Train", "evaluate": "Evaluate",
          "embed": "Embed", "index": "Index", "publish": "Gate + publish"}


def start(stage: str, record: dict, out_dir: str) -> Report:
    """A report titled after the stage, subtitled with its wall time and folder."""
    seconds = record.get("seconds")
    took = f"{fmt(float(seconds), 1)} s" if isinstance(seconds, (int, float)) else "time not recorded"
    return Report(f"{TITLES.get(stage, stage)} stage report", f"stage {stage} · {took} · {out_dir}")


def files_section(report: Report, names: list[str]) -> Report:
    """The folder's top-level entries, so a reader knows what else the artifact holds."""
    report.heading("Files in this artifact")
    shown = [n for n in names if n not in (REPORT_HTML_FILE, REPORT_MARKDOWN_FILE)]
    return report.bullets(shown) if shown else report.paragraph("(empty)")


def number(value) -> bool:
    """True for an int/float that is not a bool (JSON numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
