"""The one place the process environment for TensorFlow is set.

:func:`configure` runs when the ``core`` package is imported, and every production package
imports ``core`` first, so the variables are in place before anything imports TensorFlow,
whichever entry point a process starts from. Values the user already set win (setdefault).
"""

from __future__ import annotations

import os

#: Present only where an NVIDIA driver is loaded (a GPU machine).
NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"


def configure() -> None:
    """Set the TensorFlow variables that must be fixed before TensorFlow's first import.

    - ``TF_USE_LEGACY_KERAS=1``: TFRS 0.7.7 needs Keras 2 (tf_keras), which TensorFlow 2.20
      picks for ``tf.keras`` only when this is set before it is first imported; set later,
      the process has Keras 3 for good, so it cannot be left to the module that imports TF.
    - ``TF_CPP_MIN_LOG_LEVEL``: TF's C++ start-up chatter is not for users. Without a GPU
      level 2 still prints a "failed call to cuInit" error line at import, so 3 hides it;
      with a GPU, 2 keeps its warnings (device placement, memory) visible.

    Idempotent; touches nothing but these two variables.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists(NVIDIA_DRIVER_FILE) else "3")
