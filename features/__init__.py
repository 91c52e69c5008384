"""Feature stages: ``ingest`` (validation, dead letters) and the Beam ``transform``."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
