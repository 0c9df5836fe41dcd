"""Harnesses that use the app: simulation launcher, comparisons, benchmarks, attacks."""
