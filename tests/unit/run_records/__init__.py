"""Tests of the `run_records` package."""
