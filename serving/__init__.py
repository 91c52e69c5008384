"""Query serving: load a published version and answer retrieval requests."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
