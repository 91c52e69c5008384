"""Training throughput: our trainer (ids-only configuration) vs the TFRS tutorial reference, side by side.

    .venv/bin/python bench/throughput.py                                 # batch 512 and 8192, 5 repeats
    .venv/bin/python bench/throughput.py --repeats 5 --batch-sizes 512,2048,8192
    .venv/bin/python bench/throughput.py --trainer-root /tmp/old-checkout   # "before": another tree's trainer

Data: MovieLens-100K from ``../shared/data/movielens-100k`` (override with ``--source``), converted
like ``twotower data movielens``, ingested and transformed ONCE with ``core/configs/movielens.yaml``
(leave-last-out split: 98,114 train examples). Without the raw files the script prints a message
and exits 0.

Models, all trained on that same train split, at the same batch size, for ``--epochs`` epochs:

- ``ours_ids``: ``trainer.train.train_model`` with ``core/configs/movielens-ids.yaml``, the shipped
  ids-only configuration: user-id and item-id embeddings only, 32-dim L2-normalised output
  (a 32x32 projection, no hidden layer), temperature, logQ correction, accidental-hit removal,
  Adam. Its validation recall@10 equals that of the wider towers below (see the config's
  comment), so it is what a user training on ids alone should run.
- ``ours_ids_streamed``: the same with ``train.in_memory_max_mb=0``, so the train split is streamed
  from its TFRecords (parse + shuffle buffer + id look-up in tf.data, every epoch), the input of a
  split too large to hold in memory.
- ``ours_ids_compiled``: ``ours_ids`` with ``train.compiled_step=true``: the whole step under XLA
  (TFRS's [B, B] softmax, static shapes) instead of the default uncompiled distinct-candidate step.
- ``ours_wide``: ``core/configs/movielens.yaml`` made ids-only (``schema.query_features=[user_id]``,
  ``schema.item_features=[]``, ``train.use_item_ids_as_features=true``,
  ``train.item_id_dropout=0``), keeping its 128-unit hidden layer and 64-dim output: about
  twice the reference's arithmetic per example, for no gain in quality on ids alone. Shown
  so the cost of the wider towers is on the record.
- ``step_floor``: not a trainer, the least a step of our loss costs here: bench/step_floor.py's
  hand-written distinct-candidate step (the two id tables and 32x32 projections of ``ours_ids``,
  ``trainer.model.deduplicated_softmax_loss``, one fused Adam kernel per variable) run over the
  same train split's (user, item) pairs, every epoch a fresh seeded order, all steps of an epoch
  inside one ``tf.function`` (no Keras, no tf.data, no logQ, no metrics). Its ratio bounds what
  any trainer with this loss reaches against the reference on these cores.
- ``reference``: ``bench.reference.train_reference`` (TFRS basic-retrieval tutorial: user-id
  and item-id embeddings of 32, Adagrad 0.1, in-batch softmax, ``shuffle(100_000).batch(B).cache()``).

Threads: every model of the run (the reference too) runs under the same TensorFlow thread pools,
``--threads`` or, by default, the ids config's ``train.threads`` (1 in the shipped file), set
through ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` and oneDNN's ``OMP_NUM_THREADS``
before TensorFlow's import (what ``train.threads`` sets in a training process).

What one figure is: examples/s of a run = the median over its epochs of n_train / the epoch's
seconds (wall), and CPU examples/s the same with the process CPU time of the epoch (all
threads). The host of these 2-core VMs takes cores away at random (steal), which can halve a
wall figure from one epoch to the next; CPU time does not grow with steal, so the CPU figure
is the steadier one, while wall time is what a user waits for. An epoch covers only the
training pass:

- ours: building that epoch's batches (``InMemoryExamples.epoch_dataset``) + ``model.fit`` over
  them; NOT the validation recall, checkpoint, TensorBoard write after it, nor the one-off parse of
  the TFRecords, model build and export (``trainer/train.py``: ``EpochResult.seconds``);
- reference: ``model.fit`` over its cached batches; NOT the parse + shuffle + cache fill that
  precedes the first epoch, nor the export.

Every one of ours trains ``--epochs`` epochs at the batch size of the row (patience raised so
early stopping never ends a run), seed 0. All include the first epoch's tracing of the train
function (each model's own); the median over 3 epochs does not depend on that one slow epoch. Interleaving: in repeat r the models run back to
back at each batch size, in ``MODELS`` order on even r and reversed on odd r, so slow drifts in
the machine's load hit all of them; the ratio of a repeat is ours / reference of that repeat and
the reported ratio is the median of the per-repeat ratios. All runs are in this one process.

Writes ``bench/results/throughput.json`` (``--out`` to change) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOVIELENS_RAW = REPO.parent / "shared" / "data" / "movielens-100k"
RESULTS = REPO / "bench" / "results" / "throughput.json"


def _setup_paths(trainer_root: Path | None) -> None:
    roots = [REPO] if trainer_root is None else [trainer_root, REPO]
    for root in reversed(roots):
        if str(root) in sys.path:
            sys.path.remove(str(root))
        sys.path.insert(0, str(root))
    import core  # noqa: F401 (the first tree's core: sets the TF environment before TensorFlow's import)


def ids_only_overrides(config) -> dict:
    """Ours on the reference's inputs: the query key and item-id embeddings, nothing else."""
    key = config.schema.query_key
    out = {"schema.query_features": [{"name": key, "type": "id"}], "schema.item_features": [],
           "schema.display_fields": [], "train.use_item_ids_as_features": True}
    if "item_id_dropout" in type(config.train).model_fields:
        out["train.item_id_dropout"] = 0.0
    return out


