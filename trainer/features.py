"""Keras feature encoders and towers built from the config schema and the vocabularies.

Every encoder maps one raw feature column, shape [B] (tf.string or tf.float32), to a
dense float32 [B, F] encoding:

- id / categorical: StringLookup (1 OOV bucket at index 0) -> Embedding(F = train.feature_dims);
  an id feature capped by transform.max_id_vocab_size with transform.id_hash_buckets = N
  gets N OOV buckets instead (indices 0..N-1, values past the cap hashed into them)
- the item key (``item_id``, with ``train.use_item_ids_as_features``): :class:`ItemIdEncoder`,
  an id embedding gated by "id present": only items with train positives get a row (the
  most frequent ``vocab_coverage.item_id.kept`` of them when transform.max_id_vocab_size
  caps them), every other item (cold, never interacted with, past the cap, unknown at
  serving) encodes as zeros, so its
  embedding comes from its content alone; ``item_id_dropout`` zeroes a random share of the
  ids during training so the tower learns to embed id-less (cold) items from content
- multi_categorical: split on "|" -> lookup -> mean of embeddings (no values -> zeros)
- text: core.text.tf_normalize_text -> whitespace tokens -> first transform.text_max_tokens ->
  lookup -> mean of embeddings (no tokens -> zeros); with train.text_hash_buckets > 0 the
  hashed word bigrams are pooled in the same mean
- numeric: (x - mean) / std from stats.json -> [B, 1]
- history (the query key's latest item ids, one string joined by core.history.SEPARATOR,
  oldest first): :class:`HistoryEncoder`, the last ``max_length`` ids looked up among the
  items with train positives (unknown ids are ignored), embedded with the item tower's
  item-id table (``item_embedding: shared``) or a table of its own, then pooled: mean ->
  [B, F], recency -> [B, F], attention -> [B, 2F] (no known item -> zeros)

A tower concatenates its encodings, applies Dense(hidden_dims, activation) + Dropout,
projects to Dense(embedding_dims) and, for ``train.similarity`` cosine, L2-normalises (dot
products are then cosines; core/similarity.py).

Trainer-internal: imports TensorFlow at module import (only train/evaluate import it,
inside functions).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from core import history, similarity
from core.config import MULTI_VALUE_SEPARATOR, Config, FeatureSpec
from core.records import ITEM_KEY
from core.text import tf_normalize_text
from trainer import artifacts
from trainer.tfenv import import_tf

tf = import_tf()

#: Stands in for an empty vocabulary (StringLookup refuses []); it can never match a
#: real value because text is normalised to [a-z0-9 ] and this has a NUL byte.
_EMPTY_VOCAB_SENTINEL = "\x00<empty-vocabulary>"


def _lookup(vocabulary: Sequence[str], name: str, oov_buckets: int = 1):
    """Vocabulary entries -> indices ``oov_buckets``.. ; an unknown value takes index 0, or with
    ``oov_buckets`` N > 1 one of 0..N-1 by a stable string hash (``to_hash_bucket_fast``)."""
    vocab = list(vocabulary) or [_EMPTY_VOCAB_SENTINEL]
    # A numpy array, not a list: the layer keeps its vocabulary argument as an attribute, and
    # Keras walks every list attribute of every layer each time it collects the model's
    # variables (several times per fit call): ~9 s per call with two 1M-id vocabularies.
    return tf.keras.layers.StringLookup(vocabulary=np.asarray(vocab, dtype=object), num_oov_indices=int(oov_buckets),
                                        mask_token=None, name=f"{name}_lookup")


def _mean_pool(embedded, extra=None):
    """Mean over the ragged token axis: [B, (T), F] -> [B, F]; empty rows -> zeros."""
    total = tf.reduce_sum(embedded, axis=1)
    count = tf.cast(embedded.row_lengths(), tf.float32)
    if extra is not None:
        total += tf.reduce_sum(extra, axis=1)
        count += tf.cast(extra.row_lengths(), tf.float32)
    return total / tf.maximum(count, 1.0)[:, None]


class IdEncoder(tf.keras.layers.Layer):
    """id / categorical: [B] string -> [B, F]. Unknown values share the OOV row, or hash into
    ``oov_buckets`` shared rows (table rows: len(vocabulary) + oov_buckets)."""

    def __init__(self, vocabulary: Sequence[str], dims: int, oov_buckets: int = 1, unknown_rate: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        if oov_buckets < 1:
            raise ValueError(f"{self.name}: oov_buckets must be >= 1, got {oov_buckets}")
        if not 0.0 <= unknown_rate < 1.0:
            raise ValueError(f"{self.name}: unknown_rate must be in [0, 1), got {unknown_rate}")
        self.lookup = _lookup(vocabulary, self.name, oov_buckets)
        self.embedding = tf.keras.layers.Embedding(self.lookup.vocabulary_size(), dims,
                                                   name=f"{self.name}_embedding")
        #: Share of training rows looked up as the unknown value (row 0), so that row learns what
        #: an id the model has not seen (a new user at serving) should encode.
        self.unknown_rate = float(unknown_rate)

    def indices(self, values):
        """[B] raw strings -> [B] int64 table rows; already looked-up int64 rows (a training
        input prepared by :func:`trainer.step_input.look_up_columns`) pass through."""
        return values if values.dtype.is_integer else self.lookup(values)

    def call(self, values, training=False):
        ids = self.indices(values)
        if training and self.unknown_rate > 0.0:
            ids = tf.where(tf.random.uniform(tf.shape(ids)) < self.unknown_rate, tf.zeros_like(ids), ids)
        return self.embedding(ids)


class ItemIdEncoder(IdEncoder):
    """item_id: [B] string -> [B, F], gated by "id present".

    ``vocabulary`` should hold only the items that have train positives: any other id
    (a cold item, one never interacted with, one unknown at serving) takes the OOV index,
    whose encoding is forced to zeros rather than an untrained random row. With
    ``dropout`` p > 0, during training each example's id is dropped (zeros) with
    probability p, independently per row, without rescaling the kept ones: a dropped
    row looks exactly like a cold item, so the MLP learns to place id-less items from
    their content features, and warm items still see their full id embedding at serving.
    """

    def __init__(self, vocabulary: Sequence[str], dims: int, dropout: float = 0.0, **kwargs):
        super().__init__(vocabulary, dims, **kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{self.name}: item id dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)

    def call(self, values, training=False):
        ids = self.indices(values)
        present = ids > 0  # index 0 is the OOV bucket
        if training and self.dropout > 0.0:
            present = tf.logical_and(present, tf.random.uniform(tf.shape(ids)) >= self.dropout)
        return self.embedding(ids) * tf.cast(present, tf.float32)[:, None]


def trained_item_ids(transformed_dir: str, limit: int | None = None) -> list[str]:
    """Item ids with at least one train positive (``vocab/item_id.tsv`` count > 0), most
    frequent first; the first ``limit`` of them when given (the transform's id cap)."""
    tokens, counts = artifacts.read_vocab(transformed_dir, ITEM_KEY)
    trained = [t for t, c in zip(tokens, counts) if int(c) > 0]
    return trained if limit is None else trained[:limit]


class MultiCategoricalEncoder(IdEncoder):
    """multi_categorical "a|b": [B] string -> mean of value embeddings [B, F].

    Same vocabulary lookup and embedding table as :class:`IdEncoder`; only the pooling differs.
    """

    def indices(self, values):
        raise TypeError(f"{self.name}: a multi-categorical feature is looked up inside the tower, not ahead")

    def call(self, values):
        parts = tf.strings.split(values, sep=MULTI_VALUE_SEPARATOR)
        parts = tf.ragged.map_flat_values(tf.strings.strip, parts)
        # "" splits to [""] and "a||b" has an empty middle value: neither is a value.
        parts = tf.ragged.boolean_mask(parts, tf.not_equal(parts, ""))
        ids = tf.ragged.map_flat_values(self.lookup, parts)
        return _mean_pool(tf.ragged.map_flat_values(self.embedding, ids))


class TextEncoder(tf.keras.layers.Layer):
    """text: [B] raw or normalised string -> mean of token (+ hashed bigram) embeddings [B, F].

    Normalising again here is idempotent for transformed text and makes raw serving
    input ("Nike RUNNING shoes!!") encode exactly like its training form.
    """

    def __init__(self, vocabulary: Sequence[str], dims: int, max_tokens: int, hash_buckets: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if max_tokens < 1:
            raise ValueError(f"transform.text_max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.hash_buckets = int(hash_buckets)
        self.lookup = _lookup(vocabulary, self.name)
        self.embedding = tf.keras.layers.Embedding(self.lookup.vocabulary_size(), dims,
                                                   name=f"{self.name}_embedding")
        self.bigram_embedding = (
            tf.keras.layers.Embedding(self.hash_buckets, dims, name=f"{self.name}_bigram_embedding")
            if self.hash_buckets > 0 else None)

    def call(self, values):
        tokens = tf.strings.split(tf_normalize_text(values))[:, : self.max_tokens]
        embedded = tf.ragged.map_flat_values(self.embedding,
                                             tf.ragged.map_flat_values(self.lookup, tokens))
        if self.bigram_embedding is None:
            return _mean_pool(embedded)
        bigrams = tf.strings.ngrams(tokens, 2, separator=" ")
        buckets = tf.ragged.map_flat_values(tf.strings.to_hash_bucket_fast, bigrams, self.hash_buckets)
        return _mean_pool(embedded, tf.ragged.map_flat_values(self.bigram_embedding, buckets))


class HistoryEncoder(tf.keras.layers.Layer):
    """history: [B] string (item ids joined by core.history.SEPARATOR, oldest first) -> [B, F]
    (``mean``, ``recency``) or [B, 2F] (``attention``).

    The last ``max_length`` ids are kept, then ids without a row (index 0: unknown, cold, never
    trained) are dropped, so they neither count nor take a position. With ``shared`` (the item
    tower's :class:`ItemIdEncoder`) the history reads and trains the item tower's id table;
    otherwise it has a table of its own over ``vocabulary``.

    Poolings over the L known items e_1..e_L (e_L the most recent):

    - mean: (1/L) sum e_j;
    - recency: sum softmax(w)_j e_j, w_j a learned weight of e_j's rank from the most recent
      (0 = e_L), so the model learns how fast older clicks fade;
    - attention: [e_L, sum a_j e_j] with a = softmax((W_q e_L) . (W_k e_j) / sqrt(F)): the most
      recent item picks which earlier ones matter (the item-to-item transition signal).

    An empty history (L = 0) encodes as zeros.
    """

    def __init__(self, vocabulary: Sequence[str], dims: int, max_length: int, pooling: str,
                 shared: "ItemIdEncoder | None" = None, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("mean", "recency", "attention"):
            raise ValueError(f"{self.name}: unknown pooling {pooling!r}")
        self.max_length, self.pooling, self.dims = int(max_length), pooling, int(dims)
        if shared is not None:
            self.lookup, self.embedding = shared.lookup, shared.embedding
        else:
            self.lookup = _lookup(vocabulary, self.name)
            self.embedding = tf.keras.layers.Embedding(self.lookup.vocabulary_size(), dims,
                                                       name=f"{self.name}_embedding")
        if pooling == "recency":
            self.rank_logits = self.add_weight(name="rank_logits", shape=[self.max_length],
                                               initializer="zeros", trainable=True)
        if pooling == "attention":
            self.query_projection = tf.keras.layers.Dense(dims, use_bias=False, name=f"{self.name}_query")
            self.key_projection = tf.keras.layers.Dense(dims, use_bias=False, name=f"{self.name}_key")

    def known_items(self, values):
        """[B] joined strings -> (ids int64 [B, max_length] left-aligned, oldest first, 0-padded;
        lengths int32 [B]): the last ``max_length`` ids, unknown ones dropped."""
        items = tf.strings.split(values, sep=history.SEPARATOR)[:, -self.max_length:]
        ids = tf.ragged.map_flat_values(self.lookup, items)
        ids = tf.ragged.boolean_mask(ids, ids > 0)
        return ids.to_tensor(default_value=0, shape=[None, self.max_length]), tf.cast(ids.row_lengths(), tf.int32)

    def call(self, values):
        ids, lengths = self.known_items(values)
        embedded = self.embedding(ids)  # [B, N, F]
        present = tf.sequence_mask(lengths, self.max_length)  # [B, N]
        weights = tf.cast(present, tf.float32)
        if self.pooling == "mean":
            return tf.reduce_sum(embedded * weights[:, :, None], axis=1) / tf.maximum(
                tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
        if self.pooling == "recency":
            rank = tf.clip_by_value(lengths[:, None] - 1 - tf.range(self.max_length)[None, :], 0,
                                    self.max_length - 1)
            logits = tf.where(present, tf.gather(self.rank_logits, rank), -1e9)
            return tf.reduce_sum((tf.nn.softmax(logits, axis=1) * weights)[:, :, None] * embedded, axis=1)
        last = tf.gather(embedded, tf.maximum(lengths - 1, 0), batch_dims=1)
        last *= tf.cast(lengths > 0, tf.float32)[:, None]  # [B, F]
        scores = tf.reduce_sum(self.query_projection(last)[:, None, :] * self.key_projection(embedded),
                               axis=2) / float(np.sqrt(self.dims))
        attention = tf.nn.softmax(tf.where(present, scores, -1e9), axis=1) * weights
        return tf.concat([last, tf.reduce_sum(attention[:, :, None] * embedded, axis=1)], axis=1)


class NumericEncoder(tf.keras.layers.Layer):
    """numeric: [B] float32 -> standardised [B, 1] with the train-split mean/std."""

    def __init__(self, mean: float, std: float, **kwargs):
        super().__init__(**kwargs)
        if std <= 0.0:
            raise ValueError(f"{self.name}: std must be > 0, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    def call(self, values):
        return ((tf.cast(values, tf.float32) - self.mean) / self.std)[:, None]


class EmbeddingEncoder(tf.keras.layers.Layer):
    """embedding: [B, dims] float32 (a precomputed vector) -> [B, out_dims], a learned linear
    projection (the tower's hidden layers come after the concatenation, as for every feature)."""

    def __init__(self, dims: int, out_dims: int, **kwargs):
        super().__init__(**kwargs)
        self.dims = int(dims)
        self.projection = tf.keras.layers.Dense(int(out_dims), name="projection")

    def call(self, values):
        return self.projection(tf.reshape(tf.cast(values, tf.float32), [-1, self.dims]))


class TowerModel(tf.keras.Model):
    """Feature encoders -> concat -> MLP -> Dense(embedding_dims) -> L2 normalise (``unit_norm``).

    ``call(features)`` takes a dict with at least ``raw_input_names`` (each [B]) and returns
    float32 [B, embedding_dims], with unit rows when ``unit_norm`` (``train.similarity`` cosine,
    :func:`core.similarity.unit_rows`) and the projection's raw rows otherwise. Extra keys are
    ignored, so the same batch dict feeds both towers.
    """

    def __init__(self, encoders: Mapping[str, tf.keras.layers.Layer], input_specs: Sequence[FeatureSpec],
                 hidden_dims: Sequence[int], activation: str, dropout: float, embedding_dims: int,
                 anonymous_rate: float = 0.0, anonymous_defaults: Optional[Mapping[str, object]] = None,
                 unit_norm: bool = True, augmented=None, **kwargs):
        super().__init__(**kwargs)
        self.unit_norm = bool(unit_norm)
        #: DAT's augmented vector (trainer.augmented.AugmentedVector over its key column) or None:
        #: one more input of the concat, returned beside the output by ``with_augmented``.
        self.augmented = augmented
        if not encoders:
            raise ValueError(f"{self.name}: a tower needs at least one encoded feature")
        if not 0.0 <= anonymous_rate < 1.0:
            raise ValueError(f"{self.name}: anonymous_rate must be in [0, 1), got {anonymous_rate}")
        #: train.anonymous_query_rate: the share of training rows whose ``anonymous_defaults``
        #: features ({name: raw default}, artifacts.query_feature_default) all take their default.
        self.anonymous_rate = float(anonymous_rate)
        self.anonymous_defaults = dict(anonymous_defaults or {})
        unknown = sorted(set(self.anonymous_defaults) - set(encoders))
        if unknown:
            raise ValueError(f"{self.name}: anonymous_defaults for features it does not encode: {unknown}")
        self.input_specs = list(input_specs)
        # Sorted so the concat order never depends on dict insertion order.
        self.encoded_names = sorted(encoders)
        self.encoders = {name: encoders[name] for name in self.encoded_names}
        self.hidden = []
        for i, width in enumerate(hidden_dims):
            self.hidden.append(tf.keras.layers.Dense(width, activation=activation, name=f"hidden_{i}"))
            if dropout > 0.0:
                self.hidden.append(tf.keras.layers.Dropout(dropout, name=f"dropout_{i}"))
        self.projection = tf.keras.layers.Dense(embedding_dims, name="projection")

    @property
    def raw_input_names(self) -> list[str]:
        return [s.name for s in self.input_specs]

    def _anonymised(self, features):
        """``features`` with every ``anonymous_defaults`` column replaced by its default on a random
        ``anonymous_rate`` share of the rows (the same rows for every column). A column the train
        step prepared as int64 table rows takes the row its encoder looks the default up at."""
        first = features[self.encoded_names[0]]
        rows = tf.random.uniform(tf.shape(first)[:1]) < self.anonymous_rate
        out = dict(features)
        for name, default in self.anonymous_defaults.items():
            column = features[name]
            if column.dtype == tf.string:
                fill = tf.constant(str(default))
            elif column.dtype.is_integer:  # prepared rows (trainer.step_input.look_up_columns)
                fill = tf.cast(self.encoders[name].lookup(tf.constant([str(default)]))[0], column.dtype)
            elif column.shape.rank == 2:  # an embedding [B, dims]: its default vector on those rows
                out[name] = tf.where(rows[:, None], tf.broadcast_to(tf.constant(default, column.dtype),
                                                                    tf.shape(column)), column)
                continue
            else:
                fill = tf.constant(default, dtype=column.dtype)
            out[name] = tf.where(rows, tf.fill(tf.shape(column), fill), column)
        return out

    @property
    def table_layers(self) -> list:
        """Every layer that owns a looked-up embedding table: the encoders, then the augmented vector."""
        return [*self.encoders.values(), *([self.augmented] if self.augmented is not None else [])]

    def call(self, features, training=False, with_augmented=False):
        """[B] features -> [B, embedding_dims]; ``with_augmented``: (that, the augmented vectors
        [B, dims]) for the mimic loss (the tower must have one)."""
        if training and self.anonymous_rate > 0.0 and self.anonymous_defaults:
            features = self._anonymised(features)
        parts = [self.encoders[name](features[name]) for name in self.encoded_names]
        augmented = None
        if self.augmented is not None:
            augmented = self.augmented(features[self.augmented.key], training=training)
            parts.append(augmented)
        x = tf.concat(parts, axis=1)
        for layer in self.hidden:
            x = layer(x, training=training)
        x = self.projection(x)
        output = unit_rows(x) if self.unit_norm else x
        if with_augmented:
            if augmented is None:
                raise ValueError(f"{self.name}: with_augmented needs train.augmented_vectors")
            return output, augmented
        return output


@tf.custom_gradient
def unit_rows(x):
    """[B, D] float32 -> each row divided by its L2 norm: ``tf.math.l2_normalize(x, axis=1)``'s
    ops forward (x * rsqrt(max(sum x^2, 1e-12))), with the gradient written out,
    (g - y * sum(g * y)) / norm: 4 kernels instead of the ~15 autodiff makes of the forward
    (the batch-512 train step is dispatch-bound, trainer/loop.py)."""
    inverse_norm = tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=1, keepdims=True), 1e-12))
    y = x * inverse_norm

    def gradient(upstream):
        return (upstream - y * tf.reduce_sum(upstream * y, axis=1, keepdims=True)) * inverse_norm

    return y, gradient


def _looks_up_ahead(encoder) -> bool:
    """Whether ``encoder`` maps a column to one table row per value (id / categorical)."""
    return isinstance(encoder, IdEncoder) and not isinstance(encoder, MultiCategoricalEncoder)


def build_encoder(spec: FeatureSpec, config: Config, transformed_dir: str, stats: dict,
                  item_ids: "ItemIdEncoder | None" = None):
    """One encoder layer for ``spec`` (vocabularies / stats read from ``transformed_dir``);
    ``item_ids``: the item tower's id encoder, for a history that shares its table."""
    dims = config.train.feature_dims
    name = f"{spec.name}_encoder"
    # The transform decided each id vocabulary's cut (stats.json vocab_coverage); older
    # outputs without it were never capped.
    coverage = (stats.get("vocab_coverage") or {}).get(spec.name) or {}
    if spec.name == ITEM_KEY:
        limit = coverage.get("kept") if coverage.get("max_size") is not None else None
        return ItemIdEncoder(trained_item_ids(transformed_dir, limit), dims, config.train.item_id_dropout,
                             name=name)
    if spec.type == "history":
        item_coverage = (stats.get("vocab_coverage") or {}).get(ITEM_KEY) or {}
        limit = item_coverage.get("kept") if item_coverage.get("max_size") is not None else None
        shared = item_ids if spec.item_embedding == "shared" else None
        if spec.item_embedding == "shared" and shared is None:
            raise ValueError(f"feature {spec.name!r}: item_embedding shared needs the item tower's item-id "
                             f"encoder (train.use_item_ids_as_features)")
        vocabulary = [] if shared is not None else trained_item_ids(transformed_dir, limit)
        return HistoryEncoder(vocabulary, dims, spec.max_length, spec.pooling, shared=shared, name=name)
    if spec.type == "numeric":
        mean, std = artifacts.numeric_stats(stats, spec.name)
        return NumericEncoder(mean, std, name=name)
    if spec.type == "embedding":
        return EmbeddingEncoder(spec.dims, dims, name=name)
    tokens, _ = artifacts.read_vocab(transformed_dir, spec.name)
    if spec.type == "id":
        unknown = config.train.query_key_dropout if spec.name == config.schema.query_key else 0.0
        return IdEncoder(tokens, dims, oov_buckets=max(int(coverage.get("oov_rows") or 1), 1),
                         unknown_rate=unknown, name=name)
    if spec.type == "categorical":
        return IdEncoder(tokens, dims, name=name)
    if spec.type == "multi_categorical":
        return MultiCategoricalEncoder(tokens, dims, name=name)
    if spec.type == "text":
        return TextEncoder(tokens, dims, config.transform.text_max_tokens,
                           config.train.text_hash_buckets, name=name)
    raise ValueError(f"feature {spec.name!r}: unsupported type {spec.type!r}")


def query_input_specs(config: Config) -> list[FeatureSpec]:
    """Raw inputs of the query tower: every declared query feature but a source-only one
    (``tower: false``)."""
    return [s for s in config.schema.query_features if s.tower]


def item_input_specs(config: Config) -> list[FeatureSpec]:
    """Raw inputs of the item tower: item_id (always accepted) + the item features but the
    source-only ones (``tower: false``)."""
    return [FeatureSpec(name=ITEM_KEY, type="id"), *(s for s in config.schema.item_features if s.tower)]


def build_towers(config: Config, transformed_dir: str) -> tuple[TowerModel, TowerModel]:
    """(query_tower, item_tower) for ``config.schema``.

    Raises:
        ValueError: the item tower would have no features (no item features and
            ``train.use_item_ids_as_features`` false).
        FileNotFoundError: a vocabulary file is missing.
    """
    stats = artifacts.read_stats(transformed_dir)
    t = config.train

    def tower(specs: list[FeatureSpec], encoders: dict, name: str, key: str, key_dropout: float,
              anonymous: Optional[dict] = None) -> TowerModel:
        augmented = None
        if t.augmented_vectors.enabled:
            from trainer.augmented import AugmentedVector

            key_encoder = encoders.get(key)
            av = t.augmented_vectors
            augmented = AugmentedVector(key, av.dims or t.embedding_dims,
                                        key_encoder if _looks_up_ahead(key_encoder) else None,
                                        av.hash_buckets, dropout=key_dropout, mimic_dims=t.embedding_dims,
                                        name=f"{key}_augmented")
        return TowerModel(encoders, specs, t.hidden_dims, t.activation_fn, t.dropout, t.embedding_dims,
                          anonymous_rate=t.anonymous_query_rate if anonymous else 0.0,
                          anonymous_defaults=anonymous, unit_norm=similarity.unit_rows(t.similarity),
                          augmented=augmented, name=name)

    q_specs = query_input_specs(config)
    i_specs = item_input_specs(config)
    i_encoded = i_specs if t.use_item_ids_as_features else i_specs[1:]
    if not i_encoded:
        raise ValueError("schema.item_features is empty and train.use_item_ids_as_features is false: "
                         "the item tower would have no input to encode")
    # Item side first: a history may share its item-id table.
    item_encoders = {s.name: build_encoder(s, config, transformed_dir, stats) for s in i_encoded}
    query_encoders = {s.name: build_encoder(s, config, transformed_dir, stats, item_encoders.get(ITEM_KEY))
                      for s in q_specs}
    # What a history-only request's other features are at serving (publishing/publish.py's defaults).
    anonymous = {s.name: artifacts.query_feature_default(s, stats) for s in q_specs if s.type != "history"}
    query_key = config.schema.query_key
    return (tower(q_specs, query_encoders, "query_tower", query_key, t.query_key_dropout,
                  anonymous if t.anonymous_query_rate > 0.0 else None),
            tower(i_specs, item_encoders, "item_tower", ITEM_KEY, t.item_id_dropout))
