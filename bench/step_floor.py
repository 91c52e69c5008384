"""The arithmetic floor of an in-batch-softmax train step on this CPU: how fast could any trainer be?

    .venv/bin/python bench/step_floor.py                       # batch 512, MovieLens-sized tables
    .venv/bin/python bench/step_floor.py --threads 1 --repeats 5

The least a two-tower step with in-batch negatives does, written by hand in TensorFlow ops:
gather B user and B item rows of 32 (943 and 1,682 rows, MovieLens-100K's), a 32x32 projection
each, L2 normalisation, the softmax cross-entropy of the logits / temperature with accidental hits
removed, its gradients and one fused Adam kernel per variable. Two losses: the [B, B] logits with
same-item columns masked (TFRS's), traced plain or with XLA (``jit_compile``), and our own
distinct-candidate loss (``trainer.model.deduplicated_softmax_loss``, [B, U]). No Keras, no input
pipeline (one fixed batch, Zipf-drawn items), no logQ, no metrics. ``--loop`` steps run inside
one ``tf.function`` (``tf.range`` loop) per call, so no Python runs between steps.

bench/throughput.py runs the distinct-candidate floor as its ``step_floor`` row, on the real train
split's batches (:func:`epoch_runner`), side by side with the trainers.

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


def make_step(tf, batch: int, dims: int, users: int, items: int, seed: int = 0, *, distinct: bool = False,
              temperature: float = 0.05):
    """A ``step(users [B] int64, items [B] int64) -> loss`` closure over its variables.

    ``distinct``: the softmax over the batch's distinct items, through our own
    ``trainer.model.deduplicated_softmax_loss`` (the loss ``ours_ids`` trains with); else the
    [B, B] softmax with same-item columns masked. Either way Adam is one fused
    ``ResourceApplyAdam`` kernel per variable (the table gradients summed into dense ones).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    user_table = tf.Variable(rng.normal(size=(users, dims)).astype("float32") * 0.05)
    item_table = tf.Variable(rng.normal(size=(items, dims)).astype("float32") * 0.05)
    user_projection = tf.Variable(np.eye(dims, dtype="float32"))
    item_projection = tf.Variable(np.eye(dims, dtype="float32"))
    variables = [user_table, item_table, user_projection, item_projection]
    first = [tf.Variable(tf.zeros_like(v)) for v in variables]
    second = [tf.Variable(tf.zeros_like(v)) for v in variables]
    if distinct:
        from trainer.model import deduplicated_softmax_loss

    def step(user_rows, item_rows):
        with tf.GradientTape() as tape:
            query = tf.math.l2_normalize(tf.matmul(tf.gather(user_table, user_rows), user_projection), axis=1)
            item = tf.math.l2_normalize(tf.matmul(tf.gather(item_table, item_rows), item_projection), axis=1)
            if distinct:
                loss = deduplicated_softmax_loss(query, item, item_rows, temperature, positives=item)
            else:
                logits = tf.matmul(query, item, transpose_b=True) / temperature
                # The same item in another column is an accidental hit: masked out of the row.
                same = tf.cast(tf.equal(item_rows[:, None], item_rows[None, :]), tf.float32) - tf.eye(batch)
                logits = logits - 1e9 * same
                loss = tf.reduce_sum(tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits))
        grads = tape.gradient(loss, variables)
        for var, grad, m, v in zip(variables, grads, first, second):
            tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=0.9, beta2_power=0.999,
                                         lr=0.005, beta1=0.9, beta2=0.999, epsilon=1e-7,
                                         grad=tf.convert_to_tensor(grad), use_locking=False)
        return loss

    return step


def epoch_runner(tf, user_rows, item_rows, batch: int, dims: int = 32, *, distinct: bool = True, seed: int = 0):
    """``run(epoch) -> examples``: one pass over (user row, item row) pairs (int64 [N] each, e.g.
    a real train split's) in a fresh seeded order, ``N // batch`` steps of :func:`make_step`
    in one ``tf.function`` call (a ``tf.range`` loop: no Python, no tf.data, no Keras between
    steps). The step is traced on the first call."""
    import numpy as np

    user_rows, item_rows = np.asarray(user_rows, np.int64), np.asarray(item_rows, np.int64)
    step = tf.function(make_step(tf, batch, dims, int(user_rows.max()) + 1, int(item_rows.max()) + 1, seed,
                                 distinct=distinct))

    @tf.function
    def run_steps(users, items):
        for s in tf.range(tf.shape(users)[0]):
            step(users[s], items[s])

    def run(epoch: int) -> int:
        order = np.random.default_rng([seed, epoch]).permutation(len(user_rows))
        steps = len(order) // batch
        rows = order[: steps * batch].reshape(steps, batch)
        run_steps(tf.constant(user_rows[rows]), tf.constant(item_rows[rows]))
        return steps * batch

    return run


#: The variants timed by :func:`main`: (label, distinct candidates, XLA).
VARIANTS = (("[B, B] masked softmax, plain TF ops", False, False),
            ("[B, B] masked softmax, XLA (jit_compile)", False, True),
            ("distinct candidates (ours' loss), plain TF ops", True, False))


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
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # oneDNN kernels too (trainer.strategy.set_threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import core  # noqa: F401 (sets the TF environment before TensorFlow's import below)
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(1)
    users = tf.constant(rng.integers(0, args.users, args.batch_size))
    weights = 1.0 / np.arange(1, args.items + 1) ** 1.1
    items = tf.constant(rng.choice(args.items, args.batch_size, p=weights / weights.sum()))
    calls = {}
    for label, distinct, jit in VARIANTS:
        step = tf.function(make_step(tf, args.batch_size, args.dims, args.users, args.items, distinct=distinct),
                           jit_compile=jit)

        @tf.function
        def run(step=step):
            for _ in tf.range(args.loop):
                step(users, items)

        run()  # trace + warm
        calls[label] = run
    times = {label: [] for label in calls}
    for r in range(args.repeats):
        for label in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            wall, cpu = time.perf_counter(), time.process_time()
            calls[label]()
            times[label].append((1000 * (time.perf_counter() - wall) / args.loop,
                                 1000 * (time.process_time() - cpu) / args.loop))
    print(f"batch {args.batch_size}, {args.dims} dims, tables {args.users:,} x {args.items:,}, "
          f"{len(set(items.numpy().tolist()))} distinct items in the batch, threads {args.threads or 'default'}, "
          f"{args.loop} steps per call, {args.repeats} calls per variant")
    print("| step | CPU ms / step (median) | wall ms / step (median) |\n|---|---|---|")
    for label in calls:
        cpu = statistics.median(c for _, c in times[label])
        wall = statistics.median(w for w, _ in times[label])
        print(f"| {label} | {cpu:.3f} | {wall:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
