"""Tests of the `datagen` package."""
