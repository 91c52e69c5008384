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
from typing import Optional

from trainer.epochs import EpochResult, WeightAverage, fit_with_early_stopping

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

    The parts, each in its own module: the train split's input (trainer/train_inputs.py),
    where the weights start (trainer/warm_start.py), the epochs with early stopping
    (trainer/epochs.py, validated by :func:`validation_recall`), the refit on every split
    (trainer/refit.py) and the record (:func:`training_summary`).

    Args:
        config: validated :class:`core.config.Config`.
        transformed_dir: the transform stage's folder (local or gs://), or its
            :class:`trainer.artifacts.TransformedData` handle.
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
    from core.contracts import files as names
    from trainer.checkpoint import TrainingCheckpoint
    from trainer.evalset import load_catalog, load_queries
    from trainer.export import export_tower, serving_function
    from trainer.loop import ChunkedTrainLoop
    from trainer.model import SamplingProbability
    from trainer.negatives import CatalogSampler
    from trainer.step_input import compiled_step_plan, look_up_columns
    from trainer.strategy import MULTI_WORKER_STEPS_PER_EXECUTION, device_scope
    from trainer.train_inputs import load_train_inputs
    from trainer.warm_start import WARM_DIR, plan_warm_start, save_weights

    from trainer.artifacts import TransformedData

    t = config.train
    # One handle for every reader below (encoders, logQ, negative sampler, evaluation sets):
    # each vocabulary, stats.json and seen.jsonl is read from disk once.
    transformed_dir = TransformedData.of(transformed_dir)
    strategy, chief, work_dir = _start(config, out_dir.rstrip("/"))
    multi_worker = t.distribute == "multi_worker"
    specs = interaction_specs(config.schema)
    inputs = load_train_inputs(config, transformed_dir, specs, multi_worker=multi_worker)
    warm = plan_warm_start(config)  # the live version's weights, or a cold start
    n_epochs = warm.epochs

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
        return _new_model(config, transformed_dir, planned_steps, warm, logq, sampler)

    with strategy.scope(), device_scope(t.distribute, t.device):
        towers, model, optimizer = new_model(n_epochs * inputs.steps_per_epoch)
        plan = compiled_step_plan(config, towers, in_memory=inputs.in_memory, multi_worker=multi_worker)
        if plan.looked_up:  # the split's ids become table rows once (step_input.py)
            inputs.prepare(lambda columns: look_up_columns(columns, towers, logq))
        inputs.fill_stream_cache()
        if plan.compiled:  # XLA needs static shapes: TFRS's [B, B] softmax, not the distinct candidates'
            model.dedupe_candidates = False
        model.compile(optimizer=optimizer, jit_compile=plan.compiled,
                      steps_per_execution=(MULTI_WORKER_STEPS_PER_EXECUTION if multi_worker else STEPS_PER_EXECUTION))
    print(f"[train] step: {'compiled with XLA' if plan.compiled else 'not compiled (' + str(plan.why_not) + ')'}, "
          f"ids {'looked up once ahead' if plan.looked_up else 'looked up in every step'}", flush=True)
    # The checkpoint's bookkeeping variables (epoch counter, loop state) are host-side
    # scalars, not replicated model state: created outside the strategy.
    checkpoint = TrainingCheckpoint(work_dir, model, optimizer)
    state = _resumed_state(config, strategy, checkpoint, model, lambda: inputs.positives(1))
    warm_report = warm.report()
    if warm.warm and state is None:  # a resumed run has its own weights already
        with strategy.scope(), device_scope(t.distribute, t.device):
            _build_variables(model, next(iter(inputs.positives(1))))
            warm_report = warm.load(towers, optimizer)

    query_tower, item_tower = towers
    with device_scope(t.distribute, t.device):
        query_serve, item_serve = serving_function(query_tower), serving_function(item_tower)
        chunked = (ChunkedTrainLoop(model) if t.distribute == "none" and not plan.compiled and inputs.negatives is None
                   else None)

        def train_epoch(epoch: int) -> float:
            if chunked is not None:  # batches as tensors, many steps per call (trainer/loop.py)
                return chunked.run_epoch(inputs.source.epoch_chunks(t.batch_size, seed=t.seed, epoch=epoch))
            # A distributed dataset, or streamed TFRecords, has no known cardinality, and with
            # steps_per_execution > 1 fit needs the step count (it is exact for every input).
            data = inputs.dataset(epoch, strategy if multi_worker else None)
            return model.fit(data, epochs=1, verbose=0, steps_per_epoch=inputs.steps_per_epoch).history["loss"][-1]

        def validate(epoch: int) -> Optional[float]:
            return validation_recall(valid, catalog, towers, (query_serve, item_serve), config.train.similarity)

        # train.warm_start_keep_start: a warm start's own weights are a candidate too ("epoch 0"):
        # yesterday's optimum on nearly the same data may already be today's, and more epochs on it
        # overfit. Off by default: on the MovieLens replay validation kept the start every day and
        # the chain's test recall fell behind (docs/BENCHMARKS.md).
        start_value = (validate(0) if t.warm_start_keep_start and warm_report.get("copied") is not None
                       else None)
        if start_value is not None:
            warm_report["start_val_recall_at_10"] = start_value
            print(f"[train] warm start's own val_recall@10={start_value:.4f} (epoch 0)", flush=True)
        # train.warm_start_average: a fresh warm start's snapshots (a resumed run lacks its earlier
        # epochs' ends, so it keeps the best epoch as a cold run does).
        average = (_weight_average(t.warm_start_average, model)
                   if warm_report.get("copied") is not None and state is None else None)

        def train_epoch_then_snapshot(epoch: int) -> float:
            loss = train_epoch(epoch)
            average.add(model.get_weights())
            return loss

        log = EpochLog(f"{work_dir}/tensorboard", inputs.n_train, n_epochs)
        history, best_epoch = fit_with_early_stopping(
            n_epochs, t.patience, train_epoch if average is None else train_epoch_then_snapshot, validate,
            snapshot=model.get_weights, restore=model.set_weights,
            on_epoch=log, state=state, save_state=checkpoint.save, start_value=start_value)
        log.close()
        if average is not None:
            model.set_weights(average.mean(model.get_weights()))
            warm_report["averaged"] = {"mode": t.warm_start_average, "snapshots": average.count,
                                       "val_recall_at_10": validate(0)}
            print(f"[train] warm start: the mean of {average.count} weight snapshots "
                  f"({t.warm_start_average}) val_recall@10={warm_report['averaged']['val_recall_at_10']:.4f}",
                  flush=True)
        if start_value is not None:
            warm_report["kept_start"] = best_epoch == 0

    if t.warm_start:
        # What the next warm-started run starts from, once this one is published: the
        # early-stopped weights, trained on the train split only. A refit's weights have seen
        # this run's valid and test pairs, which tomorrow's held-out splits mostly repeat (a
        # user without new interactions keeps the same last one): starting there, tomorrow's
        # evaluation and gate would score the model on pairs it trained on.
        save_weights(towers, f"{work_dir}/{WARM_DIR}", optimizer if warm.carry_optimizer else None)

    cascade = None
    if t.cascade.enabled and chief:
        # The pre-ranker learns to re-order this (early-stopped, train-split) model's top-N; it is
        # trained on the train split too, so evaluate judges both on held-out pairs.
        from trainer.prerank import train_prerank

        cascade = train_prerank(config, transformed_dir, work_dir, catalog, valid,
                                ((query_tower, item_tower), (query_serve, item_serve)))

    refit = None
    trained = None
    if t.refit != "none":
        from trainer.refit import Trained, refit_on_every_split

        # The early-stopped model is what evaluate scores and the gate judges; the model
        # published (query_tower/, item_tower/) has also seen the held-out splits.
        export_tower(query_tower, f"{work_dir}/{names.heldout_tower_dir('query')}")
        export_tower(item_tower, f"{work_dir}/{names.heldout_tower_dir('item')}")

        def start_where_this_run_started(towers_, model_, batch) -> None:
            _build_variables(model_, batch)
            warm.load(towers_, model_.optimizer)

        trained, refit = refit_on_every_split(
            # An averaged warm run's weights are every epoch's: its refit trains as many.
            config, transformed_dir, specs, trained=Trained(towers, model),
            best_epoch=len(history) if "averaged" in warm_report else best_epoch,
            new_model=new_model, start_from=start_where_this_run_started if warm_report["from"] is not None else None,
            average=(lambda m: _weight_average(t.warm_start_average, m)) if "averaged" in warm_report else None,
            strategy=strategy, steps_per_call=STEPS_PER_EXECUTION, looked_up=plan.looked_up, logq=logq,
            chunked=chunked is not None, negatives=inputs.negatives)
        towers, model = trained.towers, trained.model

    # Exported outside the device scope so the SavedModel graphs carry no device pins
    # (they are served on CPU machines).
    export_tower(towers[0], f"{work_dir}/{names.tower_dir('query')}")
    export_tower(towers[1], f"{work_dir}/{names.tower_dir('item')}")
    summary = training_summary(
        config, history, best_epoch, n_train=inputs.n_train, n_epochs=n_epochs, refit=refit, inputs=inputs,
        model=model, chunked=chunked is not None, plan=plan, valid=valid, warm_report=warm_report,
        num_replicas=int(strategy.num_replicas_in_sync))
    if cascade is not None:
        summary["cascade"] = {k: v for k, v in cascade.items() if k != "history"}
    with tf.io.gfile.GFile(f"{work_dir}/{names.TRAINING_FILE}", "w") as fh:
        fh.write(json.dumps(summary, indent=2))
    if not chief:
        shutil.rmtree(work_dir, ignore_errors=True)
    return summary


