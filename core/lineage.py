"""Lineage recorded in every published manifest: which data, config and code made it."""

from __future__ import annotations

import json
from importlib import metadata

from core.config import Config
from core.partitions import partition_path


def code_version() -> str:
    """The installed twotower package version ("unknown" when run from a bare source tree)."""
    try:
        return metadata.version("twotower")
    except metadata.PackageNotFoundError:
        return "unknown"


def lineage_for(config: Config, run_id: str, data_fingerprint: str | None, data_date: str | None = None) -> dict:
    return {
        "run_id": run_id,
        "data_path": config.data.path,
        "data_date": data_date,
        "data_partition": partition_path(config.data.path, data_date),  # the folder actually read
        "data_fingerprint": data_fingerprint,
        "config": json.loads(config.to_json()),
        "code_version": code_version(),
    }
