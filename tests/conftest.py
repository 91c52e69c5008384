"""Suite-wide settings: TFRS needs Keras 2, selected before TensorFlow is first imported."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The raw MovieLens-100K files, kept beside the repo (the licence forbids bundling them); tests
#: that need them skip without them. The one place the tests spell this path.
MOVIELENS_RAW = REPO.parent / "shared" / "data" / "movielens-100k"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the current code instead of comparing")


def fixed_tower(tf, key: str, vectors: dict):
    """A Keras layer: features[key] ([B] string) -> the given vectors [B, D] (no variables), for
    loss tests whose embeddings are worked out by hand."""

    class Fixed(tf.keras.layers.Layer):
        def __init__(self):
            super().__init__()
            names = list(vectors)
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names), dtype=tf.int64)), -1)
            self.vectors = tf.constant([vectors[n] for n in names], tf.float32)

        def call(self, features, training=False):
            return tf.gather(self.vectors, self.table.lookup(features[key]))

    return Fixed()
