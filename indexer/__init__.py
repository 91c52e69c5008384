"""Item-embedding batch inference and the ScaNN index build / tuning (the gate and publish: :mod:`publishing`)."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
