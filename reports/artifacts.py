"""Reading a stage's artifact folder (local or gs://) for its report.

Reports read ONLY the stage's own folder. Optional files may be missing (a stage run
without a live version, a brute-force index without a sweep): the readers return None
then, and the report says so. A file that exists but is not valid JSON is a broken
stage, not an optional input, so it raises with the file named.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Optional

from core import storage
from core.contracts.files import STAGE_FILE


class ReportInputError(ValueError):
    """A stage folder lacks stage.json or holds a malformed file (the message names it)."""


def path(out_dir: str, name: str) -> str:
    return storage.join(out_dir, name)


def exists(out_dir: str, name: str) -> bool:
    return storage.exists(path(out_dir, name))


def read_json(out_dir: str, name: str) -> Optional[dict]:
    """The parsed JSON file ``name`` of the folder, or None when it does not exist."""
    p = path(out_dir, name)
    if not storage.exists(p):
        return None
    try:
        return json.loads(storage.read_text(p))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{p}: not valid JSON ({exc})") from None


def read_stage(out_dir: str, stage: str) -> dict:
    """stage.json ({"stage", "seconds", "result"}); it must exist and name ``stage``."""
    record = read_json(out_dir, STAGE_FILE)
    if record is None:
        raise ReportInputError(f"{path(out_dir, STAGE_FILE)} does not exist: write the report after the stage ran")
    if not isinstance(record, dict) or not isinstance(record.get("result", {}), dict):
        raise ReportInputError(f"{path(out_dir, STAGE_FILE)}: expected {{'stage', 'seconds', 'result': {{...}}}}")
    if record.get("stage") != stage:
        raise ReportInputError(f"{path(out_dir, STAGE_FILE)} is for stage {record.get('stage')!r}, not {stage!r}")
    record.setdefault("result", {})
    return record


def iter_lines(out_dir: str, name: str, limit: Optional[int] = None) -> Iterator[str]:
    """Non-blank lines of a text file (nothing when it does not exist), at most ``limit``.

    Local files are streamed, so sampling the head of a large table costs only that head.
    """
    p = path(out_dir, name)
    if not storage.exists(p):
        return
    if storage.is_gcs(p):
        yield from (line for i, line in enumerate(storage.iter_lines(p)) if limit is None or i < limit)
        return
    with open(p, encoding="utf-8", errors="replace") as fh:
        kept = 0
        for line in fh:
            if not line.strip():
                continue
            if limit is not None and kept >= limit:
                break
            kept += 1
            yield line.rstrip("\n")


def count_lines(out_dir: str, name: str) -> Optional[int]:
    """Non-blank lines of a text file, or None when it does not exist."""
    if not exists(out_dir, name):
        return None
    return sum(1 for _ in iter_lines(out_dir, name))


def children(out_dir: str) -> list[str]:
    """Names directly inside the folder (files and sub-folders), sorted."""
    return storage.list_children(out_dir)


def write_text(out_dir: str, name: str, text: str) -> str:
    """Write a report file into the folder; returns its path."""
    p = path(out_dir, name)
    if not storage.is_gcs(p):
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    storage.write_text(p, text)
    return p
