"""bench/baselines.py: ordering, the two split protocols, the baseline scorers and the metrics.

Tiny hand-checkable cases; one MovieLens-100K run (skipped without the raw data).
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.baselines import (choose_ease_l2, choose_last_n, cold_user_split, ease_scores,
                             evaluate_baselines, inner_last_item_holdout, last_item_holdout,
                             markdown, popularity_scores, read_jsonl, recall_at_k, run_protocol,
                             time_ordered, transition_counts, transition_scores, user_bucket)
from tests.conftest import MOVIELENS_RAW

# user, item, rating, timestamp, label. u1 has a timestamp tie at its end (items 9 and 10:
# "9" > "10" as strings, so 9 is last); u3 has one interaction only.
ROWS = [
    ("u1", "9", "5", "300", "1"),
    ("u2", "1", "4", "100", "1"),
    ("u1", "10", "3", "300", "0"),
    ("u1", "2", "4", "100", "1"),
    ("u3", "1", "2", "50", "0"),
    ("u2", "2", "5", "200", "1"),
    ("u2", "3", "1", "150", "0"),
]
HEADER = "user_id,item_id,rating,timestamp,label\n"


def write_dataset(folder: Path, rows=ROWS, n_items: int = 10) -> Path:
    """A complete small dataset folder (plus an extra file and a sub-folder to be copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "interactions.csv").write_text(HEADER + "".join(",".join(r) + "\n" for r in rows))
    users = sorted({r[0] for r in rows})
    (folder / "users.csv").write_text("user_id,age\n" + "".join(f"{u},30\n" for u in users))
    (folder / "items.csv").write_text(
        "item_id,title\n" + "".join(f"{i},\"Title, {i}\"\n" for i in range(1, n_items + 1)))
    (folder / "schema.yaml").write_text("anything: 1\n")
    (folder / "extra").mkdir(exist_ok=True)
    (folder / "extra" / "notes.txt").write_bytes(b"keep me\r\n")
    return folder


def test_time_ordered_tie_rule_is_timestamp_then_item_id_as_string():
    frame = pd.DataFrame({
        "user_id": ["b", "a", "a", "a", "a", "b"],
        "item_id": [5, "9", "10", "2", "7", 4],
        # numeric order for timestamps: 99 comes before 100 although "100" < "99" as strings
        "timestamp": ["7", "100", "100", "100", "99", 7],
    })
    ordered = time_ordered(frame)
    assert list(ordered) == ["b", "a"]  # users in order of first appearance
    assert ordered["a"] == ["7", "10", "2", "9"]  # "10" < "2" < "9" at the tied timestamp
    assert ordered["b"] == ["4", "5"]  # ints compared as strings too


