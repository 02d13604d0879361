"""Benchmarks of the service: run them from the project root as modules,
``python -m bench.pipeline``, ``python -m bench.avatar`` and ``python -m bench.load``."""
