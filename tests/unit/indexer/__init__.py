"""Tests of the `indexer` package."""
