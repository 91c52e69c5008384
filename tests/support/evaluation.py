"""A planted evaluation world: a transform-output folder with known test pairs and popularity
counts, the ranks and metrics it must give, and a "good" query tower that ranks each user's
test item first.

Built on the tiny towers of ``tests.support.indexer_models`` (item tower = fixed random
vector per item_id, query tower = per user_id). Train counts are chosen so every slice is
known by hand and popularity has no ties in its top 10:

- item000: 300 (head; starts at 0%), item001: 90 (starts at 50% -> torso),
  item002..item021: 20, 19, ..., 1 (item002..006 start below 80% -> torso, item007..021
  tail), item022..item059: 0 (cold). Total 600.
- test pairs: user u -> item(u + 4) (items 4..15: 3 torso, 9 tail); even users also
  item000 (6 head pairs); users 1, 3, 5 also item(30 + u) (3 cold pairs). 21 pairs over
  12 users with 1 or 2 relevant items each, so per query != per interaction.
- seen: user u's train = items u..u+2, valid = item u+3 (masked when mask_seen).
"""

from __future__ import annotations

import json
import os

import numpy as np

from core.records import encode_example, interaction_specs
from tests.support.indexer_models import DIMS, N_USERS, item_ids, write_transformed


COUNTS = [300, 90] + list(range(20, 0, -1)) + [0] * 38


def planted_test_pairs() -> list[tuple[int, int]]:
    """(user, item position) test pairs, as in the module doc."""
    pairs = [(u, u + 4) for u in range(N_USERS)]
    pairs += [(u, 0) for u in range(0, N_USERS, 2)]
    pairs += [(u, 30 + u) for u in (1, 3, 5)]
    return pairs


def write_eval_folder(config, folder: str) -> None:
    import tensorflow as tf

    write_transformed(config, folder)  # items, display, query table, seen (overwritten below)
    ids = item_ids()
    with tf.io.TFRecordWriter(os.path.join(folder, "test-00000-of-00001.tfrecord")) as w:
        for u, pos in planted_test_pairs():
            w.write(encode_example({"user_id": str(u), "age": float(20 + u), "item_id": ids[pos],
                                    "title": f"thing {pos}", "price": pos / 2}, interaction_specs(config.schema)))
    tests = {u: [ids[p] for uu, p in planted_test_pairs() if uu == u] for u in range(N_USERS)}
    with open(os.path.join(folder, "seen.jsonl"), "w") as fh:
        for u in range(N_USERS):
            fh.write(json.dumps({"key": str(u), "train": ids[u:u + 3], "valid": [ids[u + 3]],
                                 "test": sorted(tests[u])}) + "\n")
    os.makedirs(os.path.join(folder, "vocab"), exist_ok=True)
    order = sorted(range(len(ids)), key=lambda i: (-COUNTS[i], ids[i]))
    with open(os.path.join(folder, "vocab", "item_id.tsv"), "w") as fh:
        fh.write("".join(f"{ids[i]}\t{COUNTS[i]}\n" for i in order))
    with open(os.path.join(folder, "stats.json"), "w") as fh:
        json.dump({"numeric": {}, "counts": {"test": len(planted_test_pairs())}, "split": "leave_last_out"}, fh)


def brute_ranks(scores: np.ndarray, mask_seen: bool) -> list[tuple[int, int, int]]:
    """(user, item, 1-based rank) per test pair by counting strictly better unmasked items."""
    out = []
    for u, pos in planted_test_pairs():
        row = scores[u].astype(np.float64).copy()
        if mask_seen:
            relevant = {p for uu, p in planted_test_pairs() if uu == u}
            row[[i for i in range(u, u + 4) if i not in relevant]] = -np.inf
        out.append((u, pos, 1 + int((row > row[pos]).sum())))
    return out


def expected_metrics(ranks, per: str) -> dict[str, float]:
    """recall@5/@10 and ndcg@10 from (user, item, rank) triples."""
    gain = {(u, p): (1 / np.log2(r + 1) if r <= 10 else 0.0) for u, p, r in ranks}
    if per == "interaction":
        out = {f"recall_at_{k}": np.mean([r <= k for _, _, r in ranks]) for k in (5, 10)}
        out["ndcg_at_10"] = np.mean(list(gain.values()))
        return out
    users = sorted({u for u, _, _ in ranks})
    mine = {u: [(p, r) for uu, p, r in ranks if uu == u] for u in users}
    out = {f"recall_at_{k}": np.mean([np.mean([r <= k for _, r in mine[u]]) for u in users]) for k in (5, 10)}
    ideal = {u: sum(1 / np.log2(j + 2) for j in range(len(mine[u]))) for u in users}
    out["ndcg_at_10"] = np.mean([sum(gain[(u, p)] for p, _ in mine[u]) / ideal[u] for u in users])
    return out


def model_scores(models: str) -> np.ndarray:
    from core.towers import Tower

    ids = item_ids()
    items = Tower(os.path.join(models, "item_tower")).embed(
        {"item_id": ids, "title": [f"thing {i}" for i in range(len(ids))], "price": [i / 2 for i in range(len(ids))]})
    queries = Tower(os.path.join(models, "query_tower")).embed(
        {"user_id": [str(u) for u in range(N_USERS)], "age": [float(20 + u) for u in range(N_USERS)]})
    return queries @ items.T


def build_good_query_tower(path: str, dims: int = DIMS, seed: int = 0) -> str:
    """Query tower: user u -> the item tower's vector of item(u + 4) (same table as ``build_tower(seed)``)."""
    import tensorflow as tf

    buckets = 1 << 14
    table = tf.constant(np.random.default_rng(seed).normal(size=(buckets, dims)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)])
    def serve(user_id, age):
        del age
        target = tf.strings.to_number(user_id, out_type=tf.int64) + 4
        item = tf.strings.join(["item", tf.strings.as_string(target, width=3, fill="0")])
        vec = tf.gather(table, tf.strings.to_hash_bucket_fast(item, buckets))
        return {"embedding": tf.math.l2_normalize(vec, axis=1)}

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path