def _weight_average(mode: str, model) -> Optional[WeightAverage]:
    """train.warm_start_average's running mean for ``model`` (None for ``none``): seeded with
    the model's current (warm start) weights for ``start_and_epochs``."""
    if mode == "none":
        return None
    average = WeightAverage()
    if mode == "start_and_epochs":
        average.add(model.get_weights())
    return average


def _start(config, out_dir: str):
    """Threads, determinism, seed and tf.distribute strategy set for the run; returns
    (strategy, whether this process is the chief, the folder it writes)."""
    from trainer.tfenv import import_tf
    from trainer.strategy import (MULTI_WORKER_STEPS_PER_EXECUTION, is_chief, make_strategy, set_determinism,
                                  set_threads, task_of)

    tf = import_tf()
    t = config.train
    set_threads(t.threads)  # before anything starts TensorFlow's runtime
    set_determinism(t.deterministic)
    tf.keras.utils.set_random_seed(t.seed)
    strategy = make_strategy(t.distribute, t.device)
    chief = is_chief(strategy)
    # Every multi-worker replica saves (the collectives need it), only the chief where it counts;
    # the others write to a temporary folder (removed at the end), as TensorFlow's docs prescribe.
    work_dir = out_dir if chief else tempfile.mkdtemp(prefix="twotower-worker-")
    if not chief:  # also when training fails (removed at the end of a run that does not)
        atexit.register(shutil.rmtree, work_dir, True)
    tf.io.gfile.makedirs(work_dir)
    if t.distribute == "multi_worker":
        task_type, task_index = task_of(strategy)
        print(f"[train] multi_worker: task {task_type}:{task_index}, "
              f"{getattr(strategy.extended, '_num_workers', 1)} workers, "
              f"{strategy.num_replicas_in_sync} replicas in sync, "
              f"{'chief, writing ' + work_dir if chief else 'not the chief, writing a temporary ' + work_dir}, "
              f"{MULTI_WORKER_STEPS_PER_EXECUTION} step(s) per train call (see trainer.strategy)",
              flush=True)
    return strategy, chief, work_dir


