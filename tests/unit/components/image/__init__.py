"""Tests of the `components.image` package."""
