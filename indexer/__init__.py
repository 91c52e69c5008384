"""Item-embedding batch inference, ScaNN build / evaluate, gate, versioned store and publish."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