def test_last_item_holdout_files(tmp_path):
    src = write_dataset(tmp_path / "src")
    out, holdout = tmp_path / "out", tmp_path / "held.jsonl"
    counts = last_item_holdout(str(src), str(out), str(holdout))

    assert counts == {"users": 3, "held_out": 2, "interactions": 7, "kept_interactions": 5}
    # u1's last is item 9 (the tie with 10 at t=300), u2's is item 2 (t=200); u3 has 1 row.
    assert read_jsonl(str(holdout)) == [{"user_id": "u1", "item_id": "9"},
                                        {"user_id": "u2", "item_id": "2"}]
    kept = [r for i, r in enumerate(ROWS) if i not in (0, 5)]
    assert (out / "interactions.csv").read_text() == HEADER + "".join(",".join(r) + "\n"
                                                                     for r in kept)
    for name in ("users.csv", "items.csv", "schema.yaml", "extra/notes.txt"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    # the source is untouched
    assert (src / "interactions.csv").read_text().count("\n") == len(ROWS) + 1


def test_last_item_holdout_refuses_to_write_into_the_source(tmp_path):
    src = write_dataset(tmp_path / "src")
    with pytest.raises(ValueError, match="must not be"):
        last_item_holdout(str(src), str(src / "split"), str(tmp_path / "h.jsonl"))


def _many_users(n_users: int = 40, per_user: int = 16) -> list[tuple]:
    """User i rates per_user - (i % 3) items, so about a third are too short for 5 + 10."""
    rows = []
    for u in range(n_users):
        for j in range(per_user - (u % 3)):
            rows.append((f"u{u}", str(1 + (u + j) % 30), "4", str(1000 + 10 * j), "1"))
    return rows


def test_cold_user_split_is_deterministic_and_disjoint(tmp_path):
    rows = _many_users()
    src = write_dataset(tmp_path / "src", rows, n_items=30)
    runs = []
    for name in ("a", "b"):
        counts = cold_user_split(str(src), str(tmp_path / name), str(tmp_path / f"{name}.jsonl"),
                                 fraction=0.5, seed=3)
        runs.append((counts, (tmp_path / name / "interactions.csv").read_bytes(),
                     (tmp_path / f"{name}.jsonl").read_bytes()))
    assert runs[0] == runs[1]

    counts = runs[0][0]
    eligible = {f"u{u}" for u in range(40) if 16 - (u % 3) >= 15}
    assert counts["eligible_users"] == len(eligible)
    held = read_jsonl(str(tmp_path / "a.jsonl"))
    cold = {h["user_id"] for h in held}
    assert cold == {u for u in eligible if user_bucket(u, 3) < 0.5}
    assert 0 < len(cold) < len(eligible)

    train = pd.read_csv(tmp_path / "a" / "interactions.csv", dtype=str)
    assert not cold & set(train.user_id)  # cold users have no training row at all
    assert len(train) == len(rows) - sum(r[0] in cold for r in rows) == counts["kept_interactions"]
    assert (tmp_path / "a" / "users.csv").read_bytes() == (src / "users.csv").read_bytes()
    for h in held:  # user i's items in time order are 1 + (i + j) % 30, j = 0, 1, ...
        u = int(h["user_id"][1:])
        sequence = [str(1 + (u + j) % 30) for j in range(15)]
        assert h["history"] == sequence[:5] and h["next"] == sequence[5:15]

    other = cold_user_split(str(src), str(tmp_path / "c"), str(tmp_path / "c.jsonl"),
                            fraction=0.5, seed=4)
    assert {h["user_id"] for h in read_jsonl(str(tmp_path / "c.jsonl"))} != cold
    assert other["eligible_users"] == counts["eligible_users"]


def test_user_bucket_is_md5_not_hash():
    # md5("0\x1fu1")[:15] / 16**15, computed once: stable across processes and machines.
    import hashlib
    digest = hashlib.md5(b"0\x1fu1").hexdigest()
    assert user_bucket("u1", 0) == int(digest[:15], 16) / 16 ** 15
    assert user_bucket("u1", 0) != user_bucket("u1", 1)


ITEMS = ["A", "B", "C", "D"]
TOY = {"u1": ["A", "B", "C"], "u2": ["A", "B", "D"], "u3": ["B", "C", "A"]}


def test_transition_counts_by_hand():
    # A->B twice (u1, u2), B->C twice (u1, u3), B->D once (u2), C->A once (u3).
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 1], expected[1, 2], expected[1, 3], expected[2, 0] = 2, 2, 1, 1
    np.testing.assert_array_equal(transition_counts(TOY, ITEMS).dense(), expected)

    scores = transition_scores(TOY, ITEMS, [["C", "A"], ["C", "A"], ["D"]], last_n=1)
    np.testing.assert_array_equal(scores[0], [0, 2, 0, 0])  # from A only
    two = transition_scores(TOY, ITEMS, [["C", "A"], ["B", "B"]], last_n=2)
    np.testing.assert_array_equal(two[0], [1, 2, 0, 0])  # C->A 1 + A->B 2
    np.testing.assert_array_equal(two[1], [0, 0, 4, 2])  # each position of B counts
    np.testing.assert_array_equal(scores[2], [0, 0, 0, 0])  # D has no successor
    assert scores.dtype == np.float32 and scores.shape == (3, 4)


def test_transition_options():
    # exclude_users drops u2's sequence: A->B once, B->D gone.
    np.testing.assert_array_equal(
        transition_scores(TOY, ITEMS, [["A"], ["B"]], last_n=1, exclude_users=["u2"]),
        [[0, 1, 0, 0], [0, 0, 2, 0]])
    # An item outside the catalog breaks the chain instead of being bridged: no A->B here.
    bridged = transition_counts({"u": ["A", "X", "B"]}, ITEMS).dense()
    assert bridged.sum() == 0


def test_ease_matches_the_closed_form():
    x = np.array([[1, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 0]], dtype=np.float64)  # TOY, binary
    l2 = 0.7
    p = np.linalg.inv(x.T @ x + l2 * np.eye(4))
    b = np.eye(4) - p / np.diag(p)[None, :]  # Steck 2019, eq. 8: B = I - P diag(1/diag(P))
    queries = [["A"], ["A", "B"], ["D", "C", "C"]]
    xq = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.float64)
    scores = ease_scores(TOY, ITEMS, queries, l2)
    assert scores.dtype == np.float32 and scores.shape == (3, 4)
    np.testing.assert_allclose(scores, xq @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diag(b), 0, atol=1e-12)
    assert scores[0, 0] == 0  # zero diagonal: an item alone never scores itself


