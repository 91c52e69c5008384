"""Id vocabularies are sized to the data: no id past transform.max_vocab_size silently shares the
OOV row; an explicit transform.max_id_vocab_size folds the rarest ids and says so, exactly, in
stats.json, the log and the transform report; the towers follow the transform's cut.

The tables are tests/unit/features/test_transform.py's, with one id-typed item feature (``seller``)
added. Train positives by hand (leave-last-out, see that file): (u1, i4) (u1, i1) (u2, i1)
(u2, i2) (u4, i3) (u5, i2) (u6, i3), 7 rows, so

- user_id train counts: u1 2, u2 2, u4 1, u5 1, u6 1 (5 users);
- item_id train counts: i1 2, i2 2, i3 2, i4 1, i5 0 (4 items with train positives);
- seller, catalog counts (the item-feature vocabulary counts items): s1 2 (i1, i2), s2 1 (i3),
  s3 1 (i4), s4 1 (i5); its train interactions: s1 4, s2 2, s3 1, s4 0.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from core.config import Config, ConfigError, FeatureSpec  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.transform import run_transform  # noqa: E402
from tests.support.transform_data import INTERACTIONS, ITEMS, USER_SCHEMA, USERS, read_vocab  # noqa: E402

SCHEMA = {**USER_SCHEMA, "item_features": [*USER_SCHEMA["item_features"], {"name": "seller", "type": "id"}]}
SELLER_ITEMS = ITEMS.assign(seller=["s1", "s1", "s2", "s3", "s4"])


def _run(root: Path, caplog=None, **overrides):
    """Ingest + transform the tables with SCHEMA and ``overrides``; (config, out_dir, stats)."""
    src = root / "src"
    src.mkdir(parents=True)
    SELLER_ITEMS.to_csv(src / "items.csv", index=False)
    USERS.to_csv(src / "users.csv", index=False)
    INTERACTIONS.to_csv(src / "interactions.csv", index=False)
    raw = {"data": {"path": str(src)}, "schema": SCHEMA, "publish": {"store": str(root / "store")},
           "transform": {"split": "leave_last_out", **overrides}}
    cfg = Config.model_validate(raw)
    ingest(cfg, str(root / "ingested"))
    stats = run_transform(cfg, str(root / "ingested"), str(root / "out"))
    return cfg, root / "out", stats


@pytest.fixture(scope="module")
def small_cap_run(tmp_path_factory):
    """max_vocab_size 1: below the 5 users, 4 sellers and 5 items (the old collapse)."""
    return _run(tmp_path_factory.mktemp("small_cap"), max_vocab_size=1)


@pytest.fixture(scope="module")
def id_cap_run(tmp_path_factory):
    """An explicit id cap of 2 rows per id feature; folded ids share one OOV row."""
    return _run(tmp_path_factory.mktemp("id_cap"), max_id_vocab_size=2)


def _coverage(**kw):
    base = {"min_count": 1, "oov_rows": 1, "type": "id"}
    return {**base, **kw}


# ------------------------------------------------------------------ no cap on ids by default


def test_ids_past_max_vocab_size_each_keep_their_own_row(small_cap_run):
    _, out, stats = small_cap_run
    assert read_vocab(out, "user_id") == [("u1", 2), ("u2", 2), ("u4", 1), ("u5", 1), ("u6", 1)]
    assert read_vocab(out, "seller") == [("s1", 2), ("s2", 1), ("s3", 1), ("s4", 1)]
    assert read_vocab(out, "item_id") == [("i1", 2), ("i2", 2), ("i3", 2), ("i4", 1), ("i5", 0)]
    # max_vocab_size still cuts categorical / text vocabularies, and says by how much
    assert read_vocab(out, "gender") == [("M", 3)]
    assert read_vocab(out, "title") == [("matrix", 2)]
    cov = stats["vocab_coverage"]
    assert cov["user_id"] == _coverage(distinct=5, kept=5, folded=0, max_size=None,
                                       interactions=7, folded_interactions=0)
    assert cov["item_id"] == _coverage(distinct=4, kept=4, folded=0, max_size=None, oov_rows=0,
                                       interactions=7, folded_interactions=0)
    assert cov["seller"] == _coverage(distinct=4, kept=4, folded=0, max_size=None,
                                      interactions=7, folded_interactions=0)
    assert cov["gender"] == {"type": "categorical", "distinct": 2, "kept": 1, "folded": 1, "max_size": 1,
                             "min_count": 1, "oov_rows": 1, "interactions": None, "folded_interactions": None}
    assert (cov["title"]["distinct"], cov["title"]["kept"], cov["title"]["folded"]) == (7, 1, 6)
    assert stats["vocab_sizes"] == {"gender": 1, "genres": 1, "item_id": 5, "seller": 4, "title": 1,
                                    "user_id": 5}


def test_query_tower_gives_every_train_user_its_own_row(small_cap_run):
    from trainer.artifacts import read_stats
    from trainer.features import build_encoder, tf

    cfg, out, _ = small_cap_run
    enc = build_encoder(FeatureSpec(name="user_id", type="id"), cfg, str(out), read_stats(str(out)))
    ids = enc.lookup(tf.constant(["u1", "u2", "u4", "u5", "u6", "u3"])).numpy().tolist()
    assert ids[:5] == [1, 2, 3, 4, 5] and ids[5] == 0  # u3 never in train: the OOV row
    assert enc.embedding.input_dim == 6


# ------------------------------------------------------------------ an explicit id cap


def test_explicit_id_cap_records_what_it_folded(id_cap_run):
    _, out, stats = id_cap_run
    # user_id: u1, u2 kept; u4, u5, u6 folded, with their 3 of the 7 train positives.
    assert read_vocab(out, "user_id") == [("u1", 2), ("u2", 2)]
    # item_id: the file still lists the whole catalog (the popularity table, cold items too) ...
    assert read_vocab(out, "item_id") == [("i1", 2), ("i2", 2), ("i3", 2), ("i4", 1), ("i5", 0)]
    # ... seller (catalog counts): s1, s2 kept; s3 (1 train positive) and s4 (0) folded.
    assert read_vocab(out, "seller") == [("s1", 2), ("s2", 1)]
    cov = stats["vocab_coverage"]
    assert cov["user_id"] == _coverage(distinct=5, kept=2, folded=3, max_size=2,
                                       interactions=7, folded_interactions=3)
    # ... and of the 4 trained items i1, i2 keep an id row; i3 (2 positives), i4 (1) embed from content.
    assert cov["item_id"] == _coverage(distinct=4, kept=2, folded=2, max_size=2, oov_rows=0,
                                       interactions=7, folded_interactions=3)
    assert cov["seller"] == _coverage(distinct=4, kept=2, folded=2, max_size=2,
                                      interactions=7, folded_interactions=1)
    # categorical / text vocabularies are not touched by the id cap
    assert cov["gender"]["folded"] == 0 and cov["title"]["folded"] == 0
    assert json.loads((out / "stats.json").read_text())["vocab_coverage"] == cov


def test_a_cap_folding_over_one_percent_of_interactions_is_a_log_warning(id_cap_run, caplog):
    from features.transform import warn_folded_ids

    _, _, stats = id_cap_run
    with caplog.at_level(logging.INFO, logger="features.transform"):
        lines = warn_folded_ids(stats["vocab_coverage"])
    assert lines[2] == ("user_id: 3 of 5 ids (past transform.max_id_vocab_size=2) share one OOV row; "
                        "3 of 7 train interactions (42.9%) are affected")
    assert lines[0].startswith("item_id: 2 of 4 ids (past transform.max_id_vocab_size=2) embed from content only")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == lines  # all three fold > 1% of their interactions (1 of 7 for seller)
    quiet = {"type": "id", "distinct": 1000, "kept": 999, "folded": 1, "max_size": 999, "oov_rows": 1,
             "interactions": 1000, "folded_interactions": 1}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="features.transform"):
        warn_folded_ids({"user_id": quiet})
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # 0.1%: logged, not a warning


def test_report_shows_the_folded_ids(id_cap_run, small_cap_run):
    from tests.support.report_pages import md_rows, render

    for (_, out, stats), folded in ((id_cap_run, True), (small_cap_run, False)):
        (out / "stage.json").write_text(json.dumps({"stage": "transform", "seconds": 1.0, "result": stats}))
        html, md = render("transform", out)
        sentence = ("user_id: 3 of 5 ids (past transform.max_id_vocab_size=2) share one OOV row; "
                    "3 of 7 train interactions (42.9%) are affected")
        assert (sentence in md.replace("\\_", "_")) is folded and (sentence in html) is folded
        # the warnings come before the tables, where nobody can miss them
        assert (md.find("**Warning:** user") < md.find("Split sizes")) if folded else "Warning" not in md
        rows = {r[0]: r for r in md_rows(md) if len(r) == 8}
        if folded:
            assert rows["user\\_id"][1:7] == ["id", "2", "5", "3", "2", "3 of 7 (42.9%)"]
            assert rows["seller"][1:7] == ["id", "2", "4", "2", "2", "1 of 7 (14.3%)"]
            assert rows["item\\_id"][1:7] == ["id", "5", "4", "2", "2", "3 of 7 (42.9%)"]
        else:
            assert rows["user\\_id"][1:7] == ["id", "5", "5", "0", "none", "0 of 7 (0.0%)"]
            assert rows["gender"][1:7] == ["categorical", "1", "2", "1", "1", "n/a"]


# ------------------------------------------------------------------ hashing, config, towers


def test_capped_towers_follow_the_transform(id_cap_run, tmp_path):
    from trainer.artifacts import read_stats
    from trainer.features import build_encoder, tf

    cfg, out, _ = id_cap_run
    stats = read_stats(str(out))
    item = build_encoder(FeatureSpec(name="item_id", type="id"), cfg, str(out), stats)
    present = tf.reduce_any(tf.not_equal(item(tf.constant(["i1", "i2", "i3", "i4", "i5"])), 0.0), axis=1)
    assert present.numpy().tolist() == [True, True, False, False, False]  # past the cap: content only
    user = build_encoder(FeatureSpec(name="user_id", type="id"), cfg, str(out), stats)
    assert user.lookup(tf.constant(["u1", "u2", "u4", "u5", "u6"])).numpy().tolist() == [1, 2, 0, 0, 0]

    # With id_hash_buckets the folded ids hash into that many shared rows instead.
    _, hashed_out, hashed = _run(tmp_path / "hashed", max_id_vocab_size=2, id_hash_buckets=4)
    assert hashed["vocab_coverage"]["user_id"]["oov_rows"] == 4
    assert hashed["vocab_coverage"]["item_id"]["oov_rows"] == 0  # items past the cap: content only
    hashed_cfg = cfg.with_overrides({"transform.id_hash_buckets": 4})
    user = build_encoder(FeatureSpec(name="user_id", type="id"), hashed_cfg, str(hashed_out), hashed)
    ids = user.lookup(tf.constant(["u1", "u2", "u4", "u5", "u6"])).numpy().tolist()
    assert ids[:2] == [4, 5] and all(0 <= i < 4 for i in ids[2:])
    assert ids[2:] == tf.strings.to_hash_bucket_fast(["u4", "u5", "u6"], 4).numpy().tolist()
    assert user.embedding.input_dim == 2 + 4


def test_id_hash_buckets_need_an_id_cap(tmp_path):
    raw = {"data": {"path": str(tmp_path)}, "schema": SCHEMA, "publish": {"store": str(tmp_path / "s")}}
    cfg = Config.model_validate(raw)
    assert cfg.transform.max_id_vocab_size is None and cfg.transform.id_hash_buckets == 0
    with pytest.raises(ConfigError, match="id_hash_buckets: 8 only applies with max_id_vocab_size"):
        cfg.with_overrides({"transform.id_hash_buckets": 8})
    with pytest.raises(ConfigError, match="transform.max_id_vocab_size"):
        cfg.with_overrides({"transform.max_id_vocab_size": 0})
    assert cfg.with_overrides({"transform.max_id_vocab_size": 5,
                               "transform.id_hash_buckets": 8}).transform.id_hash_buckets == 8
