"""Extra negatives: mixed negative sampling, labelled negatives, hard negatives (by hand).

The loss checks use fixed "towers" (a lookup from id to a chosen vector), temperature 1,
so every logit is a dot product you can read off the vectors below, and TFRS's summed
softmax cross-entropy of a row with positive score s and negatives n_j is
``-s + log(e^s + sum_j e^{n_j})``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tests.conftest import fixed_tower

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

E = math.e


@pytest.fixture(scope="module")
def tf():
    from trainer.tfenv import import_tf

    return import_tf()


QUERIES = {"q0": [1.0, 0.0], "q1": [0.0, 1.0]}
ITEMS = {"a": [1.0, 0.0], "b": [0.0, 1.0], "x": [1.0, 0.0]}
BATCH = {"query": ["q0", "q1"], "item_id": ["a", "b"]}


def _model(tf, sampler=None, n=0, **kwargs):
    from trainer.model import TwoTowerModel

    return TwoTowerModel(fixed_tower(tf, "query", QUERIES), fixed_tower(tf, "item_id", ITEMS), 1.0,
                         negative_sampler=sampler, negative_samples_count=n, **kwargs)


def _sampler(ids, probs=None):
    from trainer.negatives import CatalogSampler

    ids = np.array(ids, dtype=object)
    return CatalogSampler({"item_id": ids}, np.full(len(ids), 1.0 / len(ids)) if probs is None else probs)


def _batch(tf, batch=BATCH):
    return {k: tf.constant(v) for k, v in batch.items()}


# --------------------------------------------------------------------------- sampling


def test_sampling_probabilities_by_hand():
    from trainer.negatives import sampling_probabilities

    ids = ["pop", "rare", "unsold", "not-in-vocab"]
    np.testing.assert_allclose(sampling_probabilities(ids, ["pop", "rare", "unsold"], [8, 1, 0], "uniform", 0.5),
                               [0.25] * 4)
    # (count + 1) ** 0.5 = 3, sqrt 2, 1, 1 (a catalog item missing from the vocabulary counts 0).
    w = np.array([3.0, math.sqrt(2), 1.0, 1.0])
    np.testing.assert_allclose(sampling_probabilities(ids, ["pop", "rare", "unsold"], [8, 1, 0], "popularity", 0.5),
                               w / w.sum())
    # alpha 0: popularity is ignored.
    np.testing.assert_allclose(sampling_probabilities(ids, ["pop"], [8], "popularity", 0.0), [0.25] * 4)
    with pytest.raises(ValueError, match="negative_sampling"):
        sampling_probabilities(ids, [], [], "zipf", 0.5)


@pytest.mark.parametrize("mode", ["uniform", "popularity"])
def test_sampler_draws_follow_the_configured_distribution(tf, mode):
    from trainer.negatives import CatalogSampler, sampling_probabilities

    ids = ["a", "b", "c", "d"]
    probs = sampling_probabilities(ids, ids, [30, 10, 3, 0], mode, 0.75)
    sampler = CatalogSampler({"item_id": np.array(ids, dtype=object), "price": np.arange(4.0)}, probs)
    tf.random.set_seed(0)
    n = 200_000
    freq = np.bincount(sampler.sample_indices(n).numpy(), minlength=4) / n
    # Binomial standard error <= sqrt(0.25 / 2e5) ~ 0.0011: 0.005 is > 4 sigma.
    np.testing.assert_allclose(freq, probs, atol=0.005)
    drawn = sampler.sample(5)
    assert set(drawn) == {"item_id", "price"} and drawn["item_id"].shape == (5,)
    # The price column travels with its id (row i has price i).
    idx = {"a": 0, "b": 1, "c": 2, "d": 3}
    assert [idx[i.decode()] for i in drawn["item_id"].numpy()] == drawn["price"].numpy().astype(int).tolist()
    got = sampler.probability(tf.constant(["b", "zz"])).numpy()
    np.testing.assert_allclose(got, [probs[1], 0.0], rtol=1e-6)


# --------------------------------------------------------------------------- mixed negatives in the loss


# ``dedupe``: the same losses from the distinct-candidate path (trainer.model.deduplicated_softmax_loss).
DEDUPE = pytest.mark.parametrize("dedupe", [False, True], ids=["per-copy", "deduplicated"])


@DEDUPE
def test_mixed_negatives_widen_the_candidate_matrix_and_the_loss(tf, dedupe):
    batch = _batch(tf)
    plain = _model(tf, dedupe_candidates=dedupe)
    mixed = _model(tf, _sampler(["x"]), 3, dedupe_candidates=dedupe)  # a one-item catalog: every draw is x = (1, 0)

    from trainer.model import hash_item_ids

    emb, ids, q = mixed.candidates(batch, mixed.item_tower(batch))
    assert emb.shape == (2 + 3, 2) and q is None
    assert list(ids.numpy()) == list(hash_item_ids(tf.constant(["a", "b", "x", "x", "x"])).numpy())
    scores = mixed.query_tower(batch).numpy() @ emb.numpy().T
    assert scores.shape == (2, 5)

    # In-batch only: each row has s = 1 and one negative at 0.
    assert float(plain.compute_loss(batch)) == pytest.approx(2 * (math.log(E + 1) - 1), rel=1e-5)
    # q0 also scores 1 against each of the 3 x's; q1 scores 0 against them.
    expected = (math.log(E + 1 + 3 * E) - 1) + (math.log(E + 1 + 3) - 1)
    assert float(mixed.compute_loss(batch)) == pytest.approx(expected, rel=1e-5)


@DEDUPE
def test_sampled_copies_of_the_positive_are_accidental_hits(tf, dedupe):
    batch = _batch(tf)
    mixed = _model(tf, _sampler(["a"]), 3, dedupe_candidates=dedupe)  # every draw is q0's positive "a"
    # Row 0: the 3 sampled a's are removed (not pushed away); row 1: a scores 0, four times.
    expected = (math.log(E + 1) - 1) + (math.log(E + 4) - 1)
    assert float(mixed.compute_loss(batch)) == pytest.approx(expected, rel=1e-5)


@DEDUPE
def test_logq_uses_the_mixture_probability(tf, dedupe):
    from trainer.model import SamplingProbability
    from trainer.negatives import mixed_candidate_probability

    # p_pop: a 3/4, b 1/4, x floor 0.5/4; p_s: x 1 (one-item catalog); B = 2, N = 3.
    q = mixed_candidate_probability(tf.constant([0.75, 0.25, 0.125]), tf.constant([0.0, 0.0, 1.0]),
                                    tf.constant(2), 3).numpy()
    np.testing.assert_allclose(q, [2 * 0.75 / 5, 2 * 0.25 / 5, (2 * 0.125 + 3) / 5], rtol=1e-6)

    model = _model(tf, _sampler(["x"]), 3, sampling_probability=SamplingProbability(["a", "b", "x"], [3, 1, 0]),
                   dedupe_candidates=dedupe)
    batch = _batch(tf)
    _, ids, q = model.candidates(batch, model.item_tower(batch))
    np.testing.assert_allclose(q.numpy(), [0.3, 0.1, 0.65, 0.65, 0.65], rtol=1e-6)
    # TFRS subtracts log q from every column: row 0 = a (1 - log .3), b (0 - log .1), x's (1 - log .65).
    row0 = -(1 - math.log(0.3)) + math.log(math.exp(1 - math.log(0.3)) + math.exp(-math.log(0.1))
                                           + 3 * math.exp(1 - math.log(0.65)))
    row1 = -(1 - math.log(0.1)) + math.log(math.exp(1 - math.log(0.1)) + math.exp(-math.log(0.3))
                                           + 3 * math.exp(-math.log(0.65)))
    assert float(model.compute_loss(batch)) == pytest.approx(row0 + row1, rel=1e-5)


def test_deduplicated_loss_by_hand_with_repeated_items(tf):
    """Items repeated in the batch: b twice, a three times (rows 0, 2, 4 and 1, 3)."""
    batch = _batch(tf, {"query": ["q0", "q1", "q0", "q1", "q1"], "item_id": ["a", "b", "a", "b", "a"]})
    # Scores: q0 . a = 1, q0 . b = 0, q1 . a = 0, q1 . b = 1. A row keeps its own positive
    # column and every candidate whose id differs from its positive's (the other copies of its
    # positive are accidental hits): rows whose positive is a see a once and both b's.
    row_a_q0 = -1 + math.log(E + 2 * 1)          # q0, positive a: a (1) + two b's (0)
    row_b_q1 = -1 + math.log(E + 3 * 1)          # q1, positive b: b (1) + three a's (0)
    row_a_q1 = -0 + math.log(1 + 2 * E)          # q1, positive a (score 0) + two b's (1)
    expected = 2 * row_a_q0 + 2 * row_b_q1 + row_a_q1
    for dedupe in (False, True):
        assert float(_model(tf, dedupe_candidates=dedupe).compute_loss(batch)) == pytest.approx(expected, rel=1e-5)


def test_deduplicated_loss_and_gradients_match_tfrs(tf):
    """Trainable id towers, logQ, temperature, mixed negatives, many repeated items: the
    distinct-candidate loss and every variable's gradient equal TFRS's per-copy ones."""
    from trainer.features import IdEncoder
    from trainer.model import SamplingProbability, TwoTowerModel

    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(12)]
    users = [f"u{k}" for k in range(7)]

    class IdTower(tf.keras.layers.Layer):
        def __init__(self, key, vocab):
            super().__init__()
            self.key, self.encoder = key, IdEncoder(vocab, 8, name=f"{key}_enc")
            self.dense = tf.keras.layers.Dense(4)

        def call(self, features, training=False):
            return tf.math.l2_normalize(self.dense(self.encoder(features[self.key])), axis=1)

    tf.keras.utils.set_random_seed(4)
    query_tower, item_tower = IdTower("query", users), IdTower("item_id", items)
    popularity = rng.integers(1, 20, size=len(items))
    logq = SamplingProbability(items, popularity.tolist())
    sampler = _sampler(items, popularity / popularity.sum())
    batch = _batch(tf, {"query": list(rng.choice(users, 40)), "item_id": list(rng.choice(items, 40, p=popularity / popularity.sum()))})

    def loss_and_grads(dedupe, sampled):
        model = TwoTowerModel(query_tower, item_tower, 0.2, sampling_probability=logq, negative_sampler=sampler,
                              negative_samples_count=sampled, dedupe_candidates=dedupe)
        tf.random.set_seed(11)  # the same sampled negatives for both paths
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        variables = query_tower.trainable_variables + item_tower.trainable_variables
        return float(loss), [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]

    for sampled in (0, 6):
        loss, grads = loss_and_grads(False, sampled)
        loss_d, grads_d = loss_and_grads(True, sampled)
        assert loss_d == pytest.approx(loss, rel=1e-5)
        for g, g_d in zip(grads, grads_d):
            np.testing.assert_allclose(g_d, g, rtol=1e-4, atol=1e-5)


def test_dedupe_is_off_with_hard_negatives(tf):
    assert not _model(tf, dedupe_candidates=True, num_hard_negatives=1).dedupe_candidates
    assert _model(tf, dedupe_candidates=True).dedupe_candidates


# --------------------------------------------------------------------------- hard negatives


def test_hard_negatives_are_wired_and_keep_the_top_negative(tf):
    from trainer.model import TwoTowerModel

    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}
    batch = {"query": tf.constant(["a", "b", "c"]), "item_id": tf.constant(["a", "b", "c"])}

    def model(k):
        return TwoTowerModel(fixed_tower(tf, "query", vecs), fixed_tower(tf, "item_id", vecs), 1.0,
                             num_hard_negatives=k)

    assert model(0).task._num_hard_negatives is None  # TFRS: None = every negative
    hard = model(1)
    assert hard.task._num_hard_negatives == 1
    # Scores [[1, 0, .6], [0, 1, .8], [.6, .8, 1]]: the hardest negatives are .6, .8, .8.
    all_negs = sum(-1 + math.log(E + sum(math.exp(s) for s in negs)) for negs in ([0, .6], [0, .8], [.6, .8]))
    hard_negs = sum(-1 + math.log(E + math.exp(s)) for s in (.6, .8, .8))
    assert float(model(0).compute_loss(batch)) == pytest.approx(all_negs, rel=1e-5)
    assert float(hard.compute_loss(batch)) == pytest.approx(hard_negs, rel=1e-5)


# --------------------------------------------------------------------------- labelled negatives


@DEDUPE
def test_labelled_negative_term_by_hand(tf, dedupe):
    from trainer.data import LABELLED_NEGATIVES, POSITIVES

    batch = _batch(tf)
    negatives = _batch(tf, {"query": ["q0"], "item_id": ["x"]})  # q0 . x = 1: a confident mistake
    model = _model(tf, labelled_negative_weight=0.5, dedupe_candidates=dedupe)
    softplus = lambda z: math.log1p(math.exp(z))  # noqa: E731
    # Positives (score 1, label 1): softplus(-1) each; the negative (score 1, label 0): softplus(1).
    bce = 2 * softplus(-1) + softplus(1)
    assert float(model.labelled_negative_loss(model.query_tower(batch), model.item_tower(batch), negatives)) \
        == pytest.approx(bce, rel=1e-5)
    plain = float(model.compute_loss(batch))
    both = float(model.compute_loss({POSITIVES: batch, LABELLED_NEGATIVES: negatives}))
    assert both == pytest.approx(plain + 0.5 * bce, rel=1e-5)


def test_labelled_bce_is_the_labelled_term_alone(tf):
    """train.loss=labelled_bce (the seed recipe): no in-batch softmax, only the BCE over the
    positives (label 1) and the labelled pairs (label 0), times labelled_negative_weight; a batch
    without labelled negatives is refused rather than trained on positives alone."""
    from trainer.data import LABELLED_NEGATIVES, POSITIVES

    batch = _batch(tf)
    negatives = _batch(tf, {"query": ["q0"], "item_id": ["x"]})
    softplus = lambda z: math.log1p(math.exp(z))  # noqa: E731
    bce = 2 * softplus(-1) + softplus(1)
    model = _model(tf, labelled_negative_weight=2.0, loss="labelled_bce")
    assert float(model.compute_loss({POSITIVES: batch, LABELLED_NEGATIVES: negatives})) == pytest.approx(2.0 * bce,
                                                                                                       rel=1e-5)
    with pytest.raises(ValueError, match="no labelled negatives"):
        model.compute_loss(batch)
    with pytest.raises(ValueError, match="labelled_negative_weight > 0"):
        _model(tf, loss="labelled_bce")


def test_labelled_bce_config_refuses_softmax_only_options():
    from core.config import load_config

    config = load_config("shop")
    with pytest.raises(ValueError, match="needs train.labelled_negative_weight > 0"):
        config.with_overrides({"train.loss": "labelled_bce"})
    with pytest.raises(ValueError, match="train.hard_negatives: 5 only applies to the in-batch softmax"):
        config.with_overrides({"train.loss": "labelled_bce", "train.labelled_negative_weight": 1.0,
                               "train.hard_negatives": 5})
    ok = config.with_overrides({"train.loss": "labelled_bce", "train.labelled_negative_weight": 1.0})
    assert ok.train.loss == "labelled_bce"


def test_labelled_negatives_push_the_pair_down(tf):
    """Train twice from the same init on the same positives; the run with the labelled
    (q0, e) pair ends with a clearly lower q0 . e (e is never a positive, so the in-batch
    loss never moves e: its score changes only through q0 there)."""
    from trainer.data import with_labelled_negatives
    from trainer.features import IdEncoder
    from trainer.model import TwoTowerModel

    queries, items = ["q0", "q1", "q2", "q3"], ["a", "b", "c", "d", "e"]
    positives = tf.data.Dataset.from_tensor_slices({"query": queries, "item_id": items[:4]}).batch(4)
    negatives = tf.data.Dataset.from_tensor_slices({"query": ["q0"], "item_id": ["e"]}).repeat().batch(1)

    class IdTower(tf.keras.layers.Layer):
        """One free unit vector per id (no shared layers, so e is untouched without the term)."""

        def __init__(self, key, vocab):
            super().__init__()
            self.key, self.encoder = key, IdEncoder(vocab, 4, name=f"{key}_enc")

        def call(self, features, training=False):
            return tf.math.l2_normalize(self.encoder(features[self.key]), axis=1)

    def train(weight):
        tf.keras.utils.set_random_seed(1)
        model = TwoTowerModel(IdTower("query", queries), IdTower("item_id", items), 0.2,
                              labelled_negative_weight=weight)
        model.compile(optimizer=tf.keras.optimizers.SGD(0.05))
        pair = {"query": tf.constant(["q0"]), "item_id": tf.constant(["e"])}
        score = lambda: float(tf.reduce_sum(model.query_tower(pair) * model.item_tower(pair)))  # noqa: E731
        before = score()
        data = with_labelled_negatives(positives, negatives) if weight else positives
        model.fit(data, epochs=20, verbose=0)
        return before, score()

    (start, without), (start_again, with_term) = train(0.0), train(1.0)
    assert start == pytest.approx(start_again)  # same initial weights
    assert with_term < without - 0.1 and with_term < start


def test_no_labelled_negatives_turns_the_term_off(tf, tmp_path, capsys):
    from core.config import FeatureSpec
    from trainer.data import labelled_negatives_dataset

    specs = [FeatureSpec(name="item_id", type="id")]
    empty = tmp_path / "train_negatives-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(empty)):
        pass
    assert labelled_negatives_dataset([str(empty)], specs, 4) is None
    assert labelled_negatives_dataset([], specs, 4) is None
    assert capsys.readouterr().out.count("labelled-negative term is off") == 2


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_model_with_every_negative_option(tmp_path_factory):
    """Sampled + labelled + hard negatives with logQ and a warmup schedule train through
    ``model.fit`` (the sampler runs inside the compiled train step) and export."""
    from core.records import interaction_specs
    from core.towers import Tower
    from tests.support.trainer_data import make_config, write_tfrecord, write_transformed
    from trainer.train import train_model

    root = tmp_path_factory.mktemp("transformed_neg")
    config = make_config(str(root), n_epochs=1, negative_samples_count=8, negative_sampling="popularity",
                         labelled_negative_weight=0.5, hard_negatives=6, logq_correction=True,
                         lr_schedule="warmup_cosine", warmup_steps=3)
    planted = write_transformed(root, config)
    # Labelled negatives: each query paired with an item of another category.
    by_cat = {}
    for it in planted["items"]:
        by_cat.setdefault(it["category"], []).append(it)
    cats = sorted(by_cat)
    rows = [{**{k: r[k] for k in ("query", "segment")}, **by_cat[cats[(cats.index(r["category"]) + 1) % 4]][0]}
            for r in planted["splits"]["train"][::3]]
    write_tfrecord(root / "train_negatives-00000-of-00001.tfrecord", rows, interaction_specs(config.schema))

    out = tmp_path_factory.mktemp("model_neg")
    summary = train_model(config, str(root), str(out))
    assert len(summary["history"]) == 1 and all(np.isfinite(h["loss"]) for h in summary["history"])
    emb = Tower(str(out / "item_tower")).embed({"item_id": ["i00"], "title": ["acme shoes"], "category": ["shoes"],
                                                "tags": [""], "price": [10.0]})
    assert emb.shape == (1, 16)
