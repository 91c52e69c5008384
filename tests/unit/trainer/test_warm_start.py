"""Warm-started retrains (trainer/warm_start.py): rows remapped by token between vocabularies
that moved, and a run that starts from the live version's published weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.ring_data import publish_run, ring_tables, transform
from trainer.warm_start import remap_rows


def test_remap_rows_keeps_known_tokens_and_fresh_rows_for_new_ones():
    old = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)  # 1 OOV row + tokens a, b, c, d
    fresh = -np.ones((4, 2), dtype=np.float32)  # 1 OOV row + tokens c, e, a
    table, counts = remap_rows(old, ["a", "b", "c", "d"], 1, fresh, ["c", "e", "a"], 1)
    np.testing.assert_array_equal(table, [[0, 1], [6, 7], [-1, -1], [2, 3]])
    assert counts == {"kept": 2, "new": 1, "dropped": 2}
    # Different OOV row counts: the OOV rows stay fresh, tokens still move.
    table, _ = remap_rows(old, ["a", "b", "c", "d"], 1, -np.ones((5, 2), np.float32), ["c", "e", "a"], 2)
    np.testing.assert_array_equal(table, [[-1, -1], [-1, -1], [6, 7], [-1, -1], [2, 3]])


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    """Day 1 published with warm_start on; day 2's data grew (new users, new items) and its run
    starts from day 1's live version. Returns (day1, day2) dicts."""
    root = tmp_path_factory.mktemp("warm")
    store = root / "store"
    day1_tables = ring_tables(seed=3, n_items=50, n_users=150)
    cfg1, out1 = transform(root / "day1", day1_tables, store=store, **{"train.warm_start": True,
                                                                        "train.n_epochs": 6,
                                                                        "train.warm_start_optimizer": "carry"})
    training1, metrics1, result1 = publish_run(cfg1, out1, root / "day1")
    assert result1["published"], result1["reasons"]
    more = ring_tables(seed=4, n_items=60, n_users=40, user_prefix="new")
    day2_tables = {"items": more["items"],
                   "interactions": pd.concat([day1_tables["interactions"], more["interactions"]])}
    cfg2, out2 = transform(root / "day2", day2_tables, store=store, **{"train.warm_start": True,
                                                                        "train.n_epochs": 6,
                                                                        "train.warm_start_epochs": 1,
                                                                        "train.warm_start_lr_scale": 0.25,
                                                                        "train.warm_start_optimizer": "carry",
                                                                        "train.warm_start_keep_start": True,
                                                                        "train.warm_start_average": "start_and_epochs"})
    training2, metrics2, result2 = publish_run(cfg2, out2, root / "day2")
    return ({"config": cfg1, "training": training1, "metrics": metrics1, "result": result1, "root": root / "day1"},
            {"config": cfg2, "training": training2, "metrics": metrics2, "result": result2, "root": root / "day2",
             "transformed": out2})


def test_first_run_is_cold_and_publishes_its_weights(two_days):
    day1, _ = two_days
    assert day1["training"]["warm_start"]["from"] is None
    assert len(day1["training"]["history"]) == 6
    from core.store import VersionStore

    manifest = VersionStore(str(day1["config"].publish.store)).read_manifest(day1["result"]["version"])
    assert {"warm_start/variables.npz", "warm_start/vocabularies.json", "warm_start/optimizer.npz",
            "warm_start/optimizer.json"} <= set(manifest["files"])


def test_next_run_starts_from_the_live_version_and_remaps_grown_vocabularies(two_days):
    day1, day2 = two_days
    warm = day2["training"]["warm_start"]
    assert warm["from"] == day1["result"]["version"]
    assert len(day2["training"]["history"]) == 1 == warm["epochs"]
    assert warm["lr_scale"] == 0.25 and day1["training"]["warm_start"]["lr_scale"] == 1.0  # cold: unscaled
    tables = warm["remapped"]
    user_table = next(v for k, v in tables.items() if "user_id" in k)
    # Day 2's train split has day 1's users plus 40 new ones; nobody left.
    assert user_table["new"] == 40 and user_table["dropped"] == 0 and user_table["kept"] >= 150
    item_tables = [v for k, v in tables.items() if "recent" in k]
    assert item_tables and item_tables[0]["new"] > 0  # items i50..i59 are new on day 2
    assert not warm["fresh"], warm["fresh"]  # every other variable had a match
    # The warm start's own weights were validated first (epoch 0) and kept only if no epoch beat them.
    assert 0.0 <= warm["start_val_recall_at_10"] <= 1.0
    assert warm["kept_start"] == (day2["training"]["best_epoch"] == 0)
    # Adam's moments and step count came along: day 2 counts on from day 1's last step.
    from trainer.warm_start import WARM_DIR, saved_optimizer

    day1_state = saved_optimizer(str(day1["root"] / "model" / WARM_DIR))
    assert day1_state["optimizer"] == "Adam" and day1_state["iterations"] > 0
    assert warm["optimizer"]["state"] == "carried" and warm["optimizer"]["iterations"] == day1_state["iterations"]
    assert warm["optimizer"]["slots"] == 2 * (len(warm["remapped"]) + warm["copied"])  # m and v of each
    day2_state = saved_optimizer(str(day2["root"] / "model" / WARM_DIR))
    assert day2_state["iterations"] > day1_state["iterations"]
    # train.warm_start_average: the kept weights are the mean of the start and the one epoch's end.
    assert warm["averaged"]["mode"] == "start_and_epochs" and warm["averaged"]["snapshots"] == 2
    assert 0.0 <= warm["averaged"]["val_recall_at_10"] <= 1.0
    # Starting from trained weights, one epoch is as good as day 1's six (the data is the same ring).
    assert day2["metrics"]["recall_at_10"] >= 0.9 * day1["metrics"]["recall_at_10"]


