"""Tests of the `publishing` package."""
