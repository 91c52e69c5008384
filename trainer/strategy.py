"""Where training runs: ``train.distribute`` strategies, ``train.device`` pinning and op determinism.

- ``none``: TensorFlow's default (single-device) strategy, with ``train.device`` pinning.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the visible GPUs (or the CPU when
  there is none, or when ``train.device`` is cpu). Each replica gets
  batch_size / replicas rows, so in-batch negatives are per replica.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``; the cluster (KFP on
  Vertex AI / a TFJob) describes the workers in the ``TF_CONFIG`` environment variable.
  Only the chief writes the real output folder (:func:`is_chief`).

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

import contextlib
import json
import os

from trainer.tfenv import import_tf

tf = import_tf()

STRATEGIES = ("none", "mirrored", "multi_worker")


def make_strategy(distribute: str, device: str = "auto"):
    """The ``tf.distribute.Strategy`` for ``train.distribute``.

    Raises:
        ValueError: unknown ``distribute``, or ``multi_worker`` without ``TF_CONFIG``.
        RuntimeError: ``train.device`` is gpu and none is visible.
    """
    if distribute not in STRATEGIES:
        raise ValueError(f"train.distribute: unsupported {distribute!r}; expected one of {STRATEGIES}")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise RuntimeError("train.device is 'gpu' but TensorFlow sees no GPU (set train.device=auto or cpu)")
    if distribute == "none":
        return tf.distribute.get_strategy()
    if distribute == "mirrored":
        devices = ["/cpu:0"] if device == "cpu" or not gpus else None
        return tf.distribute.MirroredStrategy(devices=devices)
    if not os.environ.get("TF_CONFIG"):
        raise ValueError("train.distribute is 'multi_worker' but the TF_CONFIG environment variable is not "
                         "set: it is written by the cluster (Vertex AI / KFP custom job, TFJob) for each "
                         "worker; use train.distribute=none or mirrored on a single machine")
    return tf.distribute.MultiWorkerMirroredStrategy()


def device_scope(distribute: str, device: str):
    """``train.device`` pinning for the default strategy; distributed strategies place
    variables and replicas themselves, so they get no extra scope."""
    if distribute != "none":
        return contextlib.nullcontext()
    if device == "gpu":
        return tf.device("/GPU:0")
    if device == "cpu":
        return tf.device("/CPU:0")
    return contextlib.nullcontext()


def is_chief(strategy) -> bool:
    """True unless this is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not os.environ.get("TF_CONFIG"):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    # Without an explicit chief, worker 0 is the chief (TensorFlow's convention).
    has_chief = "chief" in json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    return task_type == "worker" and task_id == 0 and not has_chief


def set_determinism(deterministic: bool) -> None:
    """``train.deterministic``: bit-reproducible kernels (slower on GPU), or TensorFlow's
    default. Process-wide, so it is set (or cleared) at the start of every run."""
    if deterministic:
        tf.config.experimental.enable_op_determinism()
        return
    # The public API has no switch-off; the internal one keeps a later run in the same
    # process (tests, notebooks) from silently inheriting an earlier run's setting.
    from tensorflow.python.framework import config as tf_config

    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()
