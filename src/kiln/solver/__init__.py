"""Solving a plan: cache keys, stage scheduling, running what misses (``ops/``), and which
results a cache export holds."""
