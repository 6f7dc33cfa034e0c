"""`python -m benchmarks`: the provider per-chunk benchmark (see benchmarks/providers.py)."""

from benchmarks.providers import cli

cli()
