"""train.refit: the published towers have seen every split; evaluation scores the early-stopped
twin (heldout/), so the gate never judges a model on interactions it trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.config import ConfigError
from tests.ring_data import ring_tables, transform


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit")
    config, out = transform(root, ring_tables(seed=6, n_items=40, n_users=120), **{"train.n_epochs": 3})
    return config, out, root


@pytest.mark.parametrize("mode", ["full", "continue"])
def test_refit_trains_on_every_split_and_keeps_the_heldout_twin(ring, mode):
    from core.towers import Tower
    from trainer.artifacts import evaluated_model_dir
    from evaluation.evaluate import evaluate_model
    from trainer.train import train_model

    config, out, root = ring
    config = config.with_overrides({"train.refit": mode})
    model = root / f"model-{mode}"
    training = train_model(config, str(out), str(model))
    stats = json.loads((out / "stats.json").read_text())
    counts = stats["counts"]
    weights = training["published_weights"]
    assert weights["mode"] == mode and weights["splits"] == ["train", "valid", "test"]
    assert weights["examples"] == counts["train"] + counts["valid"] + counts["test"]
    assert weights["epochs"] == (training["best_epoch"] if mode == "full" else 1)
    assert evaluated_model_dir(str(model)) == f"{model}/heldout"
    features = {"user_id": ["u3", "u9"], "recent": ["i1\x1fi2", ""]}
    published, heldout = Tower(str(model / "query_tower")), Tower(str(model / "heldout" / "query_tower"))
    assert not np.allclose(published.embed(features), heldout.embed(features))  # the refit moved the weights
    metrics = evaluate_model(config, str(out), str(model), str(root / f"eval-{mode}"))
    plain = root / f"plain-{mode}"
    plain.mkdir()
    (plain / "query_tower").symlink_to(model / "heldout" / "query_tower")
    (plain / "item_tower").symlink_to(model / "heldout" / "item_tower")
    assert metrics["recall_at_10"] == evaluate_model(config, str(out), str(plain), str(root / f"eval-plain-{mode}"))[
        "recall_at_10"]


def test_without_refit_the_published_weights_saw_train_only(ring):
    from trainer.artifacts import evaluated_model_dir
    from trainer.train import train_model

    config, out, root = ring
    training = train_model(config.with_overrides({"train.n_epochs": 1}), str(out), str(root / "model-none"))
    assert training["published_weights"]["splits"] == ["train"]
    assert evaluated_model_dir(str(root / "model-none")) == str(root / "model-none")


def test_refit_options_that_do_nothing_are_refused(ring):
    config, _, _ = ring
    with pytest.raises(ConfigError, match="refit_epochs: 3 only applies with train.refit=continue"):
        config.with_overrides({"train.refit_epochs": 3})
    with pytest.raises(ConfigError, match="warm_start_epochs: 3 only applies with train.warm_start=true"):
        config.with_overrides({"train.warm_start_epochs": 3})
    with pytest.raises(ConfigError, match="not implemented under train.distribute=multi_worker"):
        config.with_overrides({"train.refit": "full", "train.distribute": "multi_worker"})


def test_a_refit_live_version_is_compared_on_keys_it_never_trained_on(tmp_path):
    import pandas as pd

    from publishing.gate import decide
    from tests.ring_data import publish_run
    from evaluation.evaluate import evaluate_model

    store = tmp_path / "store"
    day1 = ring_tables(seed=6, n_items=40, n_users=120)
    cfg1, out1 = transform(tmp_path / "day1", day1, store=store, **{"train.n_epochs": 3, "train.refit": "full"})
    _, _, published = publish_run(cfg1, out1, tmp_path / "day1")
    assert published["published"]
    more = ring_tables(seed=7, n_items=40, n_users=30, user_prefix="new")
    cfg2, out2 = transform(tmp_path / "day2", {"items": day1["items"],
                                               "interactions": pd.concat([day1["interactions"], more["interactions"]])},
                           store=store, **{"train.n_epochs": 3, "train.refit": "full"})
    from trainer.train import train_model

    train_model(cfg2, str(out2), str(tmp_path / "day2" / "model"))
    metrics = evaluate_model(cfg2, str(out2), str(tmp_path / "day2" / "model"), str(tmp_path / "day2" / "eval"),
                             live_store=str(store))
    live = metrics["live"]
    # Day 1's refit weights saw every day-1 user's test item: only the 30 new users are fresh.
    assert live["compared_on"].startswith(f"30 of {metrics['n_queries']} keys"), live
    assert set(live["candidate"]) >= {"recall_at_10", "ndcg_at_10"}
    decision = decide(cfg2, metrics)
    assert decision.baseline["candidate_recall_at_10"] == live["candidate"]["recall_at_10"]
    assert any("compared on 30 of" in r for r in decision.reasons), decision.reasons
