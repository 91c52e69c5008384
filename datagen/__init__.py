"""Dataset builders that write the canonical dataset folder (see docs/ARCHITECTURE.md).

- :mod:`datagen.synth_shop`: a deterministic, ESCI-like synthetic query -> product search set.
- :mod:`datagen.movielens`: MovieLens-100K converter and checksum-verified downloader.

Pure Python + numpy/pandas; nothing here imports TensorFlow.
"""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
