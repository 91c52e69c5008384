"""Fixtures shared by the remote-client tests (submit, run status, the Vertex AI SDK)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import load_config
from pipelines.compile import compile_pipeline
from pipelines.remote_cli import pipeline_arguments


@pytest.fixture(scope="module")
def compiled_job(tmp_path_factory):
    """(package path, parameters) of the shop pipeline, compiled once per module."""
    config = load_config("shop", ["train.n_epochs=2"])
    path = compile_pipeline(config, str(tmp_path_factory.mktemp("compiled") / "pipeline.yaml"))
    return path, pipeline_arguments(config, yaml.safe_load(Path(path).read_text()))
