"""trainer: encoders, training with early stopping, export contract, evaluation.

Tiny planted data (hand-checkable): 4 product categories x 12 items; every query is
"<adjective> <category>" and only ever buys items of its category, so a model that
reads the query text must rank its category first, while popularity cannot.
Towers are trained once per module (two small runs, a few seconds each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.records import interaction_specs
from tests.conftest import REPO
from tests.support.trainer_data import ADJECTIVES, CATEGORIES, make_config, write_tfrecord, write_transformed

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformed")
    config = make_config(str(root))
    planted = write_transformed(root, config)
    return {"root": root, "config": config, **planted}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    from trainer.train import train_model

    out = tmp_path_factory.mktemp("model")
    summary = train_model(data["config"], str(data["root"]), str(out))
    return {"out": out, "summary": summary}


@pytest.fixture(scope="module")
def evaluated(data, trained, tmp_path_factory):
    from evaluation.evaluate import evaluate_model

    out = tmp_path_factory.mktemp("eval")
    return {"out": out, "metrics": evaluate_model(data["config"], str(data["root"]), str(trained["out"]),
                                                  str(out))}


@pytest.fixture(scope="module")
def early_stopped(data, tmp_path_factory):
    """Content-only towers (no item ids), bigrams, adamw, dropout; patience 0."""
    from trainer.train import train_model

    config = make_config(str(data["root"]), patience=0, n_epochs=25, use_item_ids_as_features=False,
                         text_hash_buckets=64, optimizer="adamw", weight_decay=0.01, dropout=0.1)
    out = tmp_path_factory.mktemp("model_es")
    return {"out": out, "config": config, "summary": train_model(config, str(data["root"]), str(out))}


def _tower(path):
    from core.towers import Tower

    return Tower(str(path))


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_json_has_contract_keys(trained, data):
    summary = json.loads((trained["out"] / "training.json").read_text())
    assert summary == trained["summary"]
    assert {"history", "best_epoch", "examples_per_second", "cpu_examples_per_second", "n_train"} <= set(summary)
    assert summary["n_train"] == len(data["splits"]["train"])
    assert summary["examples_per_second"] > 0 and summary["cpu_examples_per_second"] > 0
    for i, epoch in enumerate(summary["history"], start=1):
        assert set(epoch) == {"epoch", "loss", "val_recall_at_10", "seconds", "cpu_seconds"}
        assert epoch["epoch"] == i and np.isfinite(epoch["loss"])
        assert epoch["seconds"] > 0 and epoch["cpu_seconds"] > 0
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    assert list((trained["out"] / "tensorboard").iterdir()), "no TensorBoard events written"


@pytest.mark.slow
def test_model_learns_planted_structure_and_beats_popularity(evaluated, data):
    m = evaluated["metrics"]
    saved = json.loads((evaluated["out"] / "metrics.json").read_text())
    assert saved == m
    assert m["n_queries"] == len(CATEGORIES) * len(ADJECTIVES)
    for key in ("recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10"):
        assert key in m and key in m["popularity"]
    # 12 items per category minus <= 4 masked: the category fits in the top 10.
    assert m["recall_at_10"] >= 0.9
    assert m["recall_at_10"] > m["popularity"]["recall_at_10"] + 0.4
    assert m["recall_at_100"] == pytest.approx(1.0)  # K > N: everything unmasked is retrieved
    assert m["popularity"]["recall_at_100"] == pytest.approx(1.0)


@pytest.mark.slow
def test_early_stopping_stops_and_restores_best(early_stopped, data):
    s = early_stopped["summary"]
    recalls = [h["val_recall_at_10"] for h in s["history"]]
    assert len(recalls) < 25, "patience 0 should stop once validation recall stops improving"
    best = s["best_epoch"]
    assert best == len(recalls) - 1  # patience 0: stop one epoch after the best
    assert recalls[best - 1] == max(recalls) and recalls[best - 1] > recalls[-1] - 1e-12
    assert recalls.index(max(recalls)) == best - 1  # first time the max was reached
    # The exported towers are the best epoch's: recomputing validation recall from the
    # SavedModels reproduces the best value, not the last one.
    from trainer.evalset import load_catalog, load_queries
    from evaluation.evaluate import _embed
    from core.metrics import embedding_retrieval_metrics

    config, root = early_stopped["config"], str(data["root"])
    catalog = load_catalog(config, root)
    valid = load_queries(config, root, "valid", ("train",), catalog)
    q = _embed(_tower(early_stopped["out"] / "query_tower"), valid.features)
    i = _embed(_tower(early_stopped["out"] / "item_tower"), catalog.features)
    got = embedding_retrieval_metrics(q, i, valid.relevant, valid.masked, ks=(10,))["recall_at_10"]
    assert got == pytest.approx(recalls[best - 1], abs=1e-9)


def test_training_reads_each_vocabulary_once(data, tmp_path, monkeypatch):
    """Encoders, logQ and the negative sampler all need the item-id vocabulary: one handle on
    the transform's folder reads it (and every other vocabulary) from disk once."""
    from trainer import artifacts
    from trainer.train import train_model

    reads = []
    real = artifacts._read_vocab_file
    monkeypatch.setattr(artifacts, "_read_vocab_file", lambda path, feature: reads.append(feature) or real(path, feature))
    config = make_config(str(data["root"]), n_epochs=1, logq_correction=True, negative_samples_count=4)
    train_model(config, str(data["root"]), str(tmp_path))
    assert "item_id" in reads and len(reads) == len(set(reads)), reads


