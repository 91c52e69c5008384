"""DAT, the dual augmented two-tower model (Yu et al. 2021): augmented vectors and category alignment.

- :class:`AugmentedVector`: a learned vector per query key (or per item), one more input of its
  own tower. :func:`mimic_loss` pulls it toward the positive partner's output from the *other*
  tower, held fixed (stop-gradient): the query's vector learns what its positive items look
  like to the item tower and carries that into the query tower's input, and the item's likewise.
  The vector is computed inside the tower's ``call``, so the exported query tower and the item
  embeddings include it and serving is unchanged.
- :func:`category_alignment_loss`: the covariance of each category's item embeddings in a batch
  is pulled toward the covariance of the batch's largest category, so the embeddings of sparse
  categories spread like those of dense ones.

Both are summed like TFRS's softmax (one term per positive pair), see ``train.augmented_vectors``
and ``train.category_alignment`` in core/config.py.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

from typing import Optional

from core.config import MULTI_VALUE_SEPARATOR
from trainer.tfenv import import_tf

tf = import_tf()


class AugmentedVector(tf.keras.layers.Layer):
    """[B] key column -> [B, dims] float32 augmented vector.

    ``id_encoder``: the tower's own encoder of the key (an ``IdEncoder``), whose vocabulary rows
    this table shares: a raw string or an already looked-up int64 row (trainer/step_input.py)
    gives the same row, and an unknown key (row 0) gets zeros rather than an untrained row.
    Without one (a text query key), the key's whole string is hashed into ``hash_buckets`` rows.
    ``dropout`` (the key's own id dropout rate) zeroes that share of training rows, as for an
    unknown key. ``mimic_dims``: the other tower's output width; when it differs from ``dims`` a
    bias-free linear map (:meth:`mimic`) takes the vector there for :func:`mimic_loss`.
    """

    def __init__(self, key: str, dims: int, id_encoder=None, hash_buckets: int = 100_000,
                 dropout: float = 0.0, mimic_dims: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if dims < 1 or hash_buckets < 1:
            raise ValueError(f"{self.name}: dims and hash_buckets must be >= 1, got {dims}, {hash_buckets}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{self.name}: dropout must be in [0, 1), got {dropout}")
        self.key = key
        self.dims = int(dims)
        self.dropout = float(dropout)
        self.id_encoder = id_encoder
        self.hash_buckets = int(hash_buckets)
        rows = id_encoder.embedding.input_dim if id_encoder is not None else self.hash_buckets
        self.embedding = tf.keras.layers.Embedding(rows, self.dims, name=f"{self.name}_embedding")
        self.mimic_map = (tf.keras.layers.Dense(mimic_dims, use_bias=False, name=f"{self.name}_mimic_map")
                          if mimic_dims is not None and mimic_dims != self.dims else None)

    @property
    def lookup(self):
        """The key's StringLookup (None when hashed): trainer/warm_start.py remaps this table by it."""
        return None if self.id_encoder is None else self.id_encoder.lookup

    def call(self, values, training=False):
        if self.id_encoder is not None:
            rows = self.id_encoder.indices(values)
            present = rows > 0  # row 0: the unknown key
        else:
            rows = tf.strings.to_hash_bucket_fast(values, self.hash_buckets)
            present = tf.ones_like(rows, dtype=tf.bool)
        if training and self.dropout > 0.0:
            present = tf.logical_and(present, tf.random.uniform(tf.shape(rows)) >= self.dropout)
        return self.embedding(rows) * tf.cast(present, tf.float32)[:, None]

    def mimic(self, vectors):
        """[B, dims] -> [B, mimic_dims]: the vectors as :func:`mimic_loss` compares them."""
        return vectors if self.mimic_map is None else self.mimic_map(vectors)


def mimic_loss(augmented, partner_output, row_weights=None):
    """Sum over rows of ``w_b * ||augmented_b - stop_gradient(partner_output_b)||^2``.

    Args:
        augmented: [B, D] a tower's augmented vectors (after :meth:`AugmentedVector.mimic`).
        partner_output: [B, D] the other tower's output for the same positive pairs; no gradient
            flows into it (the target is held fixed, as in DAT's adaptive-mimic mechanism).
        row_weights: [B] float32 >= 0 (graded actions) or None (all 1).
    Returns:
        scalar float32.
    """
    terms = tf.reduce_sum(tf.square(augmented - tf.stop_gradient(partner_output)), axis=1)
    if row_weights is not None:
        terms *= tf.cast(row_weights, tf.float32)
    return tf.reduce_sum(terms)


def category_codes(values, multi_valued: bool):
    """[B] category column -> [B] codes equal iff the categories are equal: the column itself
    (strings, or int64 rows looked up ahead), or for a multi_categorical "a|b" its first value."""
    if not multi_valued:
        return values
    first = tf.strings.split(values, sep=MULTI_VALUE_SEPARATOR).to_tensor(default_value="", shape=[None, 1])
    return tf.strings.strip(first[:, 0])


def category_covariances(embeddings, codes):
    """(covariances [K, D, D], counts [K] float32) of the batch's K distinct categories: each the
    population covariance (divided by n_k) of its rows of ``embeddings`` [B, D]."""
    _, index, counts = tf.unique_with_counts(codes)
    n = tf.cast(counts, tf.float32)
    one_hot = tf.one_hot(index, tf.shape(counts)[0], dtype=tf.float32)  # [B, K]
    means = tf.matmul(one_hot, embeddings, transpose_a=True) / n[:, None]  # [K, D]
    centred = embeddings - tf.gather(means, index)  # [B, D]
    covariances = tf.einsum("bk,bd,be->kde", one_hot, centred, centred) / n[:, None, None]
    return covariances, n


def category_alignment_loss(embeddings, codes):
    """DAT's category alignment: ``sum_k ||C(major) - C(k)||_F^2`` over the batch's categories k
    other than the largest one (the first of the largest on a tie), C the population covariance
    of a category's item embeddings. Categories with a single row have no spread to align and
    are left out.

    Args:
        embeddings: [B, D] item-tower outputs of the batch's positive pairs.
        codes: [B] :func:`category_codes` of those items.
    Returns:
        scalar float32 (0 when the batch has one category).
    """
    covariances, counts = category_covariances(embeddings, codes)
    major = tf.argmax(counts, output_type=tf.int32)
    distances = tf.reduce_sum(tf.square(covariances - covariances[major]), axis=[1, 2])  # [K]
    counted = tf.cast(counts >= 2.0, tf.float32)
    return tf.reduce_sum(distances * counted)
