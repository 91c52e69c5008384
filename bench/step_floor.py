"""The arithmetic floor of an in-batch-softmax train step on this CPU: how fast could any trainer be?

    .venv/bin/python bench/step_floor.py                       # batch 512, MovieLens-sized tables
    .venv/bin/python bench/step_floor.py --threads 1 --repeats 5

The least a two-tower step with in-batch negatives does, written by hand in plain TensorFlow ops:
gather B user and B item rows of 32 (943 and 1,682 rows, MovieLens-100K's), a 32x32 projection
each, L2 normalisation, the [B, B] logits / temperature with same-item columns masked, the
summed log-sum-exp cross-entropy, its gradients and an Adam-style update of the four variables.
No Keras, no input pipeline (one fixed batch), no logQ, no candidate de-duplication, no metrics.
``--loop`` steps run inside one ``tf.function`` (``tf.range`` loop) per call, so no Python runs
between steps; the step itself is traced either plain or with XLA (``jit_compile``).

The figure is CPU ms per step (process CPU time, all threads) and wall ms per step, median over
``--repeats`` timed calls after one warm-up call; the two variants interleave. Compare it with the
per-step CPU of bench/throughput.py (batch B / CPU examples/s): a trainer cannot be much cheaper
per step than this floor, so it bounds the ratio any trainer can reach against the reference.

``--threads`` (default 1) sizes TensorFlow's thread pools before its import, as
bench/throughput.py does with the ids config's ``train.threads``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def make_step(tf, batch: int, dims: int, users: int, items: int, seed: int = 0):
    """A ``step(users [B] int64, items [B] int64) -> loss`` closure over its variables."""
    import numpy as np

    rng = np.random.default_rng(seed)
    user_table = tf.Variable(rng.normal(size=(users, dims)).astype("float32") * 0.05)
    item_table = tf.Variable(rng.normal(size=(items, dims)).astype("float32") * 0.05)
    user_projection = tf.Variable(np.eye(dims, dtype="float32"))
    item_projection = tf.Variable(np.eye(dims, dtype="float32"))
    variables = [user_table, item_table, user_projection, item_projection]
    first = [tf.Variable(tf.zeros_like(v)) for v in variables]
    second = [tf.Variable(tf.zeros_like(v)) for v in variables]

    def step(user_rows, item_rows):
        with tf.GradientTape() as tape:
            query = tf.math.l2_normalize(tf.matmul(tf.gather(user_table, user_rows), user_projection), axis=1)
            item = tf.math.l2_normalize(tf.matmul(tf.gather(item_table, item_rows), item_projection), axis=1)
            logits = tf.matmul(query, item, transpose_b=True) / 0.05
            # The same item in another column is an accidental hit: masked out of the row.
            same = tf.cast(tf.equal(item_rows[:, None], item_rows[None, :]), tf.float32) - tf.eye(batch)
            logits = logits - 1e9 * same
            loss = tf.reduce_sum(tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits))
        grads = tape.gradient(loss, variables)
        for var, grad, m, v in zip(variables, grads, first, second):
            grad = tf.convert_to_tensor(grad)
            m.assign(0.9 * m + 0.1 * grad)
            v.assign(0.999 * v + 0.001 * grad * grad)
            var.assign_sub(0.005 * m / (tf.sqrt(v) + 1e-7))
        return loss

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--dims", type=int, default=32)
    ap.add_argument("--users", type=int, default=943)
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--loop", type=int, default=64, help="steps per call")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    ap.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads (0 = default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(1)
    users = tf.constant(rng.integers(0, args.users, args.batch_size))
    weights = 1.0 / np.arange(1, args.items + 1) ** 1.1
    items = tf.constant(rng.choice(args.items, args.batch_size, p=weights / weights.sum()))
    calls = {}
    for jit in (False, True):
        step = tf.function(make_step(tf, args.batch_size, args.dims, args.users, args.items), jit_compile=jit)

        @tf.function
        def run(step=step):
            for _ in tf.range(args.loop):
                step(users, items)

        run()  # trace + warm
        calls[jit] = run
    times = {False: [], True: []}
    for r in range(args.repeats):
        for jit in ((False, True) if r % 2 == 0 else (True, False)):
            wall, cpu = time.perf_counter(), time.process_time()
            calls[jit]()
            times[jit].append((1000 * (time.perf_counter() - wall) / args.loop,
                               1000 * (time.process_time() - cpu) / args.loop))
    print(f"batch {args.batch_size}, {args.dims} dims, tables {args.users:,} x {args.items:,}, "
          f"threads {args.threads or 'default'}, {args.loop} steps per call, {args.repeats} calls per variant")
    print("| step | CPU ms / step (median) | wall ms / step (median) |\n|---|---|---|")
    for jit in (False, True):
        cpu = statistics.median(c for _, c in times[jit])
        wall = statistics.median(w for w, _ in times[jit])
        print(f"| {'XLA (jit_compile)' if jit else 'plain TF ops'} | {cpu:.3f} | {wall:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
