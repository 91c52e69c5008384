"""The feature stages' user-facing errors, importable without Apache Beam.

The CLI maps these to a one-line message and exit code 2 (pipelines/commands.py); keeping
them out of features/transform.py means reporting an error never imports Beam.
"""

from __future__ import annotations


class TransformError(ValueError):
    """The ingested data or the config cannot be transformed; the message says why."""
