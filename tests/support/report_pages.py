"""Rendering a stage's report pages and checking them (self-contained HTML, Markdown table rows)."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from reports import write_stage_report


NS = "{http://www.w3.org/2000/svg}"
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


def stage_dir(tmp_path: Path, stage: str, result: dict, files: dict | None = None, seconds: float = 1.5) -> Path:
    """A folder with stage.json plus ``files`` (name -> dict (JSON) | str (text) | None (folder))."""
    out = tmp_path / stage
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage.json").write_text(json.dumps({"stage": stage, "seconds": seconds, "result": result}))
    for name, content in (files or {}).items():
        path = out / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return out


def charts(html: str) -> list[tuple[ET.Element, str]]:
    """(parsed SVG root, alt text) of every embedded chart image."""
    out = []
    for b64, alt in IMG.findall(html):
        root = ET.fromstring(base64.b64decode(b64).decode("utf-8"))
        assert root.tag == f"{NS}svg" and alt
        out.append((root, alt))
    return out


def of_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{NS}{tag}") if e.get("class") == cls]
