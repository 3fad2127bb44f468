"""Latency statistics as pure functions, checked against values computed by hand."""

import math

import numpy as np
import pytest

from encslim.bench import stats
from encslim.bench.latency import summarize_iterations

VALUES = [4.0, 1.0, 3.0, 2.0, 10.0]  # sorted: 1 2 3 4 10, ranks 0..4


def test_mean_std_hand_computed():
    assert stats.mean(VALUES) == 4.0
    # squared deviations 9 + 4 + 1 + 0 + 36 = 50; sample variance 50 / 4 = 12.5
    assert stats.std(VALUES) == pytest.approx(math.sqrt(12.5), abs=1e-12)
    assert stats.std([7.0]) == 0.0


@pytest.mark.parametrize("q, expected", [
    (0, 1.0), (50, 3.0),                 # rank 2 -> 3
    (90, 7.6),                           # rank 3.6 -> 4 + 0.6 * (10 - 4)
    (95, 8.8),                           # rank 3.8 -> 4 + 0.8 * 6
    (99, 9.76),                          # rank 3.96 -> 4 + 0.96 * 6
    (100, 10.0), (25, 2.0), (30, 2.2),   # rank 1.2 -> 2 + 0.2 * 1
])
def test_percentile_hand_computed(q, expected):
    assert stats.percentile(VALUES, q) == pytest.approx(expected, abs=1e-12)
    assert stats.percentile(VALUES, q) == pytest.approx(float(np.percentile(VALUES, q)), abs=1e-12)


def test_percentile_edge_cases():
    assert stats.percentile([5.0], 99) == 5.0
    assert stats.percentile([1.0, 3.0], 90) == pytest.approx(2.8)
    with pytest.raises(ValueError, match="empty"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        stats.percentile([1.0], 101)


def test_summarize_fields_and_values():
    s = stats.summarize(VALUES)
    assert set(s) == {"n", "mean", "std", "min", "max", "p50", "p90", "p95", "p99"}
    assert (s["n"], s["mean"], s["min"], s["max"], s["p50"]) == (5, 4.0, 1.0, 10.0, 3.0)
    assert (s["p90"], s["p95"], s["p99"]) == pytest.approx((7.6, 8.8, 9.76))


def test_ratios_and_savings():
    assert stats.speedup(30.0, 10.0) == 3.0
    assert stats.speedup(30.0, 0.0) is None
    assert stats.saving(40.0, 10.0) == 0.75
    assert stats.saving(0.0, 1.0) is None
    assert stats.rate(8, 4.0) == 2000.0  # 8 tokens in 4 ms
    assert stats.rate(8, 0.0) is None
    assert stats.saving_efficiency(0.5, 0.35) == pytest.approx(0.7)
    assert stats.saving_efficiency(0.005, 0.3) is None  # no saving predicted: no ratio
    assert stats.saving_efficiency(None, 0.3) is None
    assert stats.coefficient_of_variation({"mean": 4.0, "std": 1.0}) == 0.25
    assert stats.add_series([1.0, 2.0], [0.5, 0.5], [1.0, 1.0]) == [2.5, 3.5]
    with pytest.raises(ValueError, match="lengths"):
        stats.add_series([1.0], [1.0, 2.0])


def test_interleaved_order():
    assert stats.interleaved_order(["A", "B"], 3) == ["A", "B", "A", "B", "A", "B"]
    assert stats.interleaved_order(["A", "B", "C"], 0) == []


def test_pareto_front():
    points = {"full": (10.0, 0.9), "fast": (4.0, 0.7), "worse": (6.0, 0.6), "tie": (10.0, 0.8), "best": (3.0, 0.9)}
    # best dominates full (same accuracy, faster) and fast/worse/tie
    assert stats.pareto_front(points) == ["best"]
    points.pop("best")
    assert stats.pareto_front(points) == ["fast", "full"]


def test_summarize_iterations_derived_stages():
    iterations = [
        {"encoder:a": 1.0, "encoder:b": 2.0, "fusion": 0.5, "prefill": 1.5, "decode": 4.0, "end_to_end": 10.0},
        {"encoder:a": 2.0, "encoder:b": 2.0, "fusion": 0.5, "prefill": 1.5, "decode": 6.0, "end_to_end": 12.0},
    ]
    result = summarize_iterations(iterations, batch_size=2, max_new_tokens=3)
    st = result["stages"]
    assert result["iterations"] == 2
    assert st["vision"]["mean"] == 3.5 and st["vision"]["min"] == 3.0     # 3, 4
    assert st["ttft"]["mean"] == 5.5                                     # 5, 6
    assert st["stage_sum"]["mean"] == 10.5                               # 9, 12
    # decode: 2 rows x 2 tokens after the first = 4 tokens in 4 ms and in 6 ms
    assert result["decode_tokens_per_s"]["mean"] == pytest.approx((1000.0 + 4000.0 / 6) / 2)
    # end to end: 2 rows x 3 tokens = 6 tokens in 10 ms and in 12 ms
    assert result["end_to_end_tokens_per_s"]["mean"] == pytest.approx((600.0 + 500.0) / 2)


def test_summarize_iterations_single_token_has_no_decode_rate():
    iterations = [{"encoder:a": 1.0, "fusion": 0.5, "prefill": 1.5, "decode": 0.01, "end_to_end": 3.0}]
    result = summarize_iterations(iterations, batch_size=1, max_new_tokens=1)
    assert result["decode_tokens_per_s"] is None
    assert result["end_to_end_tokens_per_s"]["mean"] == pytest.approx(1000.0 / 3.0)
