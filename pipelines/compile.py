"""Compile the pipeline to KFP IR YAML (for KFP and Vertex AI Pipelines)."""

from __future__ import annotations

from kfp import compiler

from core.config import Config
from pipelines.pipeline import create_pipeline


def compile_pipeline(config: Config, out_path: str) -> str:
    """Write the IR YAML for ``config`` to ``out_path``; returns the path."""
    compiler.Compiler().compile(pipeline_func=create_pipeline(config), package_path=out_path)
    return out_path
