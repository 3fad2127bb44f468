"""Benchmarks: accuracy evaluation (feature store), latency/memory/FLOPs benchmark, reports; bench/perf: speed scripts."""
