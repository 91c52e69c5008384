"""Extra negatives for the retrieval loss: sampled catalog items (mixed negative sampling).

Mixed negative sampling (Yang et al. 2020, "Mixed Negative Sampling for Learning
Two-tower Neural Networks in Recommendations"): in-batch negatives are drawn in
proportion to train popularity, so rarely bought items are almost never negatives.
Each training step therefore also draws ``train.negative_samples_count`` catalog items
(uniformly, or in proportion to ``(train count + 1) ** train.negative_sampling_alpha``),
shared by every query of the batch; their item-tower embeddings are appended to the
in-batch candidates.

The catalog's item features are loaded once into tensors; a step only draws indices
with ``tf.random`` and gathers rows, so there is no per-step Python work.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from core.contracts import files as names
from core.records import ITEM_KEY
from trainer.tfenv import import_tf

tf = import_tf()

SAMPLING_MODES = ("uniform", "popularity")


def sampling_probabilities(catalog_ids: Sequence[str], vocab_tokens: Sequence[str], vocab_counts: Sequence[int],
                           mode: str, alpha: float) -> np.ndarray:
    """Probability of drawing each catalog item, float64 [N], summing to 1.

    Args:
        catalog_ids: the catalog's item ids, [N] (row i = item i).
        vocab_tokens / vocab_counts: ``vocab/item_id.tsv`` (train positives per item);
            catalog items missing there count 0.
        mode: ``uniform`` (1 / N each) or ``popularity`` ((count + 1) ** alpha, normalised;
            the +1 keeps never-bought items drawable, alpha < 1 flattens the head).
    """
    n = len(catalog_ids)
    if n == 0:
        raise ValueError(f"negative sampling needs a non-empty catalog ({names.split_pattern(names.ITEMS_SPLIT)})")
    if mode == "uniform":
        return np.full(n, 1.0 / n)
    if mode != "popularity":
        raise ValueError(f"train.negative_sampling: unsupported {mode!r}; expected one of {SAMPLING_MODES}")
    if alpha < 0.0:
        raise ValueError(f"train.negative_sampling_alpha must be >= 0, got {alpha}")
    counts = dict(zip(vocab_tokens, vocab_counts))
    weights = np.array([(max(int(counts.get(i, 0)), 0) + 1.0) ** alpha for i in catalog_ids], dtype=np.float64)
    return weights / weights.sum()


class CatalogSampler:
    """Draws catalog items (with replacement) and hands back their item-tower inputs.

    Not a Keras layer: it is training-only state (never exported, never checkpointed;
    it is rebuilt from the transform folder on every run).

    Args:
        features: catalog columns ``{name: [N] str objects | float32}``; must hold
            ``item_id`` and every item-tower input.
        probabilities: float [N], the draw probability of each row (see
            :func:`sampling_probabilities`).
    """

    def __init__(self, features: Mapping[str, np.ndarray], probabilities: np.ndarray):
        if ITEM_KEY not in features:
            raise ValueError(f"catalog features must include {ITEM_KEY!r}")
        probs = np.asarray(probabilities, dtype=np.float64)
        n = len(features[ITEM_KEY])
        if probs.shape != (n,) or n == 0:
            raise ValueError(f"probabilities must have shape ({n},) for a non-empty catalog, got {probs.shape}")
        if (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
            raise ValueError("probabilities must be >= 0 and sum to 1")
        self.size = n
        self.uniform = bool(np.allclose(probs, 1.0 / n))
        self.features = {name: _to_tensor(values) for name, values in features.items()}
        # float64 CDF: a float32 running sum loses the tail of a million-item catalog.
        self._cdf = tf.constant(np.cumsum(probs), tf.float64)
        self._probs = probs
        ids = [str(i) for i in features[ITEM_KEY]]
        # Duplicate ids (should not happen) add up: either row yields the same item.
        per_id: dict[str, float] = {}
        for item, p in zip(ids, probs):
            per_id[item] = per_id.get(item, 0.0) + float(p)
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(per_id), tf.string),
                                                tf.constant(list(per_id.values()), tf.float32)),
            default_value=tf.constant(0.0, tf.float32))

    @classmethod
    def from_transformed(cls, config, transformed_dir: str) -> "CatalogSampler":
        """The catalog of ``items-*.tfrecord`` with ``train.negative_sampling`` probabilities."""
        from trainer.evalset import load_catalog

        catalog = load_catalog(config, transformed_dir)
        return cls.from_catalog(config, transformed_dir, catalog)

    @classmethod
    def from_catalog(cls, config, transformed_dir: str, catalog) -> "CatalogSampler":
        """Like :meth:`from_transformed` for an already loaded :class:`trainer.evalset.Catalog`."""
        from trainer import artifacts

        t = config.train
        tokens, counts = artifacts.read_vocab(transformed_dir, ITEM_KEY)
        probs = sampling_probabilities(catalog.ids, tokens, counts, t.negative_sampling, t.negative_sampling_alpha)
        return cls(catalog.features, probs)

    @property
    def probabilities(self) -> np.ndarray:
        """float64 [N]: draw probability of each catalog row."""
        return self._probs

    def sample_indices(self, n: int):
        """int32 [n] catalog rows drawn i.i.d. (uses the global TF seed, so runs are reproducible)."""
        if self.uniform:
            return tf.random.uniform([n], 0, self.size, dtype=tf.int32)
        u = tf.random.uniform([n], dtype=tf.float64)
        idx = tf.searchsorted(self._cdf, u, side="right", out_type=tf.int32)
        # The CDF's last entry can round to just below 1.
        return tf.minimum(idx, self.size - 1)

    def sample(self, n: int) -> dict:
        """``{name: [n] tensor}`` item features of ``n`` drawn items (``item_id`` included)."""
        idx = self.sample_indices(n)
        return {name: tf.gather(values, idx) for name, values in self.features.items()}

    def probability(self, item_ids):
        """[K] tf.string -> [K] float32 draw probability of one draw (0 for non-catalog ids)."""
        return self._table.lookup(item_ids)


def mixed_candidate_probability(batch_probability, sampled_probability, batch_size, n_sampled: int):
    """Per-candidate sampling probability for logQ correction over a mixed candidate set.

    Approximation (documented, as in Yang et al. 2020): the B in-batch candidates are B
    draws from the popularity distribution p_pop and the N sampled ones N draws from the
    sampler's p_s; every candidate, whatever its source, is treated as one draw from the
    mixture ``q = (B * p_pop + N * p_s) / (B + N)``. An item's expected number of copies in
    the candidate set is exactly ``(B + N) * q``, so this is the correction that matches
    the set actually scored; it ignores that in-batch draws are without replacement.

    Args:
        batch_probability: [B + N] float32 p_pop of every candidate id.
        sampled_probability: [B + N] float32 p_s of every candidate id.
        batch_size: B (scalar tensor: the last batch of an epoch is smaller).
        n_sampled: N.
    Returns:
        [B + N] float32 q.
    """
    b = tf.cast(batch_size, tf.float32)
    n = tf.constant(float(n_sampled), tf.float32)
    return (b * batch_probability + n * sampled_probability) / (b + n)


def _to_tensor(values: np.ndarray):
    values = np.asarray(values)
    if values.dtype == object or values.dtype.kind in ("U", "S"):
        return tf.constant([str(v) for v in values], dtype=tf.string)
    return tf.constant(values.astype(np.float32))
