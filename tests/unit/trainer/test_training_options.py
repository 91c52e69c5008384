"""Training options: lr schedules, resume after a crash, tf.distribute, determinism.

Uses the planted data of test_trainer (144 train rows, batch 16: 9 steps per epoch) with
small 2-3 epoch runs shared at module scope.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests.support.trainer_data import make_config, write_transformed  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("transformed_opts")
    write_transformed(path, make_config(str(path)))
    return path


def _config(root, **train):
    return make_config(str(root), **{"n_epochs": 2, "deterministic": True, **train})


@pytest.fixture(scope="module")
def twin_runs(root, tmp_path_factory):
    """Two identical deterministic 2-epoch runs in separate folders."""
    from trainer.train import train_model

    outs = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
    summaries = [train_model(_config(root), str(root), str(out)) for out in outs]
    yield {"outs": outs, "summaries": summaries}
    from trainer.strategy import set_determinism

    set_determinism(False)  # op determinism is process-wide: do not leak it into other tests


# --------------------------------------------------------------------------- lr schedules


def test_lr_schedule_values_by_hand():
    from trainer.schedules import make_learning_rate

    assert make_learning_rate("constant", 0.1, None) == 0.1
    cosine = make_learning_rate("cosine", 1.0, 10)
    # 0.5 * (1 + cos(pi * step / 10))
    for step, want in [(0, 1.0), (5, 0.5), (10, 0.0), (20, 0.0), (2, 0.5 * (1 + math.cos(math.pi / 5)))]:
        assert float(cosine(step)) == pytest.approx(want, abs=1e-6)
    warm = make_learning_rate("warmup_cosine", 1.0, 10, warmup_steps=4)
    # linear 0 -> 1 over 4 steps, then cosine over the remaining 6.
    for step, want in [(0, 0.0), (1, 0.25), (2, 0.5), (4, 1.0), (7, 0.5), (10, 0.0)]:
        assert float(warm(step)) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_learning_rate("warmup_cosine", 1.0, 10, warmup_steps=10)
    with pytest.raises(ValueError, match="lr_schedule"):
        make_learning_rate("cosine", 1.0, None)


def test_optimizer_follows_the_schedule(root):
    from trainer.optimizers import make_optimizer

    opt = make_optimizer(_config(root, lr=0.5, lr_schedule="cosine", optimizer="adamw", weight_decay=0.01), 100)
    lr = opt.get_config()["learning_rate"]  # the schedule, serialised
    assert lr["class_name"] == "CosineDecay"
    assert lr["config"]["initial_learning_rate"] == 0.5 and lr["config"]["decay_steps"] == 100
    assert float(make_optimizer(_config(root, lr=0.5, optimizer="adagrad"), 100).learning_rate) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["adam", "adamw", "adagrad"])
def test_weight_decay_is_decoupled_decay_for_every_optimizer(root, name):
    """train.weight_decay acts whatever train.optimizer is: with zero gradients (so the update
    rule itself moves nothing) each step scales every weight by (1 - lr * weight_decay), through
    make_optimizer's compiled update path, rows a sparse gradient did not touch included."""
    import tensorflow as tf

    from trainer.optimizers import make_optimizer

    lr, wd, steps = 0.1, 0.5, 3
    rng = np.random.default_rng(1)
    init = [rng.normal(size=s).astype(np.float32) for s in [(20, 4), (4, 3), (3,)]]

    def run(weight_decay: float):
        variables = [tf.Variable(v) for v in init]
        optimizer = make_optimizer(_config(root, optimizer=name, lr=lr, weight_decay=weight_decay), 100)

        @tf.function
        def step():
            grads = [tf.IndexedSlices(tf.zeros([2, 4]), tf.constant([1, 5]), tf.constant([20, 4])),
                     tf.zeros([4, 3]), tf.zeros([3])]
            optimizer.apply_gradients(zip(grads, variables))

        for _ in range(steps):
            step()
        return [v.numpy() for v in variables]

    factor = (1.0 - lr * wd) ** steps  # 0.95 ** 3
    for got, start in zip(run(wd), init):
        np.testing.assert_allclose(got, start * factor, rtol=1e-5, atol=1e-7)
    for got, start in zip(run(0.0), init):  # off: zero gradients leave every weight as it was
        np.testing.assert_allclose(got, start, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly(twin_runs):
    a, b = twin_runs["summaries"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert [h["val_recall_at_10"] for h in a["history"]] == [h["val_recall_at_10"] for h in b["history"]]


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_rerun_with_more_epochs_runs_only_the_new_ones(twin_runs, root, capsys):
    from trainer.train import train_model

    out = twin_runs["outs"][1]
    first = twin_runs["summaries"][1]
    capsys.readouterr()
    summary = train_model(_config(root, n_epochs=3), str(root), str(out))
    log = capsys.readouterr().out
    assert "2 epoch(s) done" in log
    assert "epoch 3/3" in log and "epoch 1/3" not in log and "epoch 2/3" not in log
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["history"][:2] == first["history"]  # carried over, not retrained
    assert json.loads((out / "training.json").read_text()) == summary


@pytest.mark.slow
def test_crash_then_rerun_resumes_and_mirrored_strategy_exports(root, twin_runs, tmp_path, monkeypatch, capsys):
    """A run crashes in epoch 2 (after epoch 1's checkpoint); the rerun resumes at epoch 2.

    The rerun uses ``distribute: mirrored`` on the CPU (checkpoints do not depend on the
    strategy, e.g. a restarted job on a machine with more devices), which also checks
    that training and export work under MirroredStrategy with one run instead of two.
    """
    import core.metrics
    from core.towers import Tower
    from trainer.train import train_model

    real = core.metrics.embedding_retrieval_metrics
    calls = {"n": 0}

    def crash_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.metrics, "embedding_retrieval_metrics", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_model(_config(root), str(root), str(tmp_path))
    monkeypatch.undo()
    assert not (tmp_path / "training.json").exists()
    assert (tmp_path / "checkpoints" / "checkpoint").exists()

    capsys.readouterr()
    summary = train_model(_config(root, distribute="mirrored", device="cpu"), str(root), str(tmp_path))
    log = capsys.readouterr().out
    assert "1 epoch(s) done" in log and "epoch 1/2" not in log and "epoch 2/2" in log
    assert [h["epoch"] for h in summary["history"]] == [1, 2] and np.isfinite(summary["history"][1]["loss"])
    # Epoch 1 is the crashed run's, which (deterministic, same seed) equals the twin runs' epoch 1.
    assert summary["history"][0] == {**twin_runs["summaries"][0]["history"][0],
                                     "seconds": summary["history"][0]["seconds"],
                                     "cpu_seconds": summary["history"][0]["cpu_seconds"]}
    assert summary["history"][0]["cpu_seconds"] > 0  # restored from the checkpoint's loop state
    emb = Tower(str(tmp_path / "query_tower")).embed({"query": ["red shoes"], "segment": ["web"]})
    assert emb.shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_fit_loop_continues_from_a_loop_state():
    from trainer.epochs import EarlyStopping, EpochResult, LoopState, fit_with_early_stopping

    trained = []
    saved = []
    state = LoopState(EarlyStopping(1, best_value=0.5, best_epoch=1, bad_epochs=0),
                      [EpochResult(1, 1.0, 0.5, 1.0)], best_weights={"w": 1})
    weights = {"w": 1}
    history, best = fit_with_early_stopping(
        3, 1, lambda e: trained.append(e) or 1.0, validate=lambda e: 0.1, snapshot=lambda: dict(weights),
        restore=weights.update, state=state, save_state=lambda s, improved: saved.append((len(s.history), improved)))
    assert trained == [2, 3] and [h.epoch for h in history] == [1, 2, 3]
    assert saved == [(2, False), (3, False)] and best == 1
    # Two bad epochs > patience 1: stopped, and a later call trains nothing more.
    assert state.stopped
    fit_with_early_stopping(5, 1, lambda e: trained.append(e) or 1.0, lambda e: 0.1, lambda: {}, weights.update,
                            state=state)
    assert trained == [2, 3]


# --------------------------------------------------------------------------- distribute


def test_multi_worker_without_tf_config_names_the_setting(monkeypatch):
    from trainer.strategy import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="train.distribute"):
        make_strategy("multi_worker")


# --------------------------------------------------------------------------- compiled optimizer updates


@pytest.mark.parametrize("name", ["adam", "adamw", "adagrad"])
def test_compiled_updates_equal_tf_keras_updates(root, name):
    """make_optimizer's fused updates (Adam / AdamW: TF's fused kernel per variable; Adagrad:
    one XLA call for all fixed-shape gradients; small embedding gradients densified) give
    tf_keras's own unfused updates, and a table above DENSIFY_MAX_ELEMENTS keeps the sparse
    update."""
    import tensorflow as tf

    import trainer.optimizers
    from trainer.optimizers import make_optimizer

    # tf_keras's own sparse rule for the large table (row-wise updates: the tests below).
    config = _config(root, optimizer=name, lr=0.05, weight_decay=0.01, row_wise_updates=False)
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype(np.float32) for s in [(20, 4), (4, 3), (3,), (30, 4)]]
    x_init = rng.normal(size=(6, 4)).astype(np.float32)

    def run(compiled: bool, densify_max: int):
        old = trainer.optimizers.DENSIFY_MAX_ELEMENTS
        trainer.optimizers.DENSIFY_MAX_ELEMENTS = densify_max
        try:
            variables = [tf.Variable(v) for v in init]
            optimizer = make_optimizer(config, 100)
            optimizer.jit_compile = compiled
            x = tf.constant(x_init)

            @tf.function(reduce_retracing=True)
            def step(ids_a, ids_b):
                with tf.GradientTape() as tape:
                    h = tf.gather(variables[0], ids_a) + x  # sparse gradient (IndexedSlices)
                    out = tf.matmul(h, variables[1]) + variables[2]
                    loss = tf.reduce_sum(out ** 2) + tf.reduce_sum(tf.gather(variables[3], ids_b) ** 2)
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

            for k in range(4):  # repeated ids (deduplicated by tf_keras) and a changing number of rows
                step(tf.constant([k, 1, 1, 5, 7, k + 2]), tf.constant(list(range(k + 1)) + [3]))
            return [v.numpy() for v in variables]
        finally:
            trainer.optimizers.DENSIFY_MAX_ELEMENTS = old

    if not make_optimizer(config, 100).jit_compile:
        pytest.skip("XLA is not usable on this platform")
    want = run(False, 1 << 20)
    for densify_max in (1 << 20, 100):  # 100: the 30 x 4 table (120 elements) stays sparse
        for got, expected in zip(run(True, densify_max), want):
            # float32 rounding only: tf_keras's sparse branch computes m - m(1 - b1) + g(1 - b1), the
            # fused kernel m + (g - m)(1 - b1). A wrong rule (step, bias correction, epsilon) moves
            # values by a share of one update, lr = 0.05, far above this tolerance.
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- row-wise table updates


