"""Publishing: the quality gate that decides, and the atomic publish of a version into the store."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
