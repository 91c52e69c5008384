"""SavedModel export of a tower with the serving contract :class:`core.towers.Tower` loads.

Signature ``serving_default``: one input per raw feature, named like the feature
(tf.string [None] or tf.float32 [None]); output ``{"embedding": float32 [None, D]}``.

Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from core.records import is_float, value_shape
from core.towers import OUTPUT_KEY, SIGNATURE
from trainer.features import TowerModel
from trainer.tfenv import import_tf

tf = import_tf()


def input_signature(tower: TowerModel) -> dict:
    """``{name: tf.TensorSpec([None, *shape], dtype, name)}`` for the tower's raw inputs ([None]
    for scalars, [None, dims] for an embedding)."""
    return {s.name: tf.TensorSpec([None, *value_shape(s)], tf.float32 if is_float(s) else tf.string, name=s.name)
            for s in tower.input_specs}


def serving_function(tower: TowerModel):
    """A traced ``features -> {"embedding": [B, D]}`` function with a fixed signature
    (one trace for every batch size)."""

    @tf.function(input_signature=[input_signature(tower)])
    def serve(features):
        return {OUTPUT_KEY: tower(features, training=False)}

    return serve


def export_tower(tower: TowerModel, path: str) -> str:
    """Write ``tower`` as a SavedModel at ``path`` (local or gs://); returns ``path``."""
    serve = serving_function(tower)
    module = tf.Module()
    module.tower = tower  # tracks the variables and the vocabulary lookup tables
    module.serve = serve
    tf.saved_model.save(module, path, signatures={SIGNATURE: serve.get_concrete_function()})
    return path


def to_tensors(tower: TowerModel, columns: Mapping[str, np.ndarray]) -> dict:
    """Numpy columns (str objects / floats) -> the tower's input tensors."""
    out = {}
    for spec in tower.input_specs:
        if spec.name not in columns:
            raise KeyError(f"{tower.name}: missing input feature {spec.name!r}")
        values = columns[spec.name]
        if is_float(spec):
            out[spec.name] = tf.constant(np.asarray(values, dtype=np.float32))
        else:
            out[spec.name] = tf.constant([str(v) for v in values], dtype=tf.string)
    return out


def embed_columns(serve, tower: TowerModel, columns: Mapping[str, np.ndarray], batch_size: int = 4096
                  ) -> np.ndarray:
    """Embed numpy feature columns [N] with ``serve`` (from :func:`serving_function`) -> float32 [N, D]."""
    n = len(next(iter(columns.values()))) if columns else 0
    parts = []
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in columns.items()}
        parts.append(serve(to_tensors(tower, chunk))[OUTPUT_KEY].numpy())
    if not parts:
        return np.zeros((0, tower.projection.units), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)
