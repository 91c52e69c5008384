"""Turn the component bodies into KFP components on one container image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kfp import dsl

from components import ops
from core.config import TrainConfig


@dataclass(frozen=True)
class Components:
    """One KFP component factory per pipeline stage, all on the same image."""

    ingest: Callable
    transform: Callable
    train: Callable
    evaluate: Callable
    embed: Callable
    index: Callable
    publish: Callable
    record_run: Callable


def build_components(image: str) -> Components:
    """Wrap every stage body with ``@dsl.component(base_image=image)``.

    ``install_kfp_package=False``: the image already carries the pinned kfp (and
    local runs must not reach a package index).
    """
    def wrap(fn):
        return dsl.component(base_image=image, install_kfp_package=False)(fn)

    return Components(
        ingest=wrap(ops.ingest_op),
        transform=wrap(ops.transform_op),
        train=wrap(ops.train_op),
        evaluate=wrap(ops.evaluate_op),
        embed=wrap(ops.embed_op),
        index=wrap(ops.index_op),
        publish=wrap(ops.publish_op),
        record_run=wrap(ops.record_run_op),
    )


def as_vertex_custom_job(train_component: Callable, train: TrainConfig, display_name: str) -> Callable:
    """The train component as a Vertex AI custom job, per ``train.vertex`` (enabled).

    google-cloud-pipeline-components' standard conversion: the job's worker pools run the
    component's own image, command and arguments (so its inputs, outputs and artifacts are
    unchanged), on ``train.vertex.replica_count`` machines of ``train.vertex.machine_type``:
    one chief pool plus a pool of ``replica_count - 1`` workers, each with
    ``train.accelerator_count`` x ``train.accelerator_type`` when ``train.device=gpu``.
    Vertex AI sets ``TF_CONFIG`` on every replica (see docs/ORCHESTRATION.md).

    Imported here, lazily: a local or plain-KFP pipeline never needs the package.
    """
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    vertex = train.vertex
    gpu = train.device == "gpu"
    return create_custom_training_job_from_component(
        train_component,
        display_name=display_name,
        machine_type=vertex.machine_type,
        accelerator_type=train.accelerator_type if gpu else "",
        accelerator_count=train.accelerator_count if gpu else 0,
        replica_count=vertex.replica_count,
        boot_disk_type=vertex.boot_disk_type,
        boot_disk_size_gb=vertex.boot_disk_size_gb,
        service_account=vertex.service_account,
    )
