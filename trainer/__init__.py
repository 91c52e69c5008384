"""Two-tower training stage: feature encoders, TFRS retrieval model, tf.data input,
training loop with early stopping, refit, warm starts and SavedModel export.

Entry point (imports TensorFlow lazily, so importing it is cheap): :func:`trainer.train.train_model`.
Offline evaluation is :mod:`evaluation` (metrics: :mod:`core.metrics`); the gate and publish are :mod:`publishing`.
"""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
