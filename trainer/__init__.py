"""Two-tower training stage: feature encoders, TFRS retrieval model, tf.data input,
training loop with early stopping, SavedModel export and offline evaluation.

Entry points (import TensorFlow lazily, so importing them is cheap):

- :func:`trainer.train.train_model`
- :func:`trainer.evaluate.evaluate_model`

:mod:`trainer.metrics` is pure numpy.
"""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
