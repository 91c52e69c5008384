"""Shared core: configuration, feature schema, text normalisation and storage I/O.

Nothing here imports from the stage packages (features, trainer, indexer, serving).
Importing this package sets TensorFlow's process environment (:mod:`core.environment`);
every other package imports it first, so that happens before anything imports TensorFlow.
"""

from core import environment

environment.configure()
