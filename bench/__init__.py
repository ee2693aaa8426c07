"""Benchmarks of blindkey against a direct call, run with `make bench`."""
