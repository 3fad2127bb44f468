"""Latency statistics and saving arithmetic: pure functions, numbers in, numbers out.

Conventions follow optimum-benchmark and vLLM's latency benchmark: every timing is a list of
per-iteration values measured after warm-up; a summary gives the mean, the sample standard
deviation and the 50/90/95/99th percentiles (linear interpolation between order statistics,
numpy's default, so the figures can be reproduced with ``numpy.percentile``).
"""

import math

PERCENTILES = (50, 90, 95, 99)


def percentile(values, q):
    """The ``q``-th percentile of ``values`` by linear interpolation (numpy's ``linear`` method).

    The sorted values are placed at ranks ``0 .. n-1``; the percentile sits at rank
    ``q / 100 * (n - 1)`` and is interpolated between its two neighbours.

    Args:
        values: a non-empty sequence of numbers.
        q: the percentile, in ``[0, 100]``.

    Returns:
        float.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside ``[0, 100]``.
    """
    if not len(values):
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    ordered = sorted(float(v) for v in values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values):
    """Arithmetic mean of a non-empty sequence."""
    if not len(values):
        raise ValueError("mean of an empty sequence")
    return math.fsum(float(v) for v in values) / len(values)


def std(values):
    """Sample standard deviation (``ddof=1``); 0.0 for a single value.

    The sample (not population) deviation, because the iterations are a sample of the
    latency distribution, not all of it.
    """
    n = len(values)
    if n < 2:
        return 0.0
    centre = mean(values)
    return math.sqrt(math.fsum((float(v) - centre) ** 2 for v in values) / (n - 1))


def summarize(values):
    """``{n, mean, std, min, max, p50, p90, p95, p99}`` of a non-empty sequence."""
    summary = {"n": len(values), "mean": mean(values), "std": std(values),
               "min": float(min(values)), "max": float(max(values))}
    for q in PERCENTILES:
        summary[f"p{q}"] = percentile(values, q)
    return summary


def add_series(*series):
    """Element-wise sum of equally long sequences (per-iteration totals of several stages)."""
    lengths = {len(s) for s in series}
    if len(lengths) != 1:
        raise ValueError(f"series of different lengths {sorted(lengths)}")
    return [math.fsum(values) for values in zip(*series)]


def rate(count, milliseconds):
    """Items per second for ``count`` items done in ``milliseconds``; ``None`` for a zero time."""
    if milliseconds <= 0:
        return None
    return count / (milliseconds / 1000.0)


def speedup(reference, value):
    """How many times faster ``value`` is than ``reference`` (both times): ``reference / value``."""
    if value <= 0:
        return None
    return reference / value


def saving(reference, value):
    """Fraction of ``reference`` (a time or a FLOP count) that ``value`` saves: ``1 - value/reference``."""
    if reference <= 0:
        return None
    return 1.0 - value / reference


def saving_efficiency(predicted, measured, min_predicted=0.01):
    """``measured / predicted`` saving; ``None`` when the prediction is (almost) no saving.

    Why a floor: a prediction of 0.1 % saving makes the ratio pure noise, so below
    ``min_predicted`` no ratio is reported.
    """
    if predicted is None or measured is None or predicted < min_predicted:
        return None
    return measured / predicted


def coefficient_of_variation(summary):
    """``std / mean`` of a :func:`summarize` result (0 when the mean is 0)."""
    return summary["std"] / summary["mean"] if summary["mean"] else 0.0


def interleaved_order(names, rounds):
    """The measurement order ``A B C A B C ...`` for ``rounds`` rounds over ``names``.

    Interleaving spreads slow drift (thermal throttling, other processes, frequency scaling)
    over every model alike, so the ratios between models survive it.
    """
    return [name for _ in range(rounds) for name in names]


def pareto_front(points):
    """Names of the non-dominated points among ``{name: (latency, accuracy)}``.

    A point is dominated when another has latency ``<=`` and accuracy ``>=`` with one of the
    two strictly better. Returned in order of increasing latency.
    """
    front = []
    for name, (lat, acc) in points.items():
        dominated = any(
            (o_lat <= lat and o_acc >= acc) and (o_lat < lat or o_acc > acc)
            for other, (o_lat, o_acc) in points.items() if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n])
