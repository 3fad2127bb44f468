"""Benchmarks: data formats, prompts, scorers, accuracy evaluation, latency benchmark, reports."""