def _category_is_multi_valued(config) -> bool:
    """Whether train.category_alignment's feature is multi_categorical (aligned by its first value)."""
    name = config.train.category_alignment.feature
    return any(f.name == name and f.type == "multi_categorical" for f in config.schema.item_features)


def _new_model(config, transformed_dir: str, planned_steps: int, warm, logq, sampler):
    """Fresh towers, model and optimizer (call under the strategy's scope); the optimizer's lr
    follows the schedule over ``planned_steps`` from the warm plan's first step."""
    from trainer.features import build_towers
    from trainer.model import TwoTowerModel
    from trainer.optimizers import make_optimizer

    t = config.train
    towers = build_towers(config, transformed_dir)
    model = TwoTowerModel(*towers, t.temperature, sampling_probability=logq,
                          negative_sampler=sampler, negative_samples_count=t.negative_samples_count,
                          num_hard_negatives=t.hard_negatives, labelled_negative_weight=t.labelled_negative_weight,
                          dedupe_candidates=_item_tower_is_deterministic(config), similarity=t.similarity,
                          mimic_weight=t.augmented_vectors.weight if t.augmented_vectors.enabled else 0.0,
                          category_feature=t.category_alignment.feature,
                          category_multi_valued=_category_is_multi_valued(config),
                          category_weight=t.category_alignment.weight, loss=t.loss)
    return towers, model, make_optimizer(config, planned_steps, warm.lr_scale, warm.first_step)


