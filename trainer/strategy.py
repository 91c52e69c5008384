"""Where training runs: ``train.distribute`` strategies, ``train.device`` pinning and op determinism.

- ``none``: TensorFlow's default (single-device) strategy, with ``train.device`` pinning.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the visible GPUs (or the CPU when
  there is none, or when ``train.device`` is cpu). Each replica gets
  batch_size / replicas rows, so in-batch negatives are per replica.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``; the cluster (KFP on
  Vertex AI / a TFJob) describes the workers in the ``TF_CONFIG`` environment variable.
  Only the chief writes the real output folder (:func:`is_chief`); the other workers write
  theirs (checkpoints, tensorboard, exports: every worker must save, the collectives need
  it) to a temporary folder that is removed afterwards. Each replica gets its contiguous
  slice of every global batch of ``train.batch_size`` rows (:func:`trainer.data.InMemoryExamples.epoch_dataset`),
  so in-batch negatives are per replica; gradients are summed across replicas (TFRS's
  summed loss, not scaled), i.e. the gradient of the global batch's summed loss. Collectives
  time out after :data:`COLLECTIVE_TIMEOUT_SECONDS` (a lost worker fails the job instead of
  hanging it), and the train function runs :data:`MULTI_WORKER_STEPS_PER_EXECUTION` step per call.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

import contextlib
import json
import os

from trainer.tfenv import import_tf

tf = import_tf()

STRATEGIES = ("none", "mirrored", "multi_worker")

#: A collective (gradient all-reduce, variable broadcast) that waits longer than this fails
#: with DeadlineExceeded. Generous: the first one also waits for the slowest worker to start.
COLLECTIVE_TIMEOUT_SECONDS = 1800.0


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
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


#: Train steps per compiled call under multi_worker. MultiWorkerMirroredStrategy all-gathers
#: the sparse (``tf.IndexedSlices``) embedding gradients, and inside Keras's multi-step loop
#: (``steps_per_execution`` > 1, a ``tf.while_loop`` whose iterations may overlap) the gather
#: of one step meets another step's on the other worker and fails whenever the workers'
#: batches touch different numbers of rows ("Shape mismatch in the collective instance ...
#: expected shape [26,8] but another member in the group expected shape [30,8]", TF 2.20,
#: two CPU workers). One step per call keeps the cheap sparse all-gather (densifying the
#: gradients instead would all-reduce whole tables every step); the Python round trip it adds
#: (~2 ms) is small beside a step's cross-machine all-reduce.
MULTI_WORKER_STEPS_PER_EXECUTION = 1


def task_of(strategy) -> tuple[str, int]:
    """``(task type, index)`` of this process in its cluster; ``("worker", 0)`` off a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not os.environ.get("TF_CONFIG") or resolver.task_type is None:
        return "worker", 0
    return str(resolver.task_type), int(resolver.task_id or 0)


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


def set_threads(threads: int) -> None:
    """``train.threads``: size TensorFlow's intra- and inter-op thread pools (0 = leave them).

    They can only be sized before TensorFlow's runtime starts, which a training component's
    process does here, first thing; where it has already started (tests, a notebook, a bench
    running several models in one process) the pools keep their size and a note says so.
    The ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` environment variables set
    before TensorFlow's import do the same for a whole process."""
    if threads <= 0:
        return
    # TensorFlow's oneDNN kernels (the _Mkl* matmuls) take their parallelism from
    # OMP_NUM_THREADS (default: every core), not from the pools: with one pool thread and the
    # default, a second thread stayed busy beside it, CPU time 1.2x wall on the ids-only
    # MovieLens step (measured). Read when the runtime starts, like the pools; a value the user
    # set is kept.
    omp_was = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        if omp_was is None:  # too late to matter in this process: not handed to its children either
            del os.environ["OMP_NUM_THREADS"]
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            print(f"[train] train.threads={threads}: TensorFlow already started in this process with "
                  f"{current or 'its default'} intra-op threads; keeping them", flush=True)


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