def test_warm_rows_are_the_live_rows_for_tokens_both_runs_know(two_days):
    from trainer.features import build_towers
    from trainer.warm_start import WARM_DIR, read_weights, warm_start

    day1, day2 = two_days
    towers = build_towers(day2["config"], str(day2["transformed"]))
    batch = {"user_id": np.array(["u1"], dtype=object), "recent": np.array([""], dtype=object),
             "item_id": np.array(["i1"], dtype=object), "genre": np.array(["g1"], dtype=object)}
    for tower in towers:
        tower(batch)
    fresh = {v.name: v.numpy().copy() for t in towers for v in t.variables}
    from trainer.warm_start import _key
    warm_start(towers, str(day1["root"] / "model" / WARM_DIR))
    arrays, vocabularies = read_weights(str(day1["root"] / "model" / WARM_DIR))
    query_tower = towers[0]
    encoder = query_tower.encoders["user_id"]
    name = _key(towers, encoder.embedding.embeddings)
    old_tokens = vocabularies[name]["tokens"]
    row = int(encoder.lookup(np.array(["u7"], dtype=object)).numpy()[0])
    np.testing.assert_array_equal(encoder.embedding.embeddings.numpy()[row],
                                  arrays[name][vocabularies[name]["oov_rows"] + old_tokens.index("u7")])
    new_row = int(encoder.lookup(np.array(["new3"], dtype=object)).numpy()[0])
    np.testing.assert_array_equal(encoder.embedding.embeddings.numpy()[new_row],
                                  fresh[encoder.embedding.embeddings.name][new_row])


def test_weight_average_is_the_uniform_mean_of_float_snapshots_and_keeps_the_last_counter():
    from trainer.epochs import WeightAverage

    average = WeightAverage()
    average.add([np.array([1.0, 2.0], np.float32), np.array(3, np.int64)])
    average.add([np.array([3.0, 6.0], np.float32), np.array(7, np.int64)])
    average.add([np.array([5.0, 1.0], np.float32), np.array(9, np.int64)])
    mean = average.mean([np.zeros(2, np.float32), np.array(0, np.int64)])
    np.testing.assert_allclose(mean[0], [3.0, 3.0])
    assert mean[0].dtype == np.float32 and int(mean[1]) == 9  # an integer counter is not averaged
    with pytest.raises(ValueError, match="shapes differ"):
        average.add([np.zeros(3, np.float32), np.array(0, np.int64)])


def test_a_warm_start_scales_the_peak_learning_rate():
    from core.config import Config
    from trainer.optimizers import make_optimizer

    config = Config.model_validate({"data": {"path": "d"}, "schema": {
        "query_key": "user_id", "query_features": [{"name": "user_id", "type": "id"}], "item_features": []},
        "train": {"lr": 0.2, "lr_schedule": "constant"}, "publish": {"store": "s"}})
    assert float(make_optimizer(config, 10).learning_rate) == pytest.approx(0.2)
    assert float(make_optimizer(config, 10, lr_scale=0.25).learning_rate) == pytest.approx(0.05)


