"""Tests of the `ui` package."""