def prepare(source: Path, work: Path, root: Path = REPO):
    """(configs, transformed_dir): MovieLens converted, ingested and transformed once with
    ``root``/core/configs/movielens.yaml (the config of the tree whose code runs; trees older than
    the move into the package keep it in ``root``/configs/); ``configs`` maps
    each of our models in :data:`MODELS` to its config (see :func:`model_configs`)."""
    from core.config import load_config
    from datagen.movielens import convert_movielens
    from features.ingest import ingest
    from features.transform import run_transform

    data = work / "data" / "movielens"
    convert_movielens(str(source), str(data))
    overrides = [f"data.path={data}", f"publish.store={work}/store", f"pipeline.runs_dir={work}/runs"]
    shipped = root / "core" / "configs"
    config = load_config((shipped if shipped.is_dir() else root / "configs") / "movielens.yaml", overrides)
    ingested, transformed = work / "ingested", work / "transformed"
    ingest(config, str(ingested))
    started = time.perf_counter()
    stats = run_transform(config, str(ingested), str(transformed))
    print(f"[throughput] transform: {stats.get('counts')} in {time.perf_counter() - started:.0f}s", flush=True)
    return model_configs(config, load_config(IDS_CONFIG, overrides)), str(transformed)


#: The models of one repeat, in run order (reversed on odd repeats). ``ours_ids_streamed`` is
#: ``ours_ids`` with ``train.in_memory_max_mb=0``: the split streamed from its TFRecords every
#: epoch (the input of a split too large to hold), where ``ours_ids`` holds it in memory.
MODELS = ("ours_ids", "ours_ids_streamed", "ours_ids_compiled", "ours_wide", "step_floor", "reference")

#: ``ours_ids``: the shipped ids-only configuration (always this tree's file).
IDS_CONFIG = REPO / "core" / "configs" / "movielens-ids.yaml"


def _config_threads() -> int:
    """``train.threads`` of the ids config (0 when this tree's config has no such option)."""
    from core.config import load_config

    return int(getattr(load_config(IDS_CONFIG).train, "threads", 0))


def model_configs(movielens, ids) -> dict:
    """``{"ours_ids": core/configs/movielens-ids.yaml, "ours_wide": core/configs/movielens.yaml made
    ids-only}`` (the second keeps movielens.yaml's 128-unit hidden layer and 64-dim output)."""
    out = {"ours_ids": ids, "ours_wide": movielens.with_overrides(ids_only_overrides(movielens)), "step_floor": ids}
    if "in_memory_max_mb" in type(ids.train).model_fields:  # an older --trainer-root has no such option
        out["ours_ids_streamed"] = ids.with_overrides({"train.in_memory_max_mb": 0})
    if "compiled_step" in type(ids.train).model_fields:
        out["ours_ids_compiled"] = ids.with_overrides({"train.compiled_step": True})
    return out


