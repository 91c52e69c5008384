"""Pipeline definition, compile, local run, and the ``twotower`` CLI."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