def test_carried_adam_moments_are_remapped_by_token_and_the_step_count_restored(two_days):
    """Day 2's towers and optimizer loaded from day 1's warm folder: a user both days know gets
    day 1's m and v rows, a new user zero moments (Adam's initial state); the step count is day 1's."""
    from trainer.features import build_towers
    from trainer.optimizers import make_optimizer, slot_variables
    from trainer.warm_start import OPTIMIZER_SLOTS, WARM_DIR, _key, _read_arrays, read_weights, warm_start

    day1, day2 = two_days
    folder = str(day1["root"] / "model" / WARM_DIR)
    towers = build_towers(day2["config"], str(day2["transformed"]))
    batch = {"user_id": np.array(["u1"], dtype=object), "recent": np.array([""], dtype=object),
             "item_id": np.array(["i1"], dtype=object), "genre": np.array(["g1"], dtype=object)}
    for tower in towers:
        tower(batch)
    optimizer = make_optimizer(day2["config"], 10)
    optimizer.build([v for tower in towers for v in tower.trainable_variables])
    report = warm_start(towers, folder, optimizer)
    assert report["optimizer"]["state"] == "carried"
    _, vocabularies = read_weights(folder)
    saved = _read_arrays(f"{folder}/{OPTIMIZER_SLOTS}")
    encoder = towers[0].encoders["user_id"]
    table = encoder.embedding.embeddings
    name = _key(towers, table)
    old_row = vocabularies[name]["oov_rows"] + vocabularies[name]["tokens"].index("u7")
    slots = slot_variables(optimizer, table)
    assert set(slots) == {"m", "v"}
    row = int(encoder.lookup(np.array(["u7"], dtype=object)).numpy()[0])
    new_row = int(encoder.lookup(np.array(["new3"], dtype=object)).numpy()[0])
    for slot, variable in slots.items():
        assert np.abs(saved[f"{slot}/{name}"][old_row]).sum() > 0  # u7 trained on day 1
        np.testing.assert_array_equal(variable.numpy()[row], saved[f"{slot}/{name}"][old_row])
        np.testing.assert_array_equal(variable.numpy()[new_row], np.zeros(table.shape[1]))
    assert int(optimizer.iterations.numpy()) == report["optimizer"]["iterations"] > 0
    # Without an optimizer the state is left alone (train.warm_start_optimizer=fresh).
    assert warm_start(towers, folder)["optimizer"] is None


def test_a_carried_step_count_shifts_the_decaying_schedules():
    from trainer.schedules import make_learning_rate

    plain = make_learning_rate("cosine", 1.0, 100)
    shifted = make_learning_rate("cosine", 1.0, 100, first_step=500)
    for step in (0, 25, 50, 100):
        assert float(shifted(500 + step)) == pytest.approx(float(plain(step)))
    warm = make_learning_rate("warmup_cosine", 1.0, 100, warmup_steps=10, first_step=500)
    assert float(warm(500)) == pytest.approx(0.0) and float(warm(510)) == pytest.approx(1.0)
    assert make_learning_rate("constant", 0.5, 100, first_step=500) == 0.5


def test_dat_augmented_tables_are_remapped_by_token_like_the_encoders(tmp_path):
    """train.augmented_vectors: the id-keyed augmented tables ride the warm start, remapped by their
    key's vocabulary (a user both days know keeps its trained augmented row)."""
    from trainer.features import build_towers
    from trainer.warm_start import WARM_DIR, _key, read_weights, warm_start

    dat = {"train.warm_start": True, "train.n_epochs": 2, "train.augmented_vectors.enabled": True}
    day1_tables = ring_tables(seed=3, n_items=50, n_users=150)
    cfg1, out1 = transform(tmp_path / "day1", day1_tables, store=tmp_path / "store", **dat)
    _, _, result1 = publish_run(cfg1, out1, tmp_path / "day1")
    assert result1["published"], result1["reasons"]
    more = ring_tables(seed=4, n_items=60, n_users=40, user_prefix="new")
    cfg2, out2 = transform(tmp_path / "day2", {"items": more["items"], "interactions": pd.concat(
        [day1_tables["interactions"], more["interactions"]])}, store=tmp_path / "store", **dat)
    towers = build_towers(cfg2, str(out2))
    batch = {"user_id": np.array(["u1"], dtype=object), "recent": np.array([""], dtype=object),
             "item_id": np.array(["i1"], dtype=object), "genre": np.array(["g1"], dtype=object)}
    for tower in towers:
        tower(batch)
    warm_start(towers, str(tmp_path / "day1" / "model" / WARM_DIR))
    arrays, vocabularies = read_weights(str(tmp_path / "day1" / "model" / WARM_DIR))
    augmented = towers[0].augmented
    name = _key(towers, augmented.embedding.embeddings)
    assert name in vocabularies  # remapped by token, not copied by shape
    row = int(augmented.lookup(np.array(["u7"], dtype=object)).numpy()[0])
    old = vocabularies[name]["tokens"]
    np.testing.assert_array_equal(augmented.embedding.embeddings.numpy()[row],
                                  arrays[name][vocabularies[name]["oov_rows"] + old.index("u7")])
