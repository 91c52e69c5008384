"""The TFRecord contract between the Beam transform and the trainer / embedder.

Every feature but an embedding is a scalar per example, so one schema serves TFRecords, SavedModel
signatures and JSON requests alike:

- id, categorical, text, multi_categorical -> one UTF-8 string
  (text already normalised by :func:`core.text.normalize_text`; multi-categorical
  values joined with ``|``);
- numeric -> one float32 (missing values already filled by the transform);
- embedding -> ``dims`` float32 (a fixed-length float list; signatures take [B, dims]).

Interaction examples carry the query features, ``item_id`` and the item features, then, when
the schema is weighted (graded actions: ``schema.weight_column`` / ``schema.action_weights``),
:data:`WEIGHT_KEY`, the row's float32 weight >= 0 (never a tower input).
Catalog examples (items-*.tfrecord) carry ``item_id`` and the item features.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from core.config import ITEM_KEY, WEIGHT_KEY, FeatureSpec, SchemaConfig  # noqa: F401 (re-exported)


def is_numeric(spec: FeatureSpec) -> bool:
    return spec.type == "numeric"


def is_float(spec: FeatureSpec) -> bool:
    """Carried as float32 (numeric, embedding); every other type is one UTF-8 string."""
    return spec.type in ("numeric", "embedding")


def value_shape(spec: FeatureSpec) -> list[int]:
    """One example's shape of the feature: [] (a scalar) or [dims] for an embedding."""
    return [int(spec.dims)] if spec.type == "embedding" else []


def interaction_specs(schema: SchemaConfig) -> list[FeatureSpec]:
    """Feature specs of one interaction example, query side first, then item_id, then item side,
    then (``schema.weighted``) the numeric :data:`WEIGHT_KEY`."""
    specs = [*schema.query_features, FeatureSpec(name=ITEM_KEY, type="id"), *schema.item_features]
    if schema.weighted:
        specs.append(FeatureSpec(name=WEIGHT_KEY, type="numeric"))
    return specs


def item_specs(schema: SchemaConfig) -> list[FeatureSpec]:
    """Feature specs of one catalog example: item_id then the item features."""
    return [FeatureSpec(name=ITEM_KEY, type="id"), *schema.item_features]


def encode_example(values: Mapping[str, object], specs: Iterable[FeatureSpec]) -> bytes:
    """Serialise one row (already cleaned) to a tf.train.Example.

    Raises:
        KeyError: a declared feature is missing from ``values``.
    """
    from tensorflow.core.example import example_pb2, feature_pb2

    feats = {}
    for spec in specs:
        value = values[spec.name]
        if spec.type == "embedding":
            feats[spec.name] = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=value))
        elif is_numeric(spec):
            feats[spec.name] = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(value)]))
        else:
            feats[spec.name] = feature_pb2.Feature(
                bytes_list=feature_pb2.BytesList(value=[str(value).encode("utf-8")]))
    return example_pb2.Example(features=feature_pb2.Features(feature=feats)).SerializeToString()


def decode_example(data: bytes, specs: Iterable[FeatureSpec]) -> dict[str, object]:
    """Inverse of :func:`encode_example` (pure Python; for tests and small reads)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(data)
    out: dict[str, object] = {}
    for spec in specs:
        feat = example.features.feature[spec.name]
        if spec.type == "embedding":
            out[spec.name] = [float(v) for v in feat.float_list.value]
        elif is_numeric(spec):
            out[spec.name] = float(feat.float_list.value[0])
        else:
            out[spec.name] = feat.bytes_list.value[0].decode("utf-8")
    return out


def tf_feature_description(specs: Iterable[FeatureSpec]) -> dict:
    """``tf.io.parse_example`` spec: scalar string or float32 per feature, [dims] float32 per embedding."""
    import tensorflow as tf

    return {
        spec.name: tf.io.FixedLenFeature(value_shape(spec), tf.float32 if is_float(spec) else tf.string)
        for spec in specs
    }
