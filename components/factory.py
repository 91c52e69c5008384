"""Turn the component bodies into KFP components on one container image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kfp import dsl

from components import ops


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