def test_popularity_counts_every_training_interaction():
    scores = popularity_scores({**TOY, "u4": ["A", "A", "Z"]}, ITEMS, 2)
    np.testing.assert_array_equal(scores, [[5, 3, 2, 1], [5, 3, 2, 1]])


def test_recall_at_k_masks_seen_and_breaks_ties_by_position():
    scores = np.array([[3, 1, 1, 1, 0]], dtype=np.float32)
    # item 0 is seen, so the top 2 are the tied items 1 and 2 (lowest positions first).
    assert recall_at_k(scores, [[2]], [{0}], k=2) == {
        "recall_at_2": 1.0, "ndcg_at_2": pytest.approx(1 / math.log2(3)), "queries": 1}
    assert recall_at_k(scores, [[3]], [{0}], k=2)["recall_at_2"] == 0.0
    # without masking item 0 ranks first
    assert recall_at_k(scores, [[0]], [set()], k=1)["recall_at_1"] == 1.0
    # 3 targets, 2 hit in the top 2: recall 2/3, ndcg normalised over min(k, 3) = 2 ranks
    both = recall_at_k(scores, [[1, 2, 4]], [{0}], k=2)
    assert both["recall_at_2"] == pytest.approx(2 / 3) and both["ndcg_at_2"] == pytest.approx(1)
    # a seen target is never a hit, even when k covers the whole catalog
    assert recall_at_k(scores, [[0]], [{0}], k=10)["recall_at_10"] == 0.0
    # averaged over queries
    two = recall_at_k(np.vstack([scores, scores]), [[2], [3]], [{0}, {0}], k=2)
    assert two["recall_at_2"] == 0.5
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.array([[np.nan, 1.0]]), [[0]], [set()])


def test_inner_holdout_and_choosers_stay_on_training():
    inner, queries = inner_last_item_holdout({**TOY, "u4": ["D"]})
    assert inner == {"u1": ["A", "B"], "u2": ["A", "B"], "u3": ["B", "C"], "u4": ["D"]}
    assert queries[0] == (["A", "B"], ["C"], {"A", "B"})
    l2, table = choose_ease_l2(TOY, ITEMS, grid=(1.0, 10.0), k=1)
    assert l2 in (1.0, 10.0) and set(table) == {1.0, 10.0}
    last_n, by_n = choose_last_n(TOY, ITEMS, grid=(1, 2), k=1)
    assert last_n in (1, 2) and set(by_n) == {1, 2}


def test_evaluate_baselines_reports_every_baseline():
    queries = [(["A", "B"], ["C"], {"A", "B"}), (["B"], ["D", "A"], {"B"})]
    result = evaluate_baselines(TOY, ITEMS, queries, k=2, ease_grid=(1.0,), last_n_grid=(1, 2))
    assert result["queries"] == 2 and result["items"] == 4 and result["train_users"] == 3
    for name in ("popularity", "ease", "transition_last3", "transition_chosen"):
        assert 0 <= result[name]["recall_at_2"] <= 1 and "ndcg_at_2" in result[name]
    assert result["ease"]["l2"] == 1.0 and result["transition_last3"]["last_n"] == 3
    with pytest.raises(ValueError, match="not in items"):
        evaluate_baselines(TOY, ITEMS, [(["A"], ["Z"], {"A"})])


@pytest.mark.parametrize("protocol", ["last_item", "cold_users"])
def test_run_protocol_on_a_small_dataset(tmp_path, protocol):
    src = write_dataset(tmp_path / "src", _many_users(), n_items=30)
    result = run_protocol(str(src), protocol, fraction=1.0)
    assert result["protocol"] == protocol and result["items"] == 30
    assert result["queries"] == (40 if protocol == "last_item" else result["split"]["cold_users"])
    assert "| ease |" in markdown(result)
    json.dumps(result)  # serialisable for bench/quality.py's reports


@pytest.mark.slow
@pytest.mark.skipif(not (MOVIELENS_RAW / "u.data").is_file(),
                    reason=f"MovieLens-100K not at {MOVIELENS_RAW}")
def test_movielens_last_item_baselines():
    result = run_protocol(str(MOVIELENS_RAW), "last_item")
    assert result["split"] == {"users": 943, "held_out": 943, "interactions": 100000,
                               "kept_interactions": 99057}
    pop, ease = result["popularity"]["recall_at_10"], result["ease"]["recall_at_10"]
    trans = result["transition_last3"]["recall_at_10"]
    # Measured 0.066 / 0.117 / 0.169: wide bands, the order is what a regression would break.
    assert 0.03 < pop < ease < trans < 0.3
