"""Run records: what the store keeps about every finished run (records), written by the
pipeline's exit handler (exit_handler) or, for a local run whose process died, by the local runner."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
