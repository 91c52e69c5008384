"""Shared core: configuration, feature schema, text normalisation and storage I/O.

Nothing here imports from the stage packages (features, trainer, indexer, serving).
"""
