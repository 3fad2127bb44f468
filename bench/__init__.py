"""Benchmarks: accuracy evaluation (feature store), latency/memory/FLOPs benchmark, reports.

``bench/perf/``: the speed scripts (not imported by the library).
"""
