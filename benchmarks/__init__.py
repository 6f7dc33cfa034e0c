"""Micro-benchmarks (not tests): `python -m benchmarks` or `make bench`."""
