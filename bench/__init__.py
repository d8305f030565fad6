"""The benchmark suite (`make bench`, `python -m bench`): measurements written to BENCHMARKS.md.

Timings are reported, never asserted: tests/bench runs the plumbing in a tiny configuration.
"""
