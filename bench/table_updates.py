"""Train-step cost against id-table size: row-wise table updates vs tf_keras's rule, side by side.

    .venv/bin/python bench/table_updates.py                                  # 10k, 100k, 1M rows, 3 repeats
    .venv/bin/python bench/table_updates.py --rows 10000,1000000 --steps 160 --repeats 5

The model is the ids-only configuration's (``core/configs/synth-interactions.yaml``: user-id and item-id
embeddings of ``train.feature_dims`` = 32, a 32-dim projection, L2-normalised, in-batch softmax with
accidental-hit removal over the batch's distinct items, Adam, ``STEPS_PER_EXECUTION`` steps per call,
as ``trainer.train`` compiles it), built from :mod:`trainer.features` / :mod:`trainer.model` with
``--rows`` users and as many items. Batches (``--batch-size``, default 512) draw users uniformly and
items from a Zipf(1.1) popularity, like ``twotower data synth-interactions``; the same batches for
both rules.

For each size and rule (``row_wise``: ``train.row_wise_updates=true``, the default; ``dense``: false,
tf_keras's update which rewrites every row and both Adam slots each step): one warm-up ``fit`` of
``--steps`` steps (tracing), then ``--steps`` timed steps; the figure is CPU ms per step (process CPU
time, all threads) and wall ms per step. Repeats interleave the rules (order reversed on odd
repeats); reported: medians over repeats, and the per-repeat ratio dense / row_wise.

Writes ``bench/results/table-updates-<UTC>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)

RULES = ("row_wise", "dense")


def build_model(config, rows: int):
    """(compiled TwoTowerModel, user vocabulary, item vocabulary) with ``rows`` users and items."""
    from trainer.features import IdEncoder, ItemIdEncoder, TowerModel
    from trainer.model import TwoTowerModel
    from trainer.optimizers import make_optimizer
    from trainer.train import STEPS_PER_EXECUTION
    from core.config import FeatureSpec

    t = config.train
    users = [f"u{i}" for i in range(rows)]
    items = [f"i{i}" for i in range(rows)]
    query = TowerModel({"user_id": IdEncoder(users, t.feature_dims, name="user_id_encoder")},
                       [FeatureSpec(name="user_id", type="id")], t.hidden_dims, t.activation_fn, 0.0,
                       t.embedding_dims, name="query_tower")
    item = TowerModel({"item_id": ItemIdEncoder(items, t.feature_dims, name="item_id_encoder")},
                      [FeatureSpec(name="item_id", type="id")], t.hidden_dims, t.activation_fn, 0.0,
                      t.embedding_dims, name="item_tower")
    model = TwoTowerModel(query, item, t.temperature, dedupe_candidates=True)
    model.compile(optimizer=make_optimizer(config, 10**6), steps_per_execution=STEPS_PER_EXECUTION)
    return model, users, items


def batches(rows: int, batch_size: int, steps: int, seed: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = batch_size * steps
    users = rng.integers(0, rows, n)
    weights = 1.0 / np.arange(1, rows + 1) ** 1.1
    items = rng.choice(rows, n, p=weights / weights.sum())
    data = {"user_id": tf.constant([f"u{u}" for u in users]), "item_id": tf.constant([f"i{i}" for i in items])}
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size).cache()


def time_rule(config, rows: int, data, steps: int) -> dict:
    model, _, _ = build_model(config, rows)
    model.fit(data, epochs=1, verbose=0)  # trace + warm
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(data, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_ms_per_step": 1000 * wall / steps, "cpu_ms_per_step": 1000 * cpu / steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="10000,100000,1000000")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)

    from core.config import load_config

    base = load_config(REPO / "core" / "configs" / "synth-interactions.yaml", [f"train.batch_size={args.batch_size}"])
    configs = {rule: base.with_overrides({"train.row_wise_updates": rule == "row_wise"}) for rule in RULES}
    sizes = [int(x) for x in args.rows.split(",")]
    runs = []
    for rows in sizes:
        data = batches(rows, args.batch_size, args.steps, seed=rows)
        for r in range(args.repeats):
            order = RULES if r % 2 == 0 else tuple(reversed(RULES))
            for rule in order:
                result = {"rows": rows, "rule": rule, "repeat": r, **time_rule(configs[rule], rows, data, args.steps)}
                print(json.dumps(result), flush=True)
                runs.append(result)

    lines = ["| table rows (users = items) | rule | CPU ms / step (median) | wall ms / step (median) "
             "| dense / row-wise CPU (per repeat) |", "|---|---|---|---|---|"]
    summary = []
    for rows in sizes:
        per = {rule: [x for x in runs if x["rows"] == rows and x["rule"] == rule] for rule in RULES}
        ratios = [d["cpu_ms_per_step"] / w["cpu_ms_per_step"] for d, w in zip(per["dense"], per["row_wise"])]
        for rule in RULES:
            cpu = statistics.median(x["cpu_ms_per_step"] for x in per[rule])
            wall = statistics.median(x["wall_ms_per_step"] for x in per[rule])
            summary.append({"rows": rows, "rule": rule, "cpu_ms_per_step": cpu, "wall_ms_per_step": wall})
            shown = ", ".join(f"{x:.2f}" for x in ratios) if rule == "dense" else ""
            lines.append(f"| {rows:,} | {rule} | {cpu:.2f} | {wall:.2f} | {shown} |")
    table = "\n".join(lines)
    print(table)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "rows": sizes}
    (out / f"table-updates-{stamp}.json").write_text(json.dumps({"settings": settings, "runs": runs,
                                                                 "summary": summary}, indent=2))
    (out / f"table-updates-{stamp}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