def _lazy_adam_by_hand(table, steps, lr, wd, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """LazyAdam + decoupled decay in numpy: each step's rows (distinct, with their summed
    gradient rows) decay by (1 - lr wd) and take Adam's rule with the global step's bias
    correction; every other row, and its moments, stay as they are."""
    table = table.astype(np.float64).copy()
    m, v = np.zeros_like(table), np.zeros_like(table)
    for t, (rows, grads) in enumerate(steps, start=1):
        table[rows] *= 1.0 - lr * wd
        m[rows] = beta_1 * m[rows] + (1 - beta_1) * grads
        v[rows] = beta_2 * v[rows] + (1 - beta_2) * grads ** 2
        alpha = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        table[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + epsilon)
    return table


def _train_table(root, name, row_wise, ids_per_step, weight_decay=0.01, lr=0.05, densify_max=10):
    """A 40 x 4 embedding table (above ``densify_max`` elements) trained with loss
    sum(gather(table, ids) * w) for each step's ids; returns (final table, per-step (distinct
    rows, summed gradient rows))."""
    import tensorflow as tf

    import trainer.optimizers
    from trainer.optimizers import make_optimizer

    rng = np.random.default_rng(2)
    init = rng.normal(size=(40, 4)).astype(np.float32)
    weights = rng.normal(size=(6, 4)).astype(np.float32)
    old = trainer.optimizers.DENSIFY_MAX_ELEMENTS
    trainer.optimizers.DENSIFY_MAX_ELEMENTS = densify_max
    try:
        table = tf.Variable(init)
        optimizer = make_optimizer(_config(root, optimizer=name, lr=lr, weight_decay=weight_decay,
                                           row_wise_updates=row_wise), 100)

        @tf.function(reduce_retracing=True)
        def step(ids, w):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(table, ids) * w)
            optimizer.apply_gradients([(tape.gradient(loss, table), table)])

        hand = []
        for ids in ids_per_step:
            w = weights[: len(ids)]
            step(tf.constant(ids), tf.constant(w))
            rows = sorted(set(ids))
            hand.append((rows, np.stack([w[[i for i, x in enumerate(ids) if x == r]].sum(0) for r in rows])))
        return init, table.numpy(), hand
    finally:
        trainer.optimizers.DENSIFY_MAX_ELEMENTS = old


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_row_wise_adam_is_lazy_adam_by_hand(root, name):
    """A table above DENSIFY_MAX_ELEMENTS with a sparse gradient: only the looked-up rows change
    (weight decay included), by LazyAdam's rule computed by hand, repeated ids summed; rows 30+ are
    never looked up and keep their initial values exactly."""
    ids_per_step = [[1, 1, 3], [5, 3, 7, 7, 7], [1], [2, 3, 5, 1, 29, 0]]
    init, got, hand = _train_table(root, name, True, ids_per_step)
    want = _lazy_adam_by_hand(init, hand, lr=0.05, wd=0.01)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[30:], init[30:])
    assert not np.allclose(got[[0, 1, 2, 3, 5, 7, 29]], init[[0, 1, 2, 3, 5, 7, 29]])


