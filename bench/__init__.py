"""Benchmarks (python -m bench.run); see bench/README.md."""
import indexer  # noqa: F401  - its OMP_WAIT_POLICY default applies to every encoder measured here alike
