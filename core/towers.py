"""Load an exported tower SavedModel and embed raw feature batches with it.

The trainer exports each tower with a ``serving_default`` signature whose inputs
are the tower's raw features by name (strings as tf.string [B], numerics as
tf.float32 [B]) and whose output ``embedding`` is float32 [B, D], L2-normalised.
The evaluator, the Beam embedder and the query service all load towers here.

A tower path may be a local folder or a gs:// prefix. A gs:// SavedModel is downloaded
through :mod:`core.storage` into a temp folder first (kept while the Tower lives):
TensorFlow's own GCS filesystem does not honour ``STORAGE_EMULATOR_HOST``, so reading
through the one storage interface is what works on a cluster and against a test emulator.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from typing import Mapping, Sequence

import numpy as np

SIGNATURE = "serving_default"
OUTPUT_KEY = "embedding"


class Tower:
    """A loaded tower: ``embed(features) -> float32 [B, D]``."""

    def __init__(self, path: str):
        import tensorflow as tf

        self._tf = tf
        self.path = path
        self._loaded = tf.saved_model.load(self._local_copy(path))
        self._fn = self._loaded.signatures[SIGNATURE]
        _, kwargs = self._fn.structured_input_signature
        #: input name -> tf.DType, e.g. {"query": tf.string}
        self.input_dtypes = {name: spec.dtype for name, spec in kwargs.items()}

    def _local_copy(self, path: str) -> str:
        """``path`` itself when local; else a temp copy of the gs:// SavedModel (removed with the Tower)."""
        from core import storage

        if not storage.is_gcs(path):
            return path
        from core.contracts.files import SAVED_MODEL_FILE

        if not storage.exists(storage.join(path, SAVED_MODEL_FILE)):
            raise FileNotFoundError(f"tower {path}: no {SAVED_MODEL_FILE} there")
        local = tempfile.mkdtemp(prefix="twotower-tower-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, local, True)
        return storage.download_tree(path, local)

    @property
    def input_names(self) -> list[str]:
        return sorted(self.input_dtypes)

    def embed(self, features: Mapping[str, Sequence]) -> np.ndarray:
        """Embed a batch of raw features.

        Args:
            features: input name -> sequence of B raw values (str or number).
              Missing strings may be "" and missing numerics NaN-free floats.
        Returns:
            float32 array [B, D].
        Raises:
            KeyError: naming a signature input absent from ``features``.
        """
        tf = self._tf
        missing = [n for n in self.input_dtypes if n not in features]
        if missing:
            raise KeyError(f"tower {self.path}: missing input feature(s) {missing}")
        tensors = {}
        for name, dtype in self.input_dtypes.items():
            values = features[name]
            if dtype == tf.string:
                tensors[name] = tf.constant([str(v) for v in values], dtype=tf.string)
            else:
                tensors[name] = tf.constant(np.asarray(values, dtype=np.float32), dtype=dtype)
        return self._fn(**tensors)[OUTPUT_KEY].numpy().astype(np.float32)