def test_row_wise_updates_differ_from_dense_rule_only_on_rows_that_sat_out(root):
    """Against tf_keras's rule (every row's moments decay and every row is decayed each step):
    identical after one step on the touched rows, different once a row skips a step (its
    momentum keeps moving it under tf_keras, not under the row-wise rule)."""
    one_step = [[4, 9, 9]]
    _, lazy, _ = _train_table(root, "adam", True, one_step, weight_decay=0.0)
    init, dense, _ = _train_table(root, "adam", False, one_step, weight_decay=0.0)
    np.testing.assert_allclose(lazy, dense, rtol=1e-5, atol=1e-6)  # float32 rounding of the two forms
    two_steps = [[4, 9, 9], [11]]
    _, lazy, _ = _train_table(root, "adam", True, two_steps, weight_decay=0.0)
    _, dense, _ = _train_table(root, "adam", False, two_steps, weight_decay=0.0)
    np.testing.assert_allclose(lazy[11], dense[11], rtol=1e-5, atol=1e-6)  # m, v were 0 on both
    assert np.abs(dense[[4, 9]] - lazy[[4, 9]]).max() > 1e-3  # momentum moved them under tf_keras only


def test_row_wise_adagrad_decays_only_looked_up_rows(root):
    """Adagrad's sparse rule is already row-wise; its weight decay now is too: an untouched row
    keeps its value (tf_keras would scale it by 1 - lr wd every step), a touched row gets tf_keras's
    decay-then-update."""
    ids_per_step = [[1, 1, 3], [3, 6]]
    init, lazy, _ = _train_table(root, "adagrad", True, ids_per_step, weight_decay=0.5)
    _, dense, _ = _train_table(root, "adagrad", False, ids_per_step, weight_decay=0.5)
    np.testing.assert_array_equal(lazy[[0, 2, 4, 5]], init[[0, 2, 4, 5]])
    np.testing.assert_allclose(dense[0], init[0] * (1 - 0.05 * 0.5) ** 2, rtol=1e-6)
    np.testing.assert_allclose(lazy[3], dense[3], rtol=1e-5, atol=1e-6)  # looked up in every step
    # Rows 1 and 6 sat out one step, so tf_keras decayed them once more (by 1 - lr wd = 0.975):
    # row 1 after its update, row 6 before it (Adagrad's step does not depend on the weight).
    np.testing.assert_allclose(dense[1], lazy[1] * 0.975, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy[6] - dense[6], init[6] * 0.975 * 0.025, rtol=1e-4, atol=1e-6)