def run_ours(config, transformed: str, out: Path, batch_size: int, epochs: int) -> dict:
    """``config`` trained as is, except the batch size, ``epochs`` epochs (no early stop), seed 0."""
    from trainer.train import train_model

    cfg = config.with_overrides({"train.batch_size": batch_size, "train.n_epochs": epochs,
                                 "train.patience": epochs, "train.seed": 0, "train.resume": False})
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = train_model(cfg, transformed, str(out))
    return {**_rates(summary), "run_seconds": time.perf_counter() - started,
            "input": summary.get("input"), "candidate_dedup": summary.get("candidate_dedup"),
            "compiled_step": summary.get("compiled_step"), "step_input": summary.get("step_input"),
            "val_recall_at_10": summary["history"][-1]["val_recall_at_10"]}


def run_reference(config, transformed: str, out: Path, batch_size: int, epochs: int) -> dict:
    from bench.reference import ReferenceSettings, train_reference

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = train_reference(config, transformed, str(out), seed=0,
                              settings=ReferenceSettings(batch_size=batch_size, epochs=epochs))
    return {**_rates(summary), "run_seconds": time.perf_counter() - started}


def run_step_floor(config, transformed: str, batch_size: int, epochs: int) -> dict:
    """``bench.step_floor``'s distinct-candidate step (our loss, fused Adam, no Keras, no tf.data,
    no logQ) over the train split's own (user, item) pairs, ``epochs`` seeded passes of
    n_train // B steps; timed like an epoch of the others."""
    import numpy as np
    import tensorflow as tf

    from bench.step_floor import epoch_runner
    from core.records import interaction_specs
    from trainer import artifacts
    from trainer.data import InMemoryExamples

    key = config.schema.query_key
    columns = InMemoryExamples.from_files(artifacts.require_split_files(transformed, "train"),
                                          interaction_specs(config.schema)).columns
    rows = {name: np.unique(columns[name].numpy(), return_inverse=True)[1] for name in (key, "item_id")}
    run = epoch_runner(tf, rows[key], rows["item_id"], batch_size, config.train.embedding_dims)
    seconds, cpu_seconds, examples = [], [], 0
    for epoch in range(1, epochs + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        examples = run(epoch)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return {"examples_per_second": statistics.median(examples / s for s in seconds),
            "cpu_examples_per_second": statistics.median(examples / s for s in cpu_seconds),
            "n_train": examples, "epoch_seconds": seconds, "epoch_cpu_seconds": cpu_seconds}


def run_model(model: str, configs: dict, transformed: str, out: Path, batch_size: int, epochs: int) -> dict:
    """One run of ``model`` (a name in :data:`MODELS`); the reference reads the ids config's keys."""
    if model == "reference":
        return run_reference(configs["ours_ids"], transformed, out, batch_size, epochs)
    if model == "step_floor":
        return run_step_floor(configs["ours_ids"], transformed, batch_size, epochs)
    return run_ours(configs[model], transformed, out, batch_size, epochs)


def _rates(summary: dict) -> dict:
    """The throughput fields of a training.json: wall and CPU examples/s and per-epoch seconds."""
    return {"examples_per_second": summary["examples_per_second"],
            "cpu_examples_per_second": summary.get("cpu_examples_per_second"), "n_train": summary["n_train"],
            "epoch_seconds": [h["seconds"] for h in summary["history"]],
            "epoch_cpu_seconds": [h.get("cpu_seconds") for h in summary["history"]]}


def summarise(runs: list[dict], batch_size: int, model: str) -> dict:
    """One table row: ``model`` vs the reference at ``batch_size``, wall and CPU, per-repeat ratios."""
    def by_repeat(name: str, field: str) -> dict:
        # An older trainer (--trainer-root) records no CPU time: those runs have no CPU figure.
        return {r["repeat"]: r[field] for r in runs
                if r["model"] == name and r["batch_size"] == batch_size and r.get(field)}

    def median(values) -> float | None:
        values = list(values)
        return statistics.median(values) if values else None

    row = {"batch_size": batch_size, "model": model}
    for field, label in (("examples_per_second", "wall"), ("cpu_examples_per_second", "cpu")):
        ours, ref = by_repeat(model, field), by_repeat("reference", field)
        ratios = [ours[k] / ref[k] for k in sorted(ours) if k in ref]
        row[label] = {"ours_median": median(ours.values()), "reference_median": median(ref.values()),
                      "ratio_median": median(ratios), "ratios": ratios,
                      "repeats_at_or_above_1": sum(r >= 1.0 for r in ratios)}
    return row


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    lines = ["| batch size | ours | wall ex/s, ours / reference (medians) | **wall ratio** (median of per-repeat) | "
             "per-repeat wall ratios | CPU ex/s, ours / reference | **CPU ratio** | per-repeat CPU ratios |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        w, c = row["wall"], row["cpu"]
        lines.append(f"| {row['batch_size']} | {row['model']} | {_num(w['ours_median'], ',.0f')} / "
                     f"{_num(w['reference_median'], ',.0f')} | **{_num(w['ratio_median'], '.2f')}x** | "
                     f"{', '.join(f'{r:.2f}' for r in w['ratios'])} | {_num(c['ours_median'], ',.0f')} / "
                     f"{_num(c['reference_median'], ',.0f')} | **{_num(c['ratio_median'], '.2f')}x** | "
                     f"{', '.join(f'{r:.2f}' for r in c['ratios'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=MOVIELENS_RAW, help="raw MovieLens-100K folder")
    parser.add_argument("--batch-sizes", default="512,8192",
                        help="comma list; the config's default batch size is always added")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None, help="kept when given (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trainer-root", type=Path, default=None,
                        help="import trainer/, core/, features/ from this tree instead (e.g. an older "
                             "checkout, for before/after); the reference always comes from it too")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra- and inter-op threads for every model, the reference too "
                             "(default: the ids config's train.threads; 0 = TensorFlow's default)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma list of {', '.join(MODELS)} (the reference always runs)")
    args = parser.parse_args(argv)
    models = {m.strip() for m in args.models.split(",") if m.strip()} | {"reference"}
    if models - set(MODELS):
        parser.error(f"--models: unknown {sorted(models - set(MODELS))}")
    if args.repeats < 1 or args.epochs < 1:
        parser.error("--repeats and --epochs must be >= 1")
    if not (args.source / "u.data").exists():
        print(f"[throughput] {args.source} has no MovieLens-100K (u.data): skipped", flush=True)
        return 0
    _setup_paths(args.trainer_root)
    threads = args.threads if args.threads is not None else _config_threads()
    if threads > 0:  # before TensorFlow's import: every model of this process, the reference too
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # oneDNN's kernels, as trainer.strategy.set_threads does

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="twotower-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(timezone.utc)
    try:
        configs, transformed = prepare(args.source, work, args.trainer_root or REPO)
        sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()}
                       | {configs["ours_ids"].train.batch_size})
        runs: list[dict] = []
        for repeat in range(args.repeats):
            for bs in sizes:
                order = MODELS if repeat % 2 == 0 else MODELS[::-1]
                for model in (m for m in order if m in models and (m == "reference" or m in configs)):
                    load_before = os.getloadavg()[0]
                    out = work / "runs" / f"{model}-{bs}-{repeat}"
                    res = run_model(model, configs, transformed, out, bs, args.epochs)
                    res.update(model=model, batch_size=bs, repeat=repeat, loadavg_1min_before=load_before,
                               loadavg_1min_after=os.getloadavg()[0])
                    print(f"[throughput] repeat {repeat} batch {bs} {model}: {res['examples_per_second']:,.0f} ex/s, "
                          f"CPU {_num(res['cpu_examples_per_second'], ',.0f')} ex/s "
                          f"(epochs {', '.join(f'{s:.2f}s' for s in res['epoch_seconds'])}; "
                          f"load {load_before:.1f} -> {res['loadavg_1min_after']:.1f})", flush=True)
                    runs.append(res)
        rows = [summarise(runs, bs, model) for bs in sizes for model in MODELS if model in configs and model in models]
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    text = table(rows)
    print("\n" + text + "\n", flush=True)
    import tensorflow as tf

    result = {
        "benchmark": "training throughput, ids-only ours vs TFRS basic-retrieval reference (MovieLens-100K "
                     "leave-last-out train split)",
        "command": " ".join([".venv/bin/python", "bench/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "started_utc": started_at.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__, "cpus": os.cpu_count()},
        "trainer_root": str(args.trainer_root or REPO),
        "epochs": args.epochs, "repeats": args.repeats,
        "figure": "examples/s = median over epochs of n_train / epoch seconds (wall), CPU examples/s the same "
                  "with process CPU seconds; training passes only (ours: epoch batches + model.fit; reference: "
                  "model.fit over cached batches); validation, checkpoints, parsing, export excluded for all",
        "models": list(MODELS), "ids_config": str(IDS_CONFIG.relative_to(REPO)),
        "threads": threads or "TensorFlow's default",
        "rows": rows, "runs": runs, "table": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[throughput] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
