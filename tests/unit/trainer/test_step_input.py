"""The prepared step input (ids looked up once) and the XLA-compiled train step (trainer/step_input.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from core.config import Config, FeatureSpec  # noqa: E402

USERS = [f"u{i}" for i in range(12)]
ITEMS = [f"i{i}" for i in range(9)]


def _config(**train) -> Config:
    return Config.model_validate({
        "data": {"path": "unused"},
        "schema": {"query_key": "user_id", "query_features": [{"name": "user_id", "type": "id"}],
                   "item_features": [{"name": "category", "type": "categorical"}]},
        "train": {"batch_size": 8, "embedding_dims": 4, "feature_dims": 4, "hidden_dims": [], "lr": 0.05,
                  "logq_correction": True, "compiled_step": True, **train},
        "publish": {"store": "unused"},
    })


def _model(tf, config, dedupe: bool, weights=None):
    from trainer.features import IdEncoder, ItemIdEncoder, TowerModel
    from trainer.model import SamplingProbability, TwoTowerModel
    from trainer.optimizers import make_optimizer

    t = config.train
    query = TowerModel({"user_id": IdEncoder(USERS, 4, name="user_id_encoder")},
                       [FeatureSpec(name="user_id", type="id")], [], "relu", 0.0, 4, name="query_tower")
    item = TowerModel({"item_id": ItemIdEncoder(ITEMS[:6], 4, name="item_id_encoder"),  # i6..i8: cold
                       "category": IdEncoder(["c0", "c1"], 4, name="category_encoder")},
                      [FeatureSpec(name="item_id", type="id"), FeatureSpec(name="category", type="categorical")],
                      [], "relu", 0.0, 4, name="item_tower")
    logq = SamplingProbability(ITEMS, [5, 4, 3, 3, 2, 1, 0, 0, 1])
    model = TwoTowerModel(query, item, t.temperature, sampling_probability=logq, dedupe_candidates=dedupe)
    model.compile(optimizer=make_optimizer(config, 100))
    return model, logq


def _batches(tf, n_batches=3):
    rng = np.random.default_rng(0)
    out = []
    category = {item: ["c0", "c1", "c9"][k % 3] for k, item in enumerate(ITEMS)}  # an item's own (c9: unknown)
    for _ in range(n_batches):
        items = rng.choice(ITEMS, 8)  # repeats: accidental hits, de-duplication
        out.append({"user_id": tf.constant(rng.choice(USERS + ["stranger"], 8)), "item_id": tf.constant(items),
                    "category": tf.constant([category[i] for i in items])})
    return out


def test_looked_up_columns_encode_exactly_like_raw_strings():
    """Towers fed the prepared columns (int64 rows, unknown values at the OOV row, cold items
    zeroed) give the raw strings' embeddings bit for bit; the item hash and q are the model's."""
    import tensorflow as tf

    from trainer.model import hash_item_ids
    from trainer.step_input import ITEM_HASH, SAMPLING_PROBABILITY, look_up_columns

    model, logq = _model(tf, _config(), dedupe=True)
    raw = _batches(tf, 1)[0]
    prepared = look_up_columns(raw, (model.query_tower, model.item_tower), logq)
    assert prepared["user_id"].dtype == tf.int64 and prepared["category"].dtype == tf.int64
    np.testing.assert_array_equal(model.query_tower(prepared).numpy(), model.query_tower(raw).numpy())
    np.testing.assert_array_equal(model.item_tower(prepared).numpy(), model.item_tower(raw).numpy())
    np.testing.assert_array_equal(prepared[ITEM_HASH].numpy(), hash_item_ids(raw["item_id"]).numpy())
    np.testing.assert_array_equal(prepared[SAMPLING_PROBABILITY].numpy(), logq(raw["item_id"]).numpy())
    assert float(model.compute_loss(prepared)) == pytest.approx(float(model.compute_loss(raw)), rel=1e-6)


def test_compiled_step_trains_like_the_uncompiled_step():
    """Three Adam steps: XLA-compiled on prepared ids with TFRS's [B, B] softmax, against
    uncompiled on raw strings with the distinct-candidate softmax (the same loss): the same weights
    to float32 rounding."""
    import tensorflow as tf

    from trainer.optimizers import _can_jit_compile
    from trainer.step_input import look_up_columns

    if not _can_jit_compile():
        pytest.skip("XLA is not usable on this platform")
    # A fixed init, not whatever the process's random state is after earlier tests: Adam's first
    # update is lr * g / (|g| + 1e-7), so a gradient component that cancels to rounding noise
    # (~1e-5 against terms of ~200 at temperature 0.05) moves its weight by up to lr either way.
    # 1 init in 12 has such a component here (measured); the two paths then differ by 3e-4,
    # which is the comparison's conditioning, not the step's (the losses agree to 1e-7).
    tf.keras.utils.set_random_seed(0)
    config = _config()
    batches = _batches(tf)
    reference, _ = _model(tf, config, dedupe=True)
    reference.query_tower(batches[0]), reference.item_tower(batches[0])
    start = reference.get_weights()
    for b in batches:
        reference.train_step(b)
    compiled, logq = _model(tf, config, dedupe=False)
    compiled.compile(optimizer=compiled.optimizer, jit_compile=True)
    prepared = [look_up_columns(b, (compiled.query_tower, compiled.item_tower), logq) for b in batches]
    compiled.query_tower(prepared[0]), compiled.item_tower(prepared[0])
    compiled.set_weights(start)
    step = compiled.make_train_function()
    for b in prepared:
        step(iter([b]))
    for got, want, first in zip(compiled.get_weights(), reference.get_weights(), start):
        assert np.abs(want - first).max() > 1e-3  # the steps did move the weights
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_plan_names_what_keeps_the_step_uncompiled():
    import tensorflow as tf

    import trainer.optimizers
    from trainer.step_input import compiled_step_plan

    config = _config()
    model, _ = _model(tf, config, dedupe=True)
    towers = (model.query_tower, model.item_tower)
    plan = compiled_step_plan(config, towers, in_memory=True, multi_worker=False)
    if not trainer.optimizers._can_jit_compile():
        pytest.skip("XLA is not usable on this platform")
    assert plan.compiled and plan.looked_up and plan.why_not is None
    streamed = compiled_step_plan(config, towers, in_memory=False, multi_worker=False)
    assert streamed.looked_up and streamed.compiled
    workers = compiled_step_plan(config.with_overrides({"train.distribute": "multi_worker"}), towers,
                                 in_memory=True, multi_worker=True)
    assert not workers.looked_up and not workers.compiled and "multi_worker" in workers.why_not
    off = compiled_step_plan(_config(compiled_step=False, batch_size=4096, hard_negatives=2), towers,
                             in_memory=True, multi_worker=False)
    assert off.looked_up and not off.compiled
    assert "compiled_step is off" in off.why_not and "4096" in off.why_not and "hard negatives" in off.why_not
    old = trainer.optimizers.DENSIFY_MAX_ELEMENTS
    trainer.optimizers.DENSIFY_MAX_ELEMENTS = 40  # the 13 x 4 user table is now "large"
    try:
        big = compiled_step_plan(config, towers, in_memory=True, multi_worker=False)
    finally:
        trainer.optimizers.DENSIFY_MAX_ELEMENTS = old
    assert not big.compiled and "user_id's table" in big.why_not