def test_fit_loop_restores_best_weights_with_fakes():
    from trainer.epochs import fit_with_early_stopping

    state = {"w": 0}
    scripted = {1: 0.1, 2: 0.5, 3: 0.3, 4: 0.5, 5: 0.9}

    def train_epoch(epoch):
        state["w"] = epoch  # the "weights" after an epoch are its number
        return 1.0 / epoch

    history, best = fit_with_early_stopping(
        10, 1, train_epoch, validate=lambda e: scripted[e], snapshot=lambda: dict(state),
        restore=lambda w: state.update(w))
    # 0.5 at epoch 4 is not a strict improvement over epoch 2: two bad epochs > patience 1.
    assert [h.epoch for h in history] == [1, 2, 3, 4] and best == 2 and state["w"] == 2

    history, best = fit_with_early_stopping(3, 0, train_epoch, validate=lambda e: None,
                                            snapshot=lambda: dict(state), restore=lambda w: state.update(w))
    assert len(history) == 3 and best == 3 and state["w"] == 3  # no validation: keep the last


def test_fit_loop_keeps_the_starting_weights_when_no_epoch_beats_them():
    """A warm start's own metric (start_value) makes its weights "epoch 0": kept (and restored)
    when every epoch scores lower, replaced by the first epoch that scores higher."""
    from trainer.epochs import fit_with_early_stopping

    state = {"w": "start"}

    def train_epoch(epoch):
        state["w"] = epoch
        return 1.0

    history, best = fit_with_early_stopping(
        2, 3, train_epoch, validate={1: 0.30, 2: 0.35}.get, snapshot=lambda: dict(state),
        restore=lambda w: state.update(w), start_value=0.40)
    assert len(history) == 2 and best == 0 and state["w"] == "start"
    state["w"] = "start"
    history, best = fit_with_early_stopping(
        2, 3, train_epoch, validate={1: 0.30, 2: 0.45}.get, snapshot=lambda: dict(state),
        restore=lambda w: state.update(w), start_value=0.40)
    assert best == 2 and state["w"] == 2


@pytest.mark.slow
def test_gpu_requested_without_gpu_is_a_clear_error(data, tmp_path):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    from trainer.train import train_model

    config = make_config(str(data["root"]), device="gpu", n_epochs=1)
    with pytest.raises(RuntimeError, match="train.device"):
        train_model(config, str(data["root"]), str(tmp_path))


# --------------------------------------------------------------------------- export


