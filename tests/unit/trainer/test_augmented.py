"""DAT (trainer/augmented.py): the mimic loss and its stop-gradient, category alignment by hand,
and a trained run with both whose exported towers carry the augmented vectors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests.support.trainer_data import make_config, write_transformed  # noqa: E402


@pytest.fixture(scope="module")
def tf():
    from trainer.tfenv import import_tf

    return import_tf()


def test_mimic_loss_by_hand_and_no_gradient_into_the_target(tf):
    from trainer.augmented import mimic_loss

    augmented = tf.Variable([[1.0, 0.0], [0.0, 1.0]])
    target = tf.Variable([[0.0, 0.0], [1.0, 1.0]])
    with tf.GradientTape(persistent=True) as tape:
        loss = mimic_loss(augmented, target)
        weighted = mimic_loss(augmented, target, tf.constant([2.0, 0.0]))
    # ||(1, 0)||^2 + ||(-1, 0)||^2 = 2; weighted: 2 * 1 + 0 * 1.
    assert float(loss) == pytest.approx(2.0) and float(weighted) == pytest.approx(2.0)
    np.testing.assert_allclose(tape.gradient(loss, augmented).numpy(), [[2.0, 0.0], [-2.0, 0.0]])
    assert tape.gradient(loss, target) is None  # the partner's output is held fixed


def _numpy_covariance(rows):
    centred = rows - rows.mean(axis=0)
    return centred.T @ centred / len(rows)


def test_category_alignment_by_hand(tf):
    from trainer.augmented import category_alignment_loss, category_codes

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 3)).astype(np.float32)
    categories = np.array(["a", "b", "a", "b", "c", "a"])  # a: 3 rows (the major), b: 2, c: 1
    got = category_alignment_loss(tf.constant(embeddings), tf.constant(categories))
    major = _numpy_covariance(embeddings[categories == "a"])
    expected = np.sum((major - _numpy_covariance(embeddings[categories == "b"])) ** 2)  # c: no spread
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(category_alignment_loss(tf.constant(embeddings), tf.constant(["x"] * 6))) == 0.0
    # Looked-up int64 rows group like the strings; a multi-valued column by its first value.
    as_rows = category_alignment_loss(tf.constant(embeddings), tf.constant([1, 2, 1, 2, 3, 1], tf.int64))
    assert float(as_rows) == pytest.approx(expected, rel=1e-5)
    codes = category_codes(tf.constant(["a|x", "b", "a", " b |a", "c|b", "a|c"]), multi_valued=True)
    assert [c.decode() for c in codes.numpy()] == list(categories)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("transformed_dat")
    write_transformed(path, make_config(str(path)))
    return path


def _dat_config(root, **train):
    return make_config(str(root), **{"augmented_vectors": {"enabled": True, "weight": 1.0}, **train})


def _model(tf, config, root, mimic_weight):
    from trainer.features import build_towers
    from trainer.model import TwoTowerModel

    towers = build_towers(config, str(root))
    return towers, TwoTowerModel(*towers, 0.1, mimic_weight=mimic_weight)


def test_the_mimic_term_trains_only_the_augmented_tables(tf, root):
    """The gradient the mimic term adds (loss with it minus loss without) reaches the augmented
    vectors' tables and nothing else: the other tower's output is a stop-gradient target."""
    config = _dat_config(root)
    (query_tower, item_tower), model = _model(tf, config, root, mimic_weight=1.0)
    features = {"query": tf.constant(["red shoes", "cheap hats", "pro bags", "red shoes"]),
                "segment": tf.constant(["web", "app", "web", "app"]),
                "item_id": tf.constant(["i00", "i13", "i26", "i01"]),
                "title": tf.constant(["shoes zero", "hats one", "bags two", "shoes three"]),
                "category": tf.constant(["shoes", "hats", "bags", "shoes"]),
                "tags": tf.constant(["sale", "", "new|eco", "sale"]),
                "price": tf.constant([1.0, 2.0, 3.0, 4.0])}
    model.compute_loss(features)  # builds the variables
    variables = model.trainable_variables

    def gradients(weight):
        model.mimic_weight = weight
        with tf.GradientTape() as tape:
            loss = model.compute_loss(features, training=True)
        return [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
                for g, v in zip(tape.gradient(loss, variables), variables)]

    added = [a - b for a, b in zip(gradients(1.0), gradients(0.0))]
    augmented_tables = {id(query_tower.augmented.embedding.embeddings), id(item_tower.augmented.embedding.embeddings)}
    for variable, extra in zip(variables, added):
        size = float(tf.reduce_max(tf.abs(extra)))
        if id(variable) in augmented_tables:
            assert size > 1e-4, variable.name
        else:
            assert size < 1e-6, (variable.name, size)


def test_unknown_ids_get_no_augmented_vector_and_text_keys_are_hashed(tf, root):
    config = _dat_config(root)
    (query_tower, item_tower), _ = _model(tf, config, root, mimic_weight=1.0)
    assert query_tower.augmented.lookup is None  # the tiny data's query key is text: hashed
    items = item_tower.augmented(tf.constant(["i00", "never-seen"])).numpy()
    assert np.abs(items[0]).sum() > 0 and not items[1].any()
    queries = query_tower.augmented(tf.constant(["red shoes", "red shoes", "cheap hats"])).numpy()
    np.testing.assert_array_equal(queries[0], queries[1])
    assert not np.allclose(queries[0], queries[2])


def test_dat_and_alignment_train_and_the_exported_towers_carry_the_vectors(tf, root, tmp_path):
    """A run with both extensions trains, records them, and the exported towers embed what the
    in-memory towers (augmented vectors included) embed."""
    from core.towers import Tower
    from trainer.train import train_model

    config = _dat_config(root, n_epochs=3, category_alignment={"feature": "category", "weight": 1.0})
    summary = train_model(config, str(root), str(tmp_path))
    assert summary["best_epoch"] >= 1
    query = Tower(str(tmp_path / "query_tower"))
    vectors = query.embed({"query": ["red shoes", "red hats"], "segment": ["a", "a"]})
    assert vectors.shape == (2, config.train.embedding_dims)
    # Both exported towers hold their augmented table; embedding is the towers' own signature.
    for name, key in (("query_tower", "query"), ("item_tower", "item_id")):
        loaded = tf.saved_model.load(str(tmp_path / name))
        names = [v.name for v in loaded.signatures["serving_default"].variables]
        assert any(f"{key}_augmented_embedding" in n for n in names), (name, names)
    training = json.loads((tmp_path / "training.json").read_text())
    assert training["augmented_vectors"] == {"dims": config.train.embedding_dims, "weight": 1.0}
    assert training["category_alignment"] == {"feature": "category", "weight": 1.0}


def test_config_refuses_alignment_on_a_feature_that_is_not_a_category(root):
    from core.config import ConfigError

    with pytest.raises((ValueError, ConfigError), match="category_alignment.feature: 'price'"):
        make_config(str(root), category_alignment={"feature": "price"})
    with pytest.raises((ValueError, ConfigError), match="augmented_vectors"):
        make_config(str(root), augmented_vectors={"weight": 2.0})
