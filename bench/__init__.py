"""Benchmarks of the builder's own overhead (issue 6); the driver is bench/run.py."""
