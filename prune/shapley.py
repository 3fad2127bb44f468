"""Shapley values and pairwise interaction indices of encoder slots, from a table of kept sets.

Pure functions. The game: the players are the slots, the value ``v(S)`` of a coalition is the
accuracy of the model that keeps exactly the slots ``S`` (the others masked). Values may be
scalars or equal-shaped numpy arrays (one entry per category), and the results have that shape.

Why Shapley: single-slot masking (CUR) only looks at the top of the subset lattice, so two
slots that substitute for each other both look useless, although dropping both is fatal.
The Shapley value averages a slot's marginal contribution over every order of adding slots,
so such a pair shares the credit; its values sum to ``v(all) - v(none)``.

The **Shapley interaction index** (Grabisch & Roubens 1999) of a pair ``i, j`` averages the
second difference ``v(S+ij) - v(S+i) - v(S+j) + v(S)`` over the coalitions ``S`` without
them: negative when the two substitute for each other (redundant: either one suffices),
positive when each needs the other (synergy), 0 when their effects add up.
"""

import itertools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

Values = Mapping[frozenset[Any], Any]  # {kept set: value (a number or an array)}


def all_coalitions(players: Iterable[str]) -> list[frozenset[str]]:
    """Every subset of ``players`` as frozensets, smallest first."""
    ordered = list(players)
    return [frozenset(c) for k in range(len(ordered) + 1) for c in itertools.combinations(ordered, k)]


def is_complete(players: Iterable[str], values: Collection[frozenset[Any]]) -> bool:
    """True when ``values`` holds every one of the ``2^n`` coalitions."""
    return all(c in values for c in all_coalitions(players))


def _require(values: Collection[frozenset[Any]], coalitions: Iterable[frozenset[Any]]) -> None:
    missing = [sorted(c) for c in coalitions if c not in values]
    if missing:
        raise ConfigError(f"the subset table lacks the kept sets {missing[:3]}"
                          f"{' ...' if len(missing) > 3 else ''}; evaluate them (--subsets all) first")


def exact_shapley(players: Iterable[str], values: Values) -> dict[str, Any]:
    """Exact Shapley value of every player.

    Args:
        players: the slot names.
        values: ``{frozenset(kept): value}`` for all ``2^n`` kept sets.

    Returns:
        ``{player: value}`` (float or array, like the values).

    Raises:
        ConfigError: a kept set is missing from ``values``.
    """
    ordered = list(players)
    n = len(ordered)
    _require(values, all_coalitions(ordered))
    out = {}
    for p in ordered:
        others = [q for q in ordered if q != p]
        total: Any = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for c in itertools.combinations(others, k):
                s = frozenset(c)
                total = total + weight * (np.asarray(values[s | {p}]) - np.asarray(values[s]))
        out[p] = total
    return out


def interaction_index(players: Iterable[str], values: Values, i: str, j: str) -> Any:
    """Exact Shapley interaction index of the pair ``i, j`` (see module doc).

    Raises:
        ConfigError: a kept set is missing from ``values``.
    """
    ordered = list(players)
    n = len(ordered)
    others = [q for q in ordered if q not in (i, j)]
    total: Any = 0.0
    for k in range(n - 1):
        weight = math.factorial(k) * math.factorial(n - k - 2) / math.factorial(n - 1)
        for c in itertools.combinations(others, k):
            s = frozenset(c)
            needed = (s | {i, j}, s | {i}, s | {j}, s)
            _require(values, needed)
            delta = (np.asarray(values[needed[0]]) - np.asarray(values[needed[1]])
                     - np.asarray(values[needed[2]]) + np.asarray(values[needed[3]]))
            total = total + weight * delta
    return total


def interactions(players: Sequence[str], values: Values) -> dict[tuple[str, str], Any]:
    """Interaction index of every pair: ``{(i, j): value}`` in slot order."""
    return {(i, j): interaction_index(players, values, i, j) for i, j in itertools.combinations(players, 2)}


def interaction_at_full(players: Iterable[str], values: Values, i: str, j: str) -> Any:
    """The pair's second difference at the top of the lattice, from single and pair masks only.

    ``v(N) - v(N-i) - v(N-j) + v(N-ij)``: the one interaction term that ``--subsets pairs``
    measures. Negative when masking both costs more than the two single masks together.
    """
    top = frozenset(players)
    needed = (top, top - {i}, top - {j}, top - {i, j})
    _require(values, needed)
    return (np.asarray(values[needed[0]]) - np.asarray(values[needed[1]])
            - np.asarray(values[needed[2]]) + np.asarray(values[needed[3]]))


def sample_permutations(players: Iterable[str], n_perm: int, seed: int = 0) -> list[tuple[str, ...]]:
    """``n_perm`` random orders of the players (seeded).

    Each order is used with its reverse (antithetic pairs), which cancels much of the variance
    for games close to additive; ``n_perm`` is rounded up to an even number.
    """
    if n_perm < 1:
        raise ConfigError(f"the number of Shapley permutations must be at least 1, got {n_perm}")
    rng = np.random.default_rng(seed)
    ordered = list(players)
    perms = []
    for _ in range((n_perm + 1) // 2):
        order = tuple(ordered[k] for k in rng.permutation(len(ordered)))
        perms += [order, order[::-1]]
    return perms


def permutation_coalitions(perms: Iterable[Sequence[str]]) -> list[frozenset[str]]:
    """The kept sets a permutation estimate needs: every prefix of every order, deduplicated."""
    needed: set[frozenset[str]] = {frozenset()}
    for order in perms:
        for k in range(1, len(order) + 1):
            needed.add(frozenset(order[:k]))
    return sorted(needed, key=lambda c: (len(c), sorted(c)))


def sampled_shapley(players: Iterable[str], values: Values,
                    perms: Sequence[Sequence[str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Permutation estimate of the Shapley values with its standard error.

    Args:
        players: the slot names.
        values: ``{frozenset(kept): value}`` holding every :func:`permutation_coalitions` set.
        perms: the orders from :func:`sample_permutations`.

    Returns:
        ``({player: estimate}, {player: standard error})``. The error treats each antithetic
        pair of orders as one draw (their mean), so it is honest about the pairing.

    Raises:
        ConfigError: a needed kept set is missing.
    """
    _require(values, permutation_coalitions(perms))
    ordered = list(players)
    contrib: dict[str, list[Any]] = {p: [] for p in ordered}
    for order in perms:
        before: frozenset[str] = frozenset()
        for p in order:
            after = before | {p}
            contrib[p].append(np.asarray(values[after], dtype=float) - np.asarray(values[before], dtype=float))
            before = after
    estimate: dict[str, Any] = {}
    stderr: dict[str, Any] = {}
    for p in ordered:
        draws = np.stack(contrib[p])
        pairs = draws.reshape(-1, 2, *draws.shape[1:]).mean(axis=1) if len(draws) % 2 == 0 else draws
        estimate[p] = pairs.mean(axis=0)
        stderr[p] = pairs.std(axis=0, ddof=1) / math.sqrt(len(pairs)) if len(pairs) > 1 else np.full_like(
            pairs[0], np.nan)
    return estimate, stderr
