"""Rendering a stage's report pages and checking them (self-contained HTML, Markdown table rows)."""

from __future__ import annotations

import re
from pathlib import Path

from reports import write_stage_report


IMG = re.compile(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">')


def render(stage: str, out: Path) -> tuple[str, str]:
    paths = write_stage_report(stage, str(out))
    assert paths == {"html": str(out / "report.html"), "markdown": str(out / "report.md")}
    html, md = Path(paths["html"]).read_text(), Path(paths["markdown"]).read_text()
    assert_self_contained(html)
    return html, md


def assert_self_contained(html: str) -> None:
    """No scripts, no external resources: every src is a data: URI; no URL outside them."""
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    lowered = html.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    srcs = re.findall(r'src="([^"]*)"', html)
    assert all(s.startswith("data:image/svg+xml;base64,") for s in srcs)
    assert "http://" not in IMG.sub("", html) and "https://" not in IMG.sub("", html)


def md_rows(md: str) -> list[list[str]]:
    """Cells of every Markdown table row."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ")]
