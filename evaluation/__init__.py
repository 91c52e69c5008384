"""Evaluation: the held-out metrics of a trained model against the whole catalog, with the
baselines beside it (:func:`evaluation.evaluate.evaluate_model`). The metrics themselves are
:mod:`core.metrics` (pure numpy, also training's validation); the query / catalog sets are
read by :mod:`trainer.evalset`."""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
