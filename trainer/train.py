"""Training stage: ``train_model(config, transformed_dir, out_dir) -> dict``.

Writes (see docs/ARCHITECTURE.md, "train"):

- ``query_tower/``, ``item_tower/``: SavedModels loadable with :class:`core.towers.Tower`;
- ``training.json``: ``{"history": [{"epoch", "loss", "val_recall_at_10", "seconds",
  "cpu_seconds"}], "best_epoch", "examples_per_second", "cpu_examples_per_second", "n_train",
  ...}``; ``epoch`` is 1-based, ``seconds`` is the wall time of the epoch's training pass
  (validation excluded), ``cpu_seconds`` the process CPU time of that pass, and
  ``examples_per_second`` / ``cpu_examples_per_second`` the medians over epochs of
  n_train / seconds and n_train / cpu_seconds;
- ``tensorboard/``: per-epoch scalars.

``training.json`` also records ``distribute`` and ``num_replicas`` (the replicas in sync: 2
for two single-device workers). Under a distributed strategy the logged loss is the sum over
replicas (Keras's default reduction) of each replica's summed in-batch loss.

After every epoch the validation recall@10 is computed against the whole catalog
(each key's train items masked) for at most ``train.max_eval_queries`` validation keys:
above that, a seeded sample of them (:func:`core.sampling.sample_keys`, seed
``train.seed``), the same keys every epoch, so epochs are compared on the same queries;
training stops after ``train.patience`` epochs without improvement and the best epoch's
weights are restored before export. Without a valid split there is no early stopping
and the last epoch is kept.

Options (``train.*``, all off by default): mixed negative sampling
(``negative_samples_count``), labelled negatives (``labelled_negative_weight``), hard
negatives (``hard_negatives``), lr schedules (``lr_schedule``), tf.distribute
(``distribute``), op determinism (``deterministic``), and resuming from the per-epoch
checkpoints in ``<out_dir>/checkpoints`` (``resume``; see :mod:`trainer.checkpoint`).

TensorFlow is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import atexit
import json
import shutil
import statistics
import tempfile
import time
from typing import Optional

from trainer.epochs import EpochResult, fit_with_early_stopping

VALID_METRIC = "recall_at_10"

#: Train steps per call into the compiled train function (Keras ``steps_per_execution``):
#: a Python round trip per step cost ~2 ms of CPU at batch 512 on 2 busy cores
#: (11.5 -> 9.4 ms per step measured, ids-only MovieLens). The loss logged for an epoch is
#: still its last batch's, and the optimizer still steps once per batch.
STEPS_PER_EXECUTION = 16


def _median_rate(n: int, seconds: list) -> Optional[float]:
    """Median over epochs of ``n`` / seconds, skipping epochs without a figure (None: none had one)."""
    known = [n / max(float(x), 1e-9) for x in seconds if x is not None]
    return statistics.median(known) if known else None


def _steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one pass (the last batch may be smaller)."""
    return -(-n_train // batch_size)


def _item_tower_is_deterministic(config) -> bool:
    """Whether every copy of an item in a batch gets the same training embedding (no
    dropout, no item-id dropout), so the loss may score distinct candidates once
    (:func:`trainer.model.deduplicated_softmax_loss`)."""
    t = config.train
    return t.dropout == 0.0 and t.item_id_dropout == 0.0


def _build_variables(model, batch) -> None:
    """Create the towers' and optimizer's variables (a checkpoint restore needs them to exist)."""
    model.query_tower(batch, training=False)
    model.item_tower(batch, training=False)
    model.optimizer.build(model.trainable_variables)


def train_model(config, transformed_dir: str, out_dir: str) -> dict:
    """Train the two towers on ``transformed_dir`` and export them to ``out_dir``.

    Args:
        config: validated :class:`core.config.Config`.
        transformed_dir: the transform stage's folder (local or gs://).
        out_dir: where ``query_tower/``, ``item_tower/``, ``training.json`` and
            ``tensorboard/`` are written.
    Returns:
        The ``training.json`` dict.
    Raises:
        FileNotFoundError: no train split, catalog or a vocabulary file.
        RuntimeError: ``train.device`` is gpu and none is visible.
        ValueError: ``train.distribute`` is multi_worker without ``TF_CONFIG``; a
            checkpoint to resume from does not fit the model.
    """
    from trainer.tfenv import import_tf

    tf = import_tf()
    from core.records import interaction_specs
    from trainer import artifacts
    from trainer.artifacts import HELDOUT_DIR
    from trainer.checkpoint import TrainingCheckpoint
    from trainer.data import (InMemoryExamples, StreamedExamples, block_rows_for, count_records, files_size,
                              labelled_negatives_dataset, make_dataset, with_labelled_negatives)
    from trainer.evalset import load_catalog, load_queries
    from trainer.export import embed_columns, export_tower, serving_function
    from trainer.features import build_towers
    from trainer.loop import ChunkedTrainLoop
    from trainer.metrics import embedding_retrieval_metrics
    from trainer.model import SamplingProbability, TwoTowerModel
    from trainer.optimizers import make_optimizer
    from trainer.negatives import CatalogSampler
    from trainer.step_input import compiled_step_plan, look_up_columns
    from trainer.strategy import (MULTI_WORKER_STEPS_PER_EXECUTION, device_scope, is_chief, make_strategy,
                                  set_determinism, set_threads, task_of)

    t = config.train
    out_dir = out_dir.rstrip("/")
    set_threads(t.threads)  # before anything starts TensorFlow's runtime
    set_determinism(t.deterministic)
    tf.keras.utils.set_random_seed(t.seed)
    strategy = make_strategy(t.distribute, t.device)
    multi_worker = t.distribute == "multi_worker"
    chief = is_chief(strategy)
    # Every multi-worker replica saves (the collectives need it), only the chief where it counts;
    # the others write to a temporary folder (removed at the end), as TensorFlow's docs prescribe.
    work_dir = out_dir if chief else tempfile.mkdtemp(prefix="twotower-worker-")
    if not chief:  # also when training fails (removed at the end of a run that does not)
        atexit.register(shutil.rmtree, work_dir, True)
    tf.io.gfile.makedirs(work_dir)
    if multi_worker:
        task_type, task_index = task_of(strategy)
        print(f"[train] multi_worker: task {task_type}:{task_index}, "
              f"{getattr(strategy.extended, '_num_workers', 1)} workers, "
              f"{strategy.num_replicas_in_sync} replicas in sync, "
              f"{'chief, writing ' + work_dir if chief else 'not the chief, writing a temporary ' + work_dir}, "
              f"{MULTI_WORKER_STEPS_PER_EXECUTION} step(s) per train call (see trainer.strategy)",
              flush=True)

    specs = interaction_specs(config.schema)
    train_files = artifacts.require_split_files(transformed_dir, "train")
    # A train split that fits in memory is parsed once; each epoch is then a fresh seeded
    # permutation of in-memory rows (no per-epoch parse, no shuffle buffer). Multi-worker
    # input is sharded by hand (each replica its slice of every global batch, see
    # multi_worker_input below), not by tf.data's auto-shard rewrite.
    in_memory = files_size(train_files) <= t.in_memory_max_mb * (1 << 20)
    examples = (InMemoryExamples.from_files(train_files, specs, num_parallel_calls=t.num_workers)
                if in_memory else None)
    n_train = examples.size if in_memory else count_records(train_files)
    if n_train == 0:
        raise ValueError(f"{transformed_dir}: the train split is empty")
    streamed = None
    if not in_memory and not multi_worker:
        cache_dir = None
        if t.stream_cache:  # local disk, this process's own; removed when it exits
            cache_dir = tempfile.mkdtemp(prefix="twotower-stream-cache-")
            atexit.register(shutil.rmtree, cache_dir, True)
        streamed = StreamedExamples(
            train_files, specs, block_rows=block_rows_for(train_files, n_train, t.stream_block_mb, t.batch_size),
            num_parallel_calls=t.num_workers, cache_dir=cache_dir)
    negatives = None
    if t.labelled_negative_weight > 0.0 and not multi_worker:
        negatives = labelled_negatives_dataset(artifacts.split_files(transformed_dir, "train_negatives"), specs,
                                               t.batch_size, seed=t.seed, num_parallel_calls=t.num_workers)

    def positives_for(epoch: int):
        """Batches of train positives for 1-based ``epoch``."""
        if examples is None:
            if streamed is None:  # multi_worker streams through multi_worker_input; this is for building
                return make_dataset(train_files, specs, t.batch_size, shuffle=False, num_parallel_calls=t.num_workers)
            return streamed.epoch_dataset(t.batch_size, seed=t.seed, epoch=epoch)
        return examples.epoch_dataset(t.batch_size, seed=t.seed, epoch=epoch)

    steps_per_epoch = _steps_per_epoch(n_train, t.batch_size)
    negatives_files = (artifacts.split_files(transformed_dir, "train_negatives")
                       if t.labelled_negative_weight > 0.0 else None)

    def multi_worker_input(epoch: int, context):
        """One worker's input (``distribute_datasets_from_function``): the slices of every
        global batch that belong to its replicas, so a step's replicas together train on the
        global batch of ``train.batch_size`` rows a single process would (the same seeded
        order), and every worker runs ``steps_per_epoch`` steps (collectives need equal counts)."""
        workers, worker = context.num_input_pipelines, context.input_pipeline_id
        replicas = context.num_replicas_in_sync
        local = replicas // workers
        per_replica = -(-t.batch_size // replicas)
        if examples is not None:
            positives = examples.epoch_dataset(t.batch_size, seed=t.seed, epoch=epoch,
                                               parts=range(worker * local, (worker + 1) * local), n_parts=replicas)
        else:  # streamed: this worker's records, endless, cut to steps_per_epoch by fit
            positives = make_dataset(train_files, specs, per_replica, shuffle=True, seed=t.seed + epoch,
                                     num_parallel_calls=t.num_workers, repeat=True, shard=(worker, workers))
        if negatives_files is None:
            return positives
        worker_negatives = labelled_negatives_dataset(negatives_files, specs, per_replica, seed=t.seed,
                                                      num_parallel_calls=t.num_workers, shard=(worker, workers))
        return positives if worker_negatives is None else with_labelled_negatives(positives, worker_negatives)

    def dataset_for(epoch: int):
        if multi_worker:
            return strategy.distribute_datasets_from_function(lambda context: multi_worker_input(epoch, context))
        positives = positives_for(epoch)
        return positives if negatives is None else with_labelled_negatives(positives, negatives)

    # A warm start (the live version's weights) trains fewer epochs; no live version = cold.
    warm_source = None
    if t.warm_start:
        from trainer.warm_start import live_weights

        warm_cache = tempfile.mkdtemp(prefix="twotower-warm-")
        atexit.register(shutil.rmtree, warm_cache, True)
        warm_source = live_weights(config.publish.store, warm_cache)
    n_epochs = t.warm_start_epochs if warm_source is not None else t.n_epochs
    lr_scale = t.warm_start_lr_scale if warm_source is not None else 1.0
    # A carried optimizer state brings its step count: the lr schedule counts from there.
    carry_optimizer = t.warm_start and t.warm_start_optimizer == "carry"
    first_step = 0
    if warm_source is not None and carry_optimizer:
        from trainer.optimizers import optimizer_class
        from trainer.warm_start import carried_step

        first_step = carried_step(warm_source[1], optimizer_class(t.optimizer).__name__)
    total_steps = n_epochs * steps_per_epoch

    catalog = load_catalog(config, transformed_dir)
    # Validation costs keys x items per epoch: a fixed seeded sample of the keys (0 = all).
    valid = load_queries(config, transformed_dir, "valid", ("train",), catalog,
                         max_queries=t.max_eval_queries, seed=t.seed)
    if valid.sampled:
        print(f"[train] validation on {len(valid):,} of {valid.n_total:,} valid keys "
              f"(train.max_eval_queries, seed {t.seed})", flush=True)

    logq = SamplingProbability.from_vocab(transformed_dir) if t.logq_correction else None
    sampler = (CatalogSampler.from_catalog(config, transformed_dir, catalog)
               if t.negative_samples_count > 0 else None)

    def new_model(planned_steps: int):
        """Fresh towers, model and optimizer (call under the strategy's scope)."""
        towers_ = build_towers(config, transformed_dir)
        model_ = TwoTowerModel(*towers_, t.temperature, sampling_probability=logq,
                               negative_sampler=sampler, negative_samples_count=t.negative_samples_count,
                               num_hard_negatives=t.hard_negatives,
                               labelled_negative_weight=t.labelled_negative_weight,
                               dedupe_candidates=_item_tower_is_deterministic(config))
        return towers_, model_, make_optimizer(config, planned_steps, lr_scale, first_step)

    with strategy.scope(), device_scope(t.distribute, t.device):
        (query_tower, item_tower), model, optimizer = new_model(total_steps)
        plan = compiled_step_plan(config, (query_tower, item_tower), in_memory=in_memory, multi_worker=multi_worker)
        towers = (query_tower, item_tower)
        if plan.looked_up and examples is not None:  # the split's ids become table rows once (step_input.py)
            examples = InMemoryExamples(look_up_columns(examples.columns, towers, logq))
        elif plan.looked_up:  # streamed: looked up once per block, as the block is parsed
            streamed = streamed.with_prepare(lambda block: look_up_columns(block, towers, logq))
        if streamed is not None:  # parsed once, like an in-memory split, before the first epoch
            started = time.perf_counter()
            streamed.fill_cache(t.batch_size)
            if streamed.cache_dir is not None:
                print(f"[train] streamed split parsed into {streamed.cache_dir} in "
                      f"{time.perf_counter() - started:.1f}s (blocks of {streamed.block_rows:,} records)", flush=True)
        if plan.compiled:  # XLA needs static shapes: TFRS's [B, B] softmax, not the distinct candidates'
            model.dedupe_candidates = False
        model.compile(optimizer=optimizer, jit_compile=plan.compiled,
                      steps_per_execution=(MULTI_WORKER_STEPS_PER_EXECUTION if multi_worker else STEPS_PER_EXECUTION))
    print(f"[train] step: {'compiled with XLA' if plan.compiled else 'not compiled (' + str(plan.why_not) + ')'}, "
          f"ids {'looked up once ahead' if plan.looked_up else 'looked up in every step'}", flush=True)
    # The checkpoint's bookkeeping variables (epoch counter, loop state) are host-side
    # scalars, not replicated model state: created outside the strategy.
    checkpoint = TrainingCheckpoint(work_dir, model, optimizer)
    state = None
    # Multi-worker: every worker must resume from the same epoch (else their step counts differ
    # and the collectives hang), but only the chief's folder holds the checkpoints, and a
    # non-chief replica does not know where it is (components.runtime.run_stage hands it a
    # temporary folder). So a multi-worker run starts from epoch 1, overwriting the checkpoints.
    resume = t.resume and not multi_worker
    if t.resume and multi_worker and checkpoint.latest is not None:
        print(f"[train] train.resume: not resuming from {checkpoint.latest} under multi_worker (the other "
              "workers cannot read the chief's checkpoints); training from epoch 1", flush=True)
    if resume and checkpoint.latest is not None:
        with strategy.scope(), device_scope(t.distribute, t.device):
            _build_variables(model, next(iter(positives_for(1))))
        state = checkpoint.restore(snapshot=model.get_weights)
        print(f"[train] resuming from {checkpoint.latest}: {len(state.history)} epoch(s) done"
              f"{', early stopping already ended training' if state.stopped else ''}", flush=True)
    warm_report = {"from": None, "epochs": n_epochs, "lr_scale": lr_scale}
    if warm_source is not None and state is None:  # a resumed run has its own weights already
        from trainer.warm_start import warm_start

        with strategy.scope(), device_scope(t.distribute, t.device):
            _build_variables(model, next(iter(positives_for(1))))
            loaded = warm_start((query_tower, item_tower), warm_source[1], optimizer if carry_optimizer else None)
        optimizer_state = loaded["optimizer"] or {"state": "fresh", "why": "train.warm_start_optimizer=fresh",
                                                  "iterations": 0}
        # The schedule counts from the step carried_step promised: the load must have carried it.
        assert optimizer_state.get("iterations", 0) == first_step, (optimizer_state, first_step)
        warm_report.update({"from": warm_source[0], "copied": len(loaded["copied"]), "fresh": loaded["fresh"],
                            "remapped": loaded["remapped"], "optimizer": optimizer_state})
        print(f"[train] warm start from live version {warm_source[0]}: {len(loaded['copied'])} variables copied, "
              f"{len(loaded['remapped'])} tables remapped by token, {len(loaded['fresh'])} fresh; optimizer state "
              f"{optimizer_state['state']}" + (f" at step {optimizer_state['iterations']}"
                                               if optimizer_state["state"] == "carried" else
                                               f" ({optimizer_state['why']})") + f"; {n_epochs} epoch(s)", flush=True)

    with device_scope(t.distribute, t.device):
        query_serve, item_serve = serving_function(query_tower), serving_function(item_tower)

        chunked = (ChunkedTrainLoop(model) if t.distribute == "none" and not plan.compiled and negatives is None
                   else None)
        source = examples if examples is not None else streamed

        def train_epoch(epoch: int) -> float:
            if chunked is not None:  # batches as tensors, many steps per call (trainer/loop.py)
                return chunked.run_epoch(source.epoch_chunks(t.batch_size, seed=t.seed, epoch=epoch))
            # A distributed dataset, or streamed TFRecords, has no known cardinality, and with
            # steps_per_execution > 1 fit needs the step count (it is exact for every input).
            hist = model.fit(dataset_for(epoch), epochs=1, verbose=0, steps_per_epoch=steps_per_epoch)
            return hist.history["loss"][-1]

        def validate(epoch: int) -> Optional[float]:
            if not len(valid):
                return None
            items = embed_columns(item_serve, item_tower, catalog.features)
            queries = embed_columns(query_serve, query_tower, valid.features)
            metrics = embedding_retrieval_metrics(queries, items, valid.relevant, valid.masked, ks=(10,),
                                                  ndcg_k=10)
            return metrics[VALID_METRIC]

        writer = tf.summary.create_file_writer(f"{work_dir}/tensorboard")

        def on_epoch(result: EpochResult, best: bool) -> None:
            rate = n_train / max(result.seconds, 1e-9)
            val = "n/a" if result.val_recall_at_10 is None else f"{result.val_recall_at_10:.4f}"
            print(f"[train] epoch {result.epoch}/{n_epochs} loss={result.loss:.4f} "
                  f"val_recall@10={val}{' *' if best else ''} {result.seconds:.1f}s {rate:,.0f} ex/s",
                  flush=True)
            with writer.as_default(step=result.epoch):
                tf.summary.scalar("loss", result.loss)
                tf.summary.scalar("examples_per_second", rate)
                if result.val_recall_at_10 is not None:
                    tf.summary.scalar("val_recall_at_10", result.val_recall_at_10)
            writer.flush()

        history, best_epoch = fit_with_early_stopping(
            n_epochs, t.patience, train_epoch, validate,
            snapshot=model.get_weights, restore=model.set_weights, on_epoch=on_epoch,
            state=state, save_state=checkpoint.save)
        writer.close()

    if t.warm_start:
        # What the next warm-started run starts from, once this one is published: the
        # early-stopped weights, trained on the train split only. A refit's weights have seen
        # this run's valid and test pairs, which tomorrow's held-out splits mostly repeat (a
        # user without new interactions keeps the same last one): starting there, tomorrow's
        # evaluation and gate would score the model on pairs it trained on.
        from trainer.warm_start import WARM_DIR, save_weights

        save_weights((query_tower, item_tower), f"{work_dir}/{WARM_DIR}", optimizer if carry_optimizer else None)

    refit = None
    if t.refit != "none":
        # The early-stopped model is what evaluate scores and the gate judges; the model
        # published (query_tower/, item_tower/) has also seen the held-out splits.
        export_tower(query_tower, f"{work_dir}/{HELDOUT_DIR}/query_tower")
        export_tower(item_tower, f"{work_dir}/{HELDOUT_DIR}/item_tower")
        everything = InMemoryExamples.from_files(
            [*train_files, *artifacts.split_files(transformed_dir, "valid"),
             *artifacts.split_files(transformed_dir, "test")], specs, num_parallel_calls=t.num_workers)
        epochs = best_epoch if t.refit == "full" else t.refit_epochs
        started = time.perf_counter()
        if t.refit == "full":  # from scratch, as many epochs as early stopping chose
            tf.keras.utils.set_random_seed(t.seed)
            with strategy.scope(), device_scope(t.distribute, t.device):
                (query_tower, item_tower), model, optimizer = new_model(
                    epochs * _steps_per_epoch(everything.size, t.batch_size))
                model.compile(optimizer=optimizer, steps_per_execution=STEPS_PER_EXECUTION)
                if warm_report.get("from") is not None:  # the refit starts where this run started
                    from trainer.warm_start import warm_start

                    _build_variables(model, next(iter(everything.epoch_dataset(t.batch_size))))
                    warm_start((query_tower, item_tower), warm_source[1], optimizer if carry_optimizer else None)
        if plan.looked_up:
            everything = InMemoryExamples(look_up_columns(everything.columns, (query_tower, item_tower), logq))
        with device_scope(t.distribute, t.device):
            refit_loop = ChunkedTrainLoop(model) if chunked is not None else None
            losses = []
            for epoch in range(1, epochs + 1):
                seed_epoch = epoch + (0 if t.refit == "full" else best_epoch)
                if refit_loop is not None:
                    losses.append(refit_loop.run_epoch(everything.epoch_chunks(t.batch_size, seed=t.seed,
                                                                               epoch=seed_epoch)))
                else:
                    data = everything.epoch_dataset(t.batch_size, seed=t.seed, epoch=seed_epoch)
                    if negatives is not None:
                        data = with_labelled_negatives(data, negatives)
                    losses.append(model.fit(data, epochs=1, verbose=0).history["loss"][-1])
                print(f"[train] refit ({t.refit}) epoch {epoch}/{epochs} on train+valid+test "
                      f"({everything.size:,} examples) loss={losses[-1]:.4f}", flush=True)
        refit = {"mode": t.refit, "epochs": epochs, "examples": everything.size,
                 "splits": ["train", "valid", "test"], "losses": [float(x) for x in losses],
                 "seconds": round(time.perf_counter() - started, 3)}

    # Exported outside the device scope so the SavedModel graphs carry no device pins
    # (they are served on CPU machines).
    export_tower(query_tower, f"{work_dir}/query_tower")
    export_tower(item_tower, f"{work_dir}/item_tower")

    best = history[best_epoch - 1]
    summary = {
        "history": [r.as_dict() for r in history],
        "best_epoch": best_epoch,
        "best_val_recall_at_10": best.val_recall_at_10,
        "examples_per_second": _median_rate(n_train, [r.seconds for r in history]),
        "cpu_examples_per_second": _median_rate(n_train, [r.cpu_seconds for r in history]),
        "n_train": n_train,
        # Which data the exported (published) weights saw: the early-stopped model (train
        # only; evaluate scores it) or, with train.refit, a refit over every split.
        "published_weights": (refit or {"mode": "none", "splits": ["train"], "epochs": best_epoch,
                                        "examples": n_train}),
        # How the train passes ran (what examples_per_second measured).
        "input": "in_memory" if in_memory else "streamed",
        "stream_block_rows": streamed.block_rows if streamed is not None else None,
        "candidate_dedup": model.dedupe_candidates,
        # How the train passes ran: trainer/loop.py's chunks, or Keras fit over tf.data.
        "train_loop": "chunked" if chunked is not None else "keras_fit",
        **plan.as_dict(),
        "n_valid_queries": len(valid),
        "n_valid_queries_total": valid.n_total,
        "stopped_early": len(history) < n_epochs,
        # Where the weights started: the live version's (warm) or random (cold, "from": null).
        "warm_start": warm_report if t.warm_start else None,
        # What shaped the curves above, so the report can show them beside the curves.
        "optimizer": t.optimizer, "lr": t.lr, "lr_schedule": t.lr_schedule, "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay, "batch_size": t.batch_size, "n_epochs": n_epochs,
        "temperature": t.temperature,
        # Replicas that trained together (2 for two single-device workers), and how.
        "distribute": t.distribute, "num_replicas": int(strategy.num_replicas_in_sync),
    }
    with tf.io.gfile.GFile(f"{work_dir}/training.json", "w") as fh:
        fh.write(json.dumps(summary, indent=2))
    if not chief:
        shutil.rmtree(work_dir, ignore_errors=True)
    return summary