def _resumed_state(config, strategy, checkpoint, model, first_batches):
    """The loop state of the last epoch checkpoint (weights restored into ``model``), or None
    when the run starts afresh (``train.resume`` off, no checkpoint, or multi-worker).
    ``first_batches()`` gives batches to build the variables from before the restore."""
    from trainer.strategy import device_scope

    t = config.train
    multi_worker = t.distribute == "multi_worker"
    # Multi-worker: every worker must resume from the same epoch (else their step counts differ
    # and the collectives hang), but only the chief's folder holds the checkpoints, and a
    # non-chief replica does not know where it is (components.runtime.run_stage hands it a
    # temporary folder). So a multi-worker run starts from epoch 1, overwriting the checkpoints.
    if t.resume and multi_worker and checkpoint.latest is not None:
        print(f"[train] train.resume: not resuming from {checkpoint.latest} under multi_worker (the other "
              "workers cannot read the chief's checkpoints); training from epoch 1", flush=True)
    if not t.resume or multi_worker or checkpoint.latest is None:
        return None
    with strategy.scope(), device_scope(t.distribute, t.device):
        _build_variables(model, next(iter(first_batches())))
    state = checkpoint.restore(snapshot=model.get_weights)
    print(f"[train] resuming from {checkpoint.latest}: {len(state.history)} epoch(s) done"
          f"{', early stopping already ended training' if state.stopped else ''}", flush=True)
    return state


def validation_recall(valid, catalog, towers, serves, similarity: str = "cosine") -> Optional[float]:
    """recall@10 of the towers on the validation keys against the whole catalog (each key's
    train items masked), scored by ``similarity`` (core/similarity.py); None without a valid
    split (no early stopping then)."""
    from trainer.export import embed_columns
    from core.metrics import embedding_retrieval_metrics

    if not len(valid):
        return None
    (query_tower, item_tower), (query_serve, item_serve) = towers, serves
    items = embed_columns(item_serve, item_tower, catalog.features)
    queries = embed_columns(query_serve, query_tower, valid.features)
    return embedding_retrieval_metrics(queries, items, valid.relevant, valid.masked, ks=(10,), ndcg_k=10,
                                       similarity=similarity)[VALID_METRIC]


