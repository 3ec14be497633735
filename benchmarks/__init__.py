"""Benchmarks: ``python -m benchmarks.<module>``; ``launch.bench`` and the tests import
``harness``, ``step_bench``, ``serve_bench`` and friends from here (an installed package)."""
