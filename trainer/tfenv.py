"""The one place the trainer imports TensorFlow.

TFRS 0.7.7 needs Keras 2 (tf_keras), which TensorFlow 2.20 only picks up for
``tf.keras`` when the legacy-Keras variable is set before its first import. It is set
by :mod:`core.environment` when the ``core`` package is imported, which
``trainer/__init__.py`` does before any trainer module runs.
"""

from __future__ import annotations


def import_tf():
    """Return the ``tensorflow`` module (legacy Keras already selected at package import)."""
    import tensorflow as tf

    return tf