@pytest.mark.slow
def test_query_tower_reloads_identically_in_a_fresh_process(trained):
    path = trained["out"] / "query_tower"
    feats = {"query": ["red shoes", "Nike RUNNING shoes!!", ""], "segment": ["web", "app", "tv"]}
    here = _tower(path).embed(feats)
    script = ("import json, sys; from core.towers import Tower; "
              "e = Tower(sys.argv[1]).embed(json.loads(sys.argv[2])); print(json.dumps(e.tolist()))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script, str(path), json.dumps(feats)], capture_output=True,
                          text=True, check=True, env=env, cwd=str(REPO))
    there = np.array(json.loads(proc.stdout.strip().splitlines()[-1]), dtype=np.float32)
    assert here.shape == (3, 16) and here.dtype == np.float32
    np.testing.assert_allclose(here, there, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(here, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_raw_text_embeds_like_normalised_text(trained, early_stopped):
    for out in (trained["out"], early_stopped["out"]):  # unigrams only / with hashed bigrams
        tower = _tower(out / "query_tower")
        raw = tower.embed({"query": ["Nike RUNNING shoes!!", "  RED---Shoes "], "segment": ["web", "web"]})
        norm = tower.embed({"query": ["nike running shoes", "red shoes"], "segment": ["web", "web"]})
        np.testing.assert_allclose(raw, norm, atol=1e-6)


@pytest.mark.slow
def test_query_tower_separates_categories(trained):
    tower = _tower(trained["out"] / "query_tower")
    emb = tower.embed({"query": [f"{a} {c}" for c in CATEGORIES for a in ("red", "cheap")],
                       "segment": ["web"] * 8})
    sims = emb @ emb.T
    same = [sims[2 * c, 2 * c + 1] for c in range(4)]
    other = [sims[2 * c, 2 * d] for c in range(4) for d in range(4) if c != d]
    assert min(same) > max(other)


@pytest.mark.slow
def test_item_tower_signature_accepts_item_id_and_content(trained, early_stopped):
    expected = sorted(["item_id", "title", "category", "tags", "price"])
    for out in (trained["out"], early_stopped["out"]):  # with and without item-id embeddings
        tower = _tower(out / "item_tower")
        assert tower.input_names == expected
        assert tower.input_dtypes["price"].name == "float32" and tower.input_dtypes["item_id"].name == "string"
        emb = tower.embed({"item_id": ["i00", "i01"], "title": ["acme shoes model 0", "zenith shoes"],
                           "category": ["shoes", "shoes"], "tags": ["sale|new", ""], "price": [10.0, 11.0]})
        assert emb.shape == (2, 16)
    q = _tower(trained["out"] / "query_tower").input_names
    assert q == ["query", "segment"]


@pytest.mark.slow
def test_unknown_values_map_to_oov_without_error(trained):
    item = _tower(trained["out"] / "item_tower")
    emb = item.embed({"item_id": ["never-seen", "i00"], "title": ["", "Totally UNKNOWN words"],
                      "category": ["unknown-category", ""], "tags": ["nope|", "||"], "price": [1e6, -3.0]})
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    query = _tower(trained["out"] / "query_tower")
    emb = query.embed({"query": ["zzz qqq", ""], "segment": ["unseen", ""]})
    assert np.isfinite(emb).all()


# --------------------------------------------------------------------------- encoders


def test_encoders_pool_and_scale_as_documented():
    import tensorflow as tf

    from trainer.features import IdEncoder, MultiCategoricalEncoder, NumericEncoder, TextEncoder

    text = TextEncoder(["nike", "running", "shoes"], 4, max_tokens=2, name="t")
    out = text(tf.constant(["Nike RUNNING shoes!!", "nike running", "", "!!!"])).numpy()
    table = text.embedding.embeddings.numpy()  # row 0 = OOV, then the vocabulary
    np.testing.assert_allclose(out[0], (table[1] + table[2]) / 2, atol=1e-6)  # truncated to 2 tokens
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_array_equal(out[2:], 0.0)  # no tokens -> zeros, not NaN

    multi = MultiCategoricalEncoder(["a", "b"], 3, name="m")
    out = multi(tf.constant(["a|b", "", "b||zz"])).numpy()
    table = multi.embedding.embeddings.numpy()
    np.testing.assert_allclose(out[0], (table[1] + table[2]) / 2, atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(out[2], (table[2] + table[0]) / 2, atol=1e-6)  # zz -> OOV row

    empty = IdEncoder([], 3, name="e")  # an all-missing column yields an empty vocabulary file
    assert empty(tf.constant(["x", ""])).shape == (2, 3)

    num = NumericEncoder(10.0, 2.0, name="n")
    np.testing.assert_allclose(num(tf.constant([10.0, 14.0])).numpy(), [[0.0], [2.0]])


def test_dataset_batches_and_parses(data):
    from trainer import artifacts
    from trainer.data import count_records, make_dataset

    files = artifacts.require_split_files(str(data["root"]), "train")
    assert count_records(files) == len(data["splits"]["train"])
    specs = interaction_specs(data["config"].schema)
    batches = list(make_dataset(files, specs, 50, shuffle=True, seed=1))
    assert [len(b["item_id"]) for b in batches] == [50, 50, 44]
    assert batches[0]["price"].dtype.name == "float32" and batches[0]["query"].dtype.name == "string"
    again = list(make_dataset(files, specs, 50, shuffle=True, seed=1))
    assert (batches[0]["item_id"].numpy() == again[0]["item_id"].numpy()).all()  # seeded


def test_in_memory_examples_serve_each_row_once_per_epoch_in_a_seeded_order(data):
    from trainer import artifacts
    from trainer.data import InMemoryExamples

    files = artifacts.require_split_files(str(data["root"]), "train")
    specs = interaction_specs(data["config"].schema)
    examples = InMemoryExamples.from_files(files, specs)
    rows = data["splits"]["train"]
    assert examples.size == len(rows)
    assert examples.columns["price"].dtype.name == "float32" and examples.columns["query"].dtype.name == "string"

    def epoch(seed, n):
        batches = list(examples.epoch_dataset(50, seed=seed, epoch=n))
        assert [len(b["item_id"]) for b in batches] == [50, 50, 44]
        return [(q.decode(), i.decode(), float(p)) for b in batches
                for q, i, p in zip(b["query"].numpy(), b["item_id"].numpy(), b["price"].numpy())]

    first = epoch(1, 1)
    # Every row exactly once, with its columns kept together.
    assert sorted(first) == sorted((r["query"], r["item_id"], float(np.float32(r["price"]))) for r in rows)
    assert epoch(1, 1) == first  # fixed by (seed, epoch): a resumed run sees the same batches
    assert epoch(1, 2) != first and epoch(2, 1) != first
    unshuffled = [i.decode() for b in examples.epoch_dataset(64, shuffle=False) for i in b["item_id"].numpy()]
    assert unshuffled == [r["item_id"] for r in rows]  # file order


def test_streamed_examples_serve_each_row_once_per_epoch_in_shuffled_blocks(data, tmp_path):
    """Blocks of 30 rows (rounded up to a multiple of the batch) over two files: every row
    exactly once per epoch with its columns together, full batches but the last, order fixed by
    (seed, epoch), prepare applied per block, and a block mixes the rows of both files."""
    from trainer.data import StreamedExamples

    specs = interaction_specs(data["config"].schema)
    rows = data["splits"]["train"]
    half = len(rows) // 2
    files = [tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"]
    write_tfrecord(files[0], rows[:half], specs)
    write_tfrecord(files[1], rows[half:], specs)
    examples = StreamedExamples([str(f) for f in files], specs, block_rows=30)

    def epoch(source, seed, n):
        batches = list(source.epoch_dataset(20, seed=seed, epoch=n))
        sizes = [len(b["item_id"]) for b in batches]
        assert sizes[:-1] == [20] * (len(sizes) - 1) and sum(sizes) == len(rows)
        return [(q.decode(), i.decode(), float(p)) for b in batches
                for q, i, p in zip(b["query"].numpy(), b["item_id"].numpy(), b["price"].numpy())]

    first = epoch(examples, 1, 1)
    assert sorted(first) == sorted((r["query"], r["item_id"], float(np.float32(r["price"]))) for r in rows)
    assert epoch(examples, 1, 1) == first  # fixed by (seed, epoch)
    assert epoch(examples, 1, 2) != first and epoch(examples, 2, 1) != first
    # The first block (40 rows: 30 rounded up to 2 batches) holds rows of both files.
    from_first_file = {(r["query"], r["item_id"]) for r in rows[:half]}
    in_block = [(q, i) in from_first_file for q, i, _ in first[:40]]
    assert any(in_block) and not all(in_block)

    prepared = examples.with_prepare(lambda block: {**block, "price": block["price"] * 0 + 7.0})
    assert {p for _, _, p in epoch(prepared, 1, 1)} == {7.0}

    # Cached: parsed (and prepared) once; epochs then read the cache, not the TFRecords.
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = StreamedExamples([str(f) for f in files], specs, block_rows=30, cache_dir=str(cache)).with_prepare(
        lambda block: {**block, "price": block["price"] + 1.0})
    cached.fill_cache(20)
    assert any(cache.iterdir())
    for f in files:
        f.unlink()
    again = epoch(cached, 1, 1)
    assert sorted(again) == sorted((r["query"], r["item_id"], float(np.float32(r["price"]) + 1)) for r in rows)
    assert epoch(cached, 1, 1) == again and epoch(cached, 1, 2) != again


@pytest.mark.slow
def test_streamed_split_takes_the_prepared_input_and_learns(data, trained, tmp_path):
    """train.in_memory_max_mb=0 streams the split from its TFRecords; its categorical ids are
    looked up in the tf.data pipeline (step_input looked_up) and it learns the planted structure
    as the in-memory run does (best validation recall@10 within 0.1 of it)."""
    from trainer.train import train_model

    summary = train_model(make_config(str(data["root"]), in_memory_max_mb=0), str(data["root"]), str(tmp_path))
    assert summary["input"] == "streamed" and summary["step_input"] == "looked_up"
    assert trained["summary"]["input"] == "in_memory" and trained["summary"]["step_input"] == "looked_up"
    assert not summary["compiled_step"] and "string ops" in summary["compiled_step_why_not"]  # text features
    assert summary["best_val_recall_at_10"] >= trained["summary"]["best_val_recall_at_10"] - 0.1


def _flat(chunks):
    """``epoch_chunks`` items -> the batches they hold, as lists of item ids, and the kinds."""
    from trainer.data import BATCH, STEPS

    batches, kinds = [], []
    for kind, columns in chunks:
        kinds.append(kind)
        ids = columns["item_id"].numpy()
        assert kind in (STEPS, BATCH) and ids.ndim == (2 if kind == STEPS else 1)
        batches.extend([list(row) for row in ids] if kind == STEPS else [list(ids)])
    return batches, kinds


def test_epoch_chunks_hold_the_epoch_datasets_batches_in_order(data, tmp_path):
    """In memory and streamed: the chunks, unstacked, are exactly ``epoch_dataset``'s batches
    (same rows, same order, the short last batch as a BATCH), for the same (seed, epoch)."""
    import trainer.data as td
    from trainer import artifacts

    specs = interaction_specs(data["config"].schema)
    files = artifacts.require_split_files(str(data["root"]), "train")
    memory = td.InMemoryExamples.from_files(files, specs)
    streamed = td.StreamedExamples(files, specs, block_rows=30)
    old = td.GATHER_BATCHES
    td.GATHER_BATCHES = 2  # 144 rows / batch 20 = 7 full batches: chunks of 2, 2, 2, 1 + a short one
    try:
        for source in (memory, streamed):
            want = [list(b["item_id"].numpy()) for b in source.epoch_dataset(20, seed=4, epoch=3)]
            got, kinds = _flat(source.epoch_chunks(20, seed=4, epoch=3))
            assert got == want and kinds[-1] == td.BATCH and len(got[-1]) == 144 % 20
        assert _flat(memory.epoch_chunks(20, seed=4, epoch=3))[1] == [td.STEPS] * 4 + [td.BATCH]
        assert _flat(memory.epoch_chunks(20, seed=4, epoch=3))[0] != _flat(memory.epoch_chunks(20, seed=4, epoch=4))[0]
    finally:
        td.GATHER_BATCHES = old


@pytest.mark.slow
def test_chunked_loop_trains_as_keras_fit_does(data, tmp_path, monkeypatch):
    """The same config trained by trainer/loop.py's chunks and by model.fit (the loop switched
    off) from the same seed: the same per-epoch losses and validation recall, and the exported
    query towers embed alike."""
    import trainer.loop
    from trainer.train import train_model

    config = make_config(str(data["root"]), n_epochs=3, patience=3, deterministic=True)
    chunked = train_model(config, str(data["root"]), str(tmp_path / "chunked"))
    monkeypatch.setattr(trainer.loop, "ChunkedTrainLoop", lambda model: None)
    fitted = train_model(config, str(data["root"]), str(tmp_path / "fit"))
    assert chunked["train_loop"] == "chunked" and fitted["train_loop"] == "keras_fit"
    for a, b in zip(chunked["history"], fitted["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_recall_at_10"] == pytest.approx(b["val_recall_at_10"], abs=1e-6)
    queries = {"query": np.array(["red shoes", "cheap hats", "pro bags"]), "segment": np.array(["a", "b", "a"])}
    np.testing.assert_allclose(_tower(tmp_path / "chunked" / "query_tower").embed(queries),
                               _tower(tmp_path / "fit" / "query_tower").embed(queries), atol=1e-4)


def test_unit_rows_is_l2_normalize_with_its_gradient():
    """trainer.features.unit_rows: tf.math.l2_normalize(axis=1)'s values and gradient, a zero row included."""
    from trainer.features import unit_rows
    from trainer.tfenv import import_tf

    tf = import_tf()

    rng = np.random.default_rng(0)
    x = tf.constant(np.vstack([rng.normal(size=(5, 4)), np.zeros((1, 4))]).astype("float32"))
    weights = tf.constant(rng.normal(size=(6, 4)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = unit_rows(x), tf.math.l2_normalize(x, axis=1)
        ours_loss, theirs_loss = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-7)
    np.testing.assert_allclose(tape.gradient(ours_loss, x).numpy(), tape.gradient(theirs_loss, x).numpy(), rtol=1e-5,
                               atol=1e-6)
