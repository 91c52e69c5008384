"""Train report: loss and validation recall@10 per epoch (two charts, best epoch ringed),
throughput, early stopping, optimiser settings when recorded, and where TensorBoard logs are."""

from __future__ import annotations

from core.contracts import files as names
from core.svg_chart import Mark, Series, line_chart
from reports import artifacts
from reports.base import files_section, number, start
from reports.html import Cell, Report

#: Written by trainer.train.train_model.
TRAINING_FILE = names.TRAINING_FILE
TENSORBOARD_DIR = "tensorboard"
#: trainer.checkpoint.SUBDIR; not imported because that module imports TensorFlow at load.
CHECKPOINTS_DIR = "checkpoints"
#: Optimiser settings shown when training.json records them (top level or under "config").
OPTIMIZER_KEYS = ("optimizer", "lr", "lr_schedule", "warmup_steps", "weight_decay", "batch_size", "n_epochs",
                  "temperature")


def build(out_dir: str, record: dict) -> Report:
    training = artifacts.read_json(out_dir, TRAINING_FILE) or record["result"]
    history = [h for h in training.get("history") or [] if isinstance(h, dict)]
    best = training.get("best_epoch")
    report = start("train", record, out_dir)
    stopped = training.get("stopped_early")
    report.facts([("epochs run", len(history)), ("best epoch", best),
                  ("best validation recall@10", training.get("best_val_recall_at_10", _at(history, best))),
                  ("examples/s (median over epochs)", training.get("examples_per_second")),
                  ("training examples", training.get("n_train")),
                  ("validation queries", training.get("n_valid_queries")),
                  ("stopped early", stopped if stopped is not None else Cell("not recorded"))])
    if stopped:
        report.note(f"Early stopping ended training after epoch {len(history)}; the exported towers hold "
                    f"epoch {best}'s weights.", "info")

    settings = _settings(training)
    report.heading("Optimiser")
    if settings:
        report.facts(settings)
    else:
        report.paragraph(f"{TRAINING_FILE} does not record the optimiser settings "
                         "(see the run's config: train.optimizer, train.lr, train.lr_schedule).")

    report.heading("Learning curves")
    if history:
        losses = [(h["epoch"], h["loss"]) for h in history if number(h.get("epoch")) and number(h.get("loss"))]
        recalls = [(h["epoch"], h["val_recall_at_10"]) for h in history
                   if number(h.get("epoch")) and number(h.get("val_recall_at_10"))]
        report.chart(_curve(losses, best, "Training loss per epoch", "loss (mean over batches)", "#1f77b4"),
                     alt=_alt("Training loss", losses, best), caption="Training loss per epoch; best epoch ringed.")
        if recalls:
            report.chart(_curve(recalls, best, "Validation recall@10 per epoch", "recall@10 (fraction)", "#2ca02c"),
                         alt=_alt("Validation recall@10", recalls, best),
                         caption="Validation recall@10 per epoch (early stopping watches it); best epoch ringed.")
        else:
            report.paragraph("No validation recall was measured (no valid split): no early stopping, "
                             "the last epoch was kept.")
        report.table(["epoch", "loss", "validation recall@10", "seconds"],
                     [[Cell(str(h.get("epoch")) + (" (best)" if h.get("epoch") == best else ""),
                            strong=h.get("epoch") == best), h.get("loss"), h.get("val_recall_at_10"),
                       h.get("seconds")] for h in history])
    else:
        report.paragraph("No epoch history was recorded.")

    report.heading("Logs and checkpoints")
    names = artifacts.children(out_dir)
    if TENSORBOARD_DIR in names:
        tb = artifacts.path(out_dir, TENSORBOARD_DIR)
        report.paragraph(f"TensorBoard scalars (loss, validation recall@10, examples/s per epoch) are in {tb}; "
                         f"view them with: tensorboard --logdir {tb}")
    else:
        report.paragraph("No TensorBoard log folder in this artifact.")
    if CHECKPOINTS_DIR in names:
        report.paragraph(f"Per-epoch checkpoints (resumable with train.resume) are in "
                         f"{artifacts.path(out_dir, CHECKPOINTS_DIR)}.")
    return files_section(report, names)


def _settings(training: dict) -> list[tuple[str, object]]:
    """Optimiser settings recorded in training.json, top level first, then under "config"."""
    config = training.get("config")
    nested = config.get("train", config) if isinstance(config, dict) else {}
    nested = nested if isinstance(nested, dict) else {}
    return [(k, training[k] if k in training else nested[k]) for k in OPTIMIZER_KEYS
            if k in training or k in nested]


def _at(history: list[dict], epoch) -> object:
    return next((h.get("val_recall_at_10") for h in history if h.get("epoch") == epoch), None)


def _curve(points: list[tuple[float, float]], best, title: str, y_label: str, colour: str) -> str:
    marks = [Mark(x, y, f"best (epoch {best})") for x, y in points if x == best]
    return line_chart([Series("", points, colour)], title=title, x_label="epoch", y_label=y_label,
                      integer_x=True, marks=marks, width=560, height=300)


def _alt(what: str, points: list[tuple[float, float]], best) -> str:
    if not points:
        return f"{what}: no data"
    values = ", ".join(f"epoch {int(x)}: {y:.4g}" for x, y in points)
    return f"{what} per epoch ({values}); best epoch {best}"
