"""The one place the trainer imports TensorFlow.

TFRS 0.7.7 needs Keras 2 (tf_keras), which TensorFlow 2.20 only picks up for
``tf.keras`` when ``TF_USE_LEGACY_KERAS=1`` is set before its first import.
"""

from __future__ import annotations

import os


def import_tf():
    """Return the ``tensorflow`` module with legacy Keras selected."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    return tf