def test_threads_size_the_pools_of_a_fresh_process_and_are_kept_once_started():
    """train.threads sizes TensorFlow's thread pools, and oneDNN's OMP_NUM_THREADS, when it runs
    first (a training process); once TensorFlow's runtime has started, the pools keep their size
    and a note says so, and OMP_NUM_THREADS is left unset (it would only reach child processes)."""
    import subprocess
    import sys

    script = (
        "import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "from trainer.strategy import set_threads, tf\n"
        "set_threads(1)\n"
        "print('POOLS', tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads(), 'OMP', os.environ.get('OMP_NUM_THREADS'))\n"
        "tf.constant(1.0) + 1.0  # starts the runtime\n"
        "set_threads(2)\n"
        "print('AFTER', tf.config.threading.get_intra_op_parallelism_threads())\n")
    late = ("import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
            "from trainer.strategy import set_threads, tf\n"
            "tf.constant(1.0) + 1.0\n"
            "set_threads(1)\n"
            "print('LATE OMP', os.environ.get('OMP_NUM_THREADS'))\n")
    root = __file__.rsplit("/tests/", 1)[0]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                                             "TF_NUM_INTEROP_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "POOLS 1 1 OMP 1" in out.stdout
    assert "AFTER 1" in out.stdout and "train.threads=2" in out.stdout and "keeping them" in out.stdout
    out = subprocess.run([sys.executable, "-c", late], cwd=root, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "LATE OMP None" in out.stdout, out.stderr[-2000:]


def test_the_tf_keras_internals_patch_applies_only_to_the_verified_release(tmp_path, monkeypatch, capsys):
    """Another tf_keras line gets tf_keras's own optimizer (the fused one reaches into its
    internals); the verified line, installed here, gets the fused updates."""
    import trainer.optimizers as optimizers

    assert optimizers.internals_supported()  # the pinned tf_keras
    assert not optimizers.internals_supported("2.21.0") and not optimizers.internals_supported("3.0.0")
    config = _config(tmp_path, lr=0.5, optimizer="adam")
    assert isinstance(optimizers.make_optimizer(config, 10), optimizers._CompiledUpdates)
    monkeypatch.setattr(optimizers, "_tf_keras_version", lambda: "2.99.0")
    plain = optimizers.make_optimizer(config, 10)
    assert not isinstance(plain, optimizers._CompiledUpdates) and type(plain) is optimizers._PLAIN["adam"]
    assert float(plain.learning_rate) == pytest.approx(0.5)
    assert "not the verified" in capsys.readouterr().out
