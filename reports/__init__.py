"""Human-readable per-stage reports for the pipeline UI.

``write_stage_report(stage, out_dir)`` runs after a stage has finished (``stage.json`` is in
its artifact folder), reads ONLY that folder and writes two files into it:

- ``report.html``: one self-contained page (inline CSS, no scripts or external URLs, charts as
  base64 SVG ``<img>`` with alt text), for a KFP HTML artifact or an iframe;
- ``report.md``: headline numbers and tables, for a KFP Markdown artifact.

Imports flow components -> reports -> (features, trainer, indexer constants) -> core; nothing
but components imports this package. Each stage's module is imported only when that stage is
reported, so reporting one stage never loads another stage's heavy dependencies.
"""

from __future__ import annotations

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)

import importlib

from core.contracts.files import REPORT_HTML_FILE, REPORT_MARKDOWN_FILE
from reports import artifacts
from reports.artifacts import ReportInputError

__all__ = ["HTML_FILE", "MARKDOWN_FILE", "STAGES", "ReportInputError", "render_stage_report",
           "write_stage_report"]

HTML_FILE = REPORT_HTML_FILE
MARKDOWN_FILE = REPORT_MARKDOWN_FILE
#: Stage name (stage.json "stage") -> the reports module that renders it, in pipeline order.
STAGES = {"ingest": "reports.ingest", "transform": "reports.transform", "train": "reports.train",
          "evaluate": "reports.evaluate", "embed": "reports.embed", "index": "reports.index",
          "publish": "reports.publish"}


def render_stage_report(stage: str, out_dir: str):
    """The :class:`reports.html.Report` of a finished stage's folder (nothing written).

    Raises:
        ValueError: unknown stage.
        ReportInputError: stage.json missing or for another stage, or a malformed file.
    """
    if stage not in STAGES:
        raise ValueError(f"no report for stage {stage!r}; known stages: {', '.join(STAGES)}")
    record = artifacts.read_stage(out_dir, stage)
    return importlib.import_module(STAGES[stage]).build(out_dir, record)


def write_stage_report(stage: str, out_dir: str) -> dict:
    """Write ``report.html`` and ``report.md`` into ``out_dir`` (local folder or gs:// prefix).

    Returns:
        ``{"html": path of report.html, "markdown": path of report.md}``.
    """
    report = render_stage_report(stage, out_dir)
    return {"html": artifacts.write_text(out_dir, HTML_FILE, report.to_html()),
            "markdown": artifacts.write_text(out_dir, MARKDOWN_FILE, report.to_markdown())}
