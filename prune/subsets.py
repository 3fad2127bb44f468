"""Which mask sets to evaluate, greedy backward elimination, and the accuracy/cost frontier.

A *mask set* is the set of MASKED slots (``frozenset()`` = the full model); a *kept set* is its
complement. ``--subsets`` chooses how much of the lattice of kept sets to evaluate:

* ``single``: the full model and each slot masked alone (the study's setting, ``n + 1`` sets);
* ``pairs``: also every pair masked (``1 + n + n(n-1)/2``): finds pairs that substitute;
* ``all``: every kept set, the empty one included (``2^n``, for up to :data:`MAX_ALL` slots):
  exact Shapley values and interactions. With the evaluator's feature cache the vision cost stays
  one pass per encoder per sample; only fusion + LLM run per mask set;
* ``greedy``: backward elimination: from the full set, repeatedly drop the slot whose removal
  costs least overall accuracy (``n(n+1)/2`` sets), for models with too many slots for ``all``.
"""

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError

MODES = ("single", "pairs", "all", "greedy")
MAX_ALL = 6


def kept_of(slots: Iterable[str], masked: Iterable[str]) -> list[str]:
    """The kept slots of a mask set, in slot order."""
    masked = set(masked)
    return [s for s in slots if s not in masked]


def mask_sets(slots: Iterable[str], mode: str) -> list[frozenset[str]]:
    """The mask sets a mode evaluates up front (``greedy`` continues with :func:`greedy_elimination`).

    Args:
        slots: the model's slot names, in slot order.
        mode: one of :data:`MODES`.

    Returns:
        A list of frozensets of masked slots, the full model (``frozenset()``) first.

    Raises:
        ConfigError: unknown mode, or ``all`` with more than :data:`MAX_ALL` slots.
    """
    ordered = list(slots)
    if mode not in MODES:
        raise ConfigError(f"--subsets '{mode}' unknown; use one of {', '.join(MODES)}")
    if mode == "all" and len(ordered) > MAX_ALL:
        raise ConfigError(f"--subsets all evaluates 2^{len(ordered)} kept sets; above {MAX_ALL} slots use "
                          f"--subsets greedy (backward elimination) or pairs")
    sets: list[frozenset[str]] = [frozenset()] + [frozenset({s}) for s in ordered]
    if mode == "pairs":
        sets += [frozenset(p) for p in itertools.combinations(ordered, 2)]
    elif mode == "all":
        sets += [frozenset(c) for k in range(2, len(ordered) + 1) for c in itertools.combinations(ordered, k)]
    return sets


def greedy_elimination(slots: Iterable[str],
                       evaluate_overall: Callable[[list[frozenset[str]]], Mapping[frozenset[str], float]],
                       ) -> list[dict[str, Any]]:
    """Backward elimination over kept sets.

    Args:
        slots: slot names in slot order.
        evaluate_overall: ``f(list of mask sets) -> {mask set: overall accuracy}``; called once per
            step with the candidate mask sets of that step (results may come from a cache).

    Returns:
        The path, one step per removal: ``[{"kept": [...], "dropped": slot, "accuracy": acc}]``,
        from ``n - 1`` kept slots down to one. Ties go to the later slot in slot order (the
        study's encoders are listed general first, so a tie keeps the more general one).
    """
    ordered = list(slots)
    masked: frozenset[str] = frozenset()
    path = []
    while len(ordered) - len(masked) > 1:
        candidates = [masked | {s} for s in ordered if s not in masked]
        acc = evaluate_overall(candidates)
        best = max(reversed(candidates), key=lambda m: acc[m])
        dropped = next(iter(best - masked))
        masked = best
        path.append({"kept": kept_of(ordered, masked), "dropped": dropped, "accuracy": float(acc[best])})
    return path


def pareto_flags(points: Sequence[tuple[float | None, float]]) -> list[bool]:
    """Which (cost, accuracy) points are Pareto-optimal: no other point is at most as costly and
    at least as accurate, and strictly better in one of the two. Points with an unknown (``None``)
    cost are never marked optimal and never dominate another.
    """
    flags = []
    for cost, acc in points:
        if cost is None:
            flags.append(False)
            continue
        dominated = any(
            c is not None and c <= cost and a >= acc and (c < cost or a > acc) for c, a in points
        )
        flags.append(not dominated)
    return flags


def frontier(slots: Sequence[str], table: Mapping[frozenset[str], Mapping[str, float]],
             slot_flops: Mapping[str, float | None],
             latency_ms: Mapping[frozenset[str], float] | None = None) -> list[dict[str, Any]]:
    """The subset table as rows with their cost, Pareto-optimal rows marked.

    Args:
        slots: slot names in slot order.
        table: ``{mask set: {"overall": acc, "<category>": acc}}``.
        slot_flops: ``{slot: vision FLOPs of one forward}`` (values may be ``None``).
        latency_ms: optional ``{frozenset(kept): measured ms}``.

    Returns:
        Rows ``{"kept", "masked", "accuracy", "cost": {"vision_flops", "latency_ms"}, "pareto"}``
        sorted by number of kept slots (descending), then slot order.
    """
    latency_ms = latency_ms or {}
    order = {s: i for i, s in enumerate(slots)}
    keys = sorted(table, key=lambda m: (len(m), sorted(order[s] for s in m)))
    rows: list[dict[str, Any]] = []
    for masked in keys:
        kept = kept_of(slots, masked)
        flops = [slot_flops.get(s) for s in kept]
        known = [f for f in flops if f is not None]
        cost = None if len(known) < len(flops) else float(sum(known))
        rows.append({"kept": kept, "masked": [s for s in slots if s in masked],
                     "accuracy": dict(table[masked]),
                     "cost": {"vision_flops": cost, "latency_ms": latency_ms.get(frozenset(kept))}})
    flags = pareto_flags([(r["cost"]["vision_flops"], r["accuracy"]["overall"]) for r in rows])
    for row, flag in zip(rows, flags):
        row["pareto"] = flag
    return rows


def slot_costs(model: Any, processor: Any, adapter: Any) -> dict[str, dict[str, int]]:
    """Per slot: vision FLOPs of one forward on one image, and the parameters only it owns.

    FLOPs come from :func:`encslim.models.inspect.vision_flops` (the adapter's ``encode`` of that
    slot alone under ``FlopCounterMode``), parameters from :meth:`Adapter.slot_parameters`; both
    work for every family.

    Returns:
        ``{slot: {"vision_flops": int, "params": int}}``.
    """
    from ..models.inspect import vision_flops

    flops = vision_flops(model, processor, adapter)
    params = adapter.slot_parameters(model)
    return {s: {"vision_flops": flops[s], "params": params[s]["vision"] + params[s]["fusion"]}
            for s in adapter.slot_names(model.config)}
