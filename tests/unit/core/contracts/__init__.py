"""Tests of the `core.contracts` package."""