class EpochLog:
    """``on_epoch`` for :func:`fit_with_early_stopping`: one line per epoch on stdout and its
    scalars (loss, examples/s, validation recall@10) in TensorBoard under ``folder``."""

    def __init__(self, folder: str, n_train: int, n_epochs: int):
        from trainer.tfenv import import_tf

        self._tf = import_tf()
        self.writer = self._tf.summary.create_file_writer(folder)
        self.n_train, self.n_epochs = n_train, n_epochs

    def __call__(self, result: EpochResult, best: bool) -> None:
        tf = self._tf
        rate = self.n_train / max(result.seconds, 1e-9)
        val = "n/a" if result.val_recall_at_10 is None else f"{result.val_recall_at_10:.4f}"
        print(f"[train] epoch {result.epoch}/{self.n_epochs} loss={result.loss:.4f} "
              f"val_recall@10={val}{' *' if best else ''} {result.seconds:.1f}s {rate:,.0f} ex/s", flush=True)
        with self.writer.as_default(step=result.epoch):
            tf.summary.scalar("loss", result.loss)
            tf.summary.scalar("examples_per_second", rate)
            if result.val_recall_at_10 is not None:
                tf.summary.scalar("val_recall_at_10", result.val_recall_at_10)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def training_summary(config, history: list, best_epoch: int, *, n_train: int, n_epochs: int, refit: Optional[dict],
                     inputs, model, chunked: bool, plan, valid, warm_report: dict, num_replicas: int) -> dict:
    """training.json: the epochs, the best one, throughput, and everything that shaped them."""
    t = config.train
    # best_epoch 0: a warm start's own weights beat every epoch and were kept.
    best_value = history[best_epoch - 1].val_recall_at_10 if best_epoch else warm_report["start_val_recall_at_10"]
    return {
        "history": [r.as_dict() for r in history],
        "best_epoch": best_epoch,
        "best_val_recall_at_10": best_value,
        "examples_per_second": _median_rate(n_train, [r.seconds for r in history]),
        "cpu_examples_per_second": _median_rate(n_train, [r.cpu_seconds for r in history]),
        "n_train": n_train,
        # Which data the exported (published) weights saw: the early-stopped model (train
        # only; evaluate scores it) or, with train.refit, a refit over every split.
        "published_weights": (refit or {"mode": "none", "splits": ["train"], "epochs": best_epoch,
                                        "examples": n_train}),
        # How the train passes ran (what examples_per_second measured).
        "input": "in_memory" if inputs.in_memory else "streamed",
        "stream_block_rows": inputs.streamed.block_rows if inputs.streamed is not None else None,
        "candidate_dedup": model.dedupe_candidates,
        # How the train passes ran: trainer/loop.py's chunks, or Keras fit over tf.data.
        "train_loop": "chunked" if chunked else "keras_fit",
        **plan.as_dict(),
        "n_valid_queries": len(valid),
        "n_valid_queries_total": valid.n_total,
        "stopped_early": len(history) < n_epochs,
        # Where the weights started: the live version's (warm) or random (cold, "from": null).
        "warm_start": warm_report if t.warm_start else None,
        # What shaped the curves above, so the report can show them beside the curves.
        "optimizer": t.optimizer, "lr": t.lr, "lr_schedule": t.lr_schedule, "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay, "batch_size": t.batch_size, "n_epochs": n_epochs,
        "temperature": t.temperature, "similarity": t.similarity,
        # DAT (trainer/augmented.py): the augmented vectors' width and mimic weight, the aligned category.
        "augmented_vectors": ({"dims": model.query_tower.augmented.dims, "weight": model.mimic_weight}
                              if model.mimic_weight > 0.0 else None),
        "category_alignment": ({"feature": model.category_feature, "weight": model.category_weight}
                               if model.category_feature else None),
        # Replicas that trained together (2 for two single-device workers), and how.
        "distribute": t.distribute, "num_replicas": num_replicas,
    }
