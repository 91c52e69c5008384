"""Beam runner selection shared by every Beam stage (transform, item embedding).

``transform.runner: direct`` runs in-process on the FnApiRunner. We construct it
ourselves because Beam 2.77's DirectRunner first tries the Prism runner, which
downloads a binary at run time (no network here, and a surprise for users).
Any other value is passed to Beam as ``--runner`` (e.g. DataflowRunner) together with
``transform.pipeline_options``.
"""

from __future__ import annotations

from core.config import TransformConfig

IN_PROCESS = "direct"


def make_pipeline(cfg: TransformConfig, job_name: str = "twotower"):
    """A ``beam.Pipeline`` for the configured runner (in-process: ``transform.direct_num_workers``
    workers, separate processes when more than one).

    Use as a context manager; leaving the block runs the pipeline and waits for it.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    opts = {str(k): v for k, v in cfg.pipeline_options.items()}
    if cfg.runner == IN_PROCESS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        workers = cfg.direct_num_workers
        mode = "in_memory" if workers == 1 else "multi_processing"
        # flags=[]: never parse the host process's argv (pytest's, the CLI's) as Beam flags.
        options = PipelineOptions(flags=[], direct_num_workers=workers, direct_running_mode=mode, **opts)
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    options = PipelineOptions(flags=[], runner=cfg.runner, job_name=job_name, **opts)
    return beam.Pipeline(options=options)
