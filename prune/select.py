"""Selection policies: which encoder slots to drop, decided from a ranking (pure functions).

A policy reads ``ranking.json`` (CONTRACTS.md) and returns a :class:`Selection`. When the
ranking holds the subset table (accuracy of each kept set, measured with the other slots
masked), policies decide on it, because slot-wise CUR misleads when encoders are redundant
with each other: two encoders each harmless to drop alone may be the only two that see some
information, so dropping both hurts. Without the table, policies fall back to CUR and say so.

* ``--drop NAMES``: explicit.
* ``--keep K``: the best kept set of size K (by accuracy, overall or a category); without the
  table, the K slots of highest CUR.
* ``--drop-negative``: drop slots whose removal improves accuracy (CUR < 0), one by one, each
  only if the kept set's measured accuracy does not fall.
* ``--min-retained X``: the smallest kept set whose accuracy is at least ``X`` times the full
  model's (table needed); with ``--category each``, in every category at once; with
  ``--on recovered``, on the accuracy after recovery of the sets ``rank --recover`` recovered.
* ``--budget B``: the most accurate kept set whose cost (``vision_flops``, ``params``,
  ``latency_ms`` or ``total_flops``) is at most ``B``.

With a token-budget axis in the ranking (``rank --token-budgets``: its ``token_budgets`` rows),
``--keep``, ``--min-retained`` and ``--budget`` choose among configurations (kept set, token
budget) instead, costed by ``total_flops`` (vision + fusion + prefill; ``--budget``'s default cost
then): the full kept set at a reduced budget is a candidate too. ``--keep K``: the most accurate
configuration with K slots, then the cheapest; ``--min-retained X``: the smallest kept set with a
configuration that retains X, then the cheapest such configuration; ``--budget B``: the most
accurate configuration costing at most B. The selection's ``token_budget`` is then
``{"method", "budget"}`` (``None`` at every token), which prune writes into config.json.
"""

import hashlib
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Union

from ..errors import ConfigError, PlanError
from ..files import RANKING_NAME
from ..models.slots import SlotSet
from .config import COSTS, EACH, SelectConfig

RankingData = Mapping[str, Any]  # a ranking.json document (:func:`read_ranking`)
Table = dict[frozenset[str], float]  # {kept set: accuracy (or retained share)}


@dataclass
class Selection:
    """The outcome of a policy: slots to drop and why."""

    drop: list[str]
    kept: list[str]
    policy: str
    basis: str  # "explicit", "subsets" or "cur"
    reason: str
    expected_accuracy: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    token_budget: dict[str, Any] | None = None  # {"method", "budget"} to apply with the drop; None: every token

    def to_dict(self) -> dict[str, Any]:
        """The selection as a JSON-able dict (recorded in the manifest)."""
        return asdict(self)


# ---------------------------------------------------------------------------- reading rankings
def read_ranking(path: Union[str, "PathLike[str]"]) -> dict[str, Any]:
    """Read and check a ``ranking.json`` (a file or the folder holding it) with ``rank.load_ranking``.

    Returns:
        the ranking dict, with ``_path`` and ``_sha256`` of the file added (for the manifest).

    Raises:
        ConfigError: missing file, invalid JSON, wrong schema version or inconsistent content.
    """
    from .rank import load_ranking

    ranking = load_ranking(path)
    where = Path(path)
    file = where / RANKING_NAME if where.is_dir() else where
    ranking["_path"] = str(file.resolve())
    ranking["_sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    return ranking


def check_ranking(ranking: RankingData, slots: Sequence[str]) -> None:
    """Raise ``PlanError`` if the ranking was made for other slots than the model's."""
    if sorted(ranking["slots"]) != sorted(slots):
        raise PlanError(f"the ranking is for slots {', '.join(ranking['slots'])} but the model has "
                        f"{', '.join(slots)}; rank this model first")


def _categories(ranking: RankingData) -> list[str]:
    return ["overall", *ranking.get("categories", [])]


def _check_category(ranking: RankingData, category: str) -> None:
    if category not in _categories(ranking):
        raise PlanError(f"category '{category}' is not in the ranking; use one of {', '.join(_categories(ranking))}")


def _subsets(ranking: RankingData, slots: Collection[str], category: str, on: str = "masked") -> Table:
    """``{frozenset(kept): accuracy}`` of measured proper, non-empty kept sets.

    ``on="recovered"``: the accuracy after recovery (``rank --recover``), of the rows that have it.
    """
    table: Table = {}
    for row in ranking.get("subsets") or []:
        kept = frozenset(row["kept"])
        value = (row.get("accuracy" if on == "masked" else "recovered") or {}).get(category)
        if value is not None and kept and kept < set(slots):
            table[kept] = value
    return table


def _full_accuracy(ranking: RankingData, category: str) -> float:
    value: float | None = ranking["accuracy"]["full"].get(category)
    if value is None:
        raise PlanError(f"the ranking has no full-model accuracy for '{category}'")
    return value


def _cur(ranking: RankingData, slot: str, category: str) -> float:
    entry = (ranking["cur"].get(slot) or {}).get(category) or {}
    value: float | None = entry.get("value")
    if value is None:
        why = entry.get("note") or "no CUR value"
        raise PlanError(f"CUR of '{slot}' for '{category}' is undefined ({why}); choose another category")
    return value


def _cost(ranking: RankingData, kept: Iterable[str], metric: str) -> float:
    """Cost of a kept set: the subset row's measured cost, else the sum of per-slot costs."""
    for row in ranking.get("subsets") or []:
        if frozenset(row["kept"]) == frozenset(kept):
            value: float | None = (row.get("cost") or {}).get(metric)
            if value is not None:
                return value
    costs = ranking.get("costs") or {}
    try:
        total: float = sum(costs[s][metric] for s in kept)
        return total
    except (KeyError, TypeError):
        raise PlanError(f"the ranking has no '{metric}' cost for kept set {sorted(kept)}; "
                        f"use --cost with one of {', '.join(COSTS)} that it holds") from None


def _ordered(slots: Iterable[str], subset: Collection[str]) -> list[str]:
    return [s for s in slots if s in subset]


def _selection(slots: Sequence[str], kept: Collection[str], policy: str, basis: str, reason: str,
               accuracy: float | None = None, **details: Any) -> Selection:
    ordered = _ordered(slots, kept)
    drop = [s for s in slots if s not in ordered]
    if not drop and details.get("token_budget") is None:
        raise PlanError(f"policy {policy} keeps every slot: nothing to remove ({reason})")
    if not ordered:
        raise PlanError("cannot remove every encoder; keep at least one slot")
    budget = details.pop("token_budget", None)
    return Selection(drop, ordered, policy, basis, reason, accuracy, details, budget)


def _best(candidates: Iterable[frozenset[str]], table: Mapping[frozenset[str], float], ranking: RankingData,
          metric: str = "vision_flops") -> frozenset[str]:
    """The candidate kept set with the highest accuracy, then the lowest cost, then slot order."""
    def key(kept: frozenset[str]) -> tuple[float, float, list[str]]:
        try:
            cost = _cost(ranking, kept, metric)
        except PlanError:
            cost = 0
        return (-table[kept], cost, sorted(kept))
    return min(candidates, key=key)


# ---------------------------------------------------------------------------- policies
def select_drop(slots: Sequence[str], names: str | Iterable[str]) -> Selection:
    """Drop exactly ``names`` (a list, or one string ``"sam,clip"``: :class:`encslim.models.slots.SlotSet`)."""
    kept = SlotSet.from_drop(slots, names, error=PlanError).kept
    return _selection(slots, kept, "drop", "explicit", "named on the command line")


def select_keep(ranking: RankingData, slots: Sequence[str], k: int, category: str = "overall") -> Selection:
    """Keep the best ``k`` slots for ``category``."""
    _check_category(ranking, category)
    if not 1 <= k < len(slots):
        raise PlanError(f"--keep must be between 1 and {len(slots) - 1} for a model with {len(slots)} slots")
    table = _subsets(ranking, slots, category)
    sized = [kept for kept in table if len(kept) == k]
    if sized:
        best = _best(sized, table, ranking)
        return _selection(slots, best, "keep", "subsets",
                          f"the most accurate measured set of {k} slot(s) for {category}", table[best],
                          k=k, category=category)
    order = sorted(slots, key=lambda s: (-_cur(ranking, s, category), slots.index(s)))
    return _selection(slots, order[:k], "keep", "cur",
                      f"the {k} slot(s) of highest CUR for {category} (no subset table: joint effects unchecked)",
                      k=k, category=category)


def select_drop_negative(ranking: RankingData, slots: Sequence[str], category: str = "overall") -> Selection:
    """Drop slots whose removal improves accuracy, jointly checked on the subset table."""
    _check_category(ranking, category)
    negative = sorted((s for s in slots if _cur(ranking, s, category) < 0), key=lambda s: _cur(ranking, s, category))
    if not negative:
        raise PlanError(f"no slot has a negative CUR for {category}: removing any would cost accuracy")
    table = _subsets(ranking, slots, category)
    if not table:
        rest = [s for s in slots if s not in negative] or [negative[-1]]
        return _selection(slots, rest, "drop-negative", "cur",
                          "CUR < 0 (no subset table: joint effect unchecked)", category=category)
    kept, accuracy = frozenset(slots), _full_accuracy(ranking, category)
    for slot in negative:
        candidate = kept - {slot}
        if candidate in table and table[candidate] >= accuracy:
            kept, accuracy = candidate, table[candidate]
    return _selection(slots, kept, "drop-negative", "subsets",
                      f"CUR < 0 and the measured kept set stays at least as accurate for {category}", accuracy,
                      category=category)


def _retained_table(ranking: RankingData, slots: Sequence[str], category: str, on: str = "masked") -> Table:
    """``{kept: share of the full accuracy retained}``; for ``each``, the smallest share over categories.

    Categories where the full model scores 0 have no share and are left out.
    """
    names = list(ranking.get("categories", [])) if category == EACH else [category]
    tables = {c: _subsets(ranking, slots, c, on) for c in names}
    full = {c: _full_accuracy(ranking, c) for c in names}
    names = [c for c in names if full[c] > 0]
    if not names:
        raise PlanError(f"the full model scores 0 in {category}: nothing to retain; choose another category")
    kept_sets = set.intersection(*(set(tables[c]) for c in names))
    return {kept: min(tables[c][kept] / full[c] for c in names) for kept in kept_sets}


def select_min_retained(ranking: RankingData, slots: Sequence[str], fraction: float, category: str = "overall",
                        on: str = "masked") -> Selection:
    """The smallest kept set whose accuracy is at least ``fraction`` of the full model's.

    ``category="each"`` asks it of every category of the ranking at once (those the full model
    scores above 0), the safe choice when one category depends on one encoder. ``on="recovered"``
    decides on the accuracy after recovery of the candidates ``rank --recover`` recovered,
    against the full model's accuracy.
    """
    if category != EACH:
        _check_category(ranking, category)
    if not 0 < fraction <= 1:
        raise PlanError(f"--min-retained must be in (0, 1], got {fraction}")
    retained = _retained_table(ranking, slots, category, on)
    if not retained:
        raise PlanError("--min-retained needs the subset table of the ranking; rerun `encslim rank` with subsets")
    eligible = [kept for kept, share in retained.items() if share >= fraction - 1e-9]
    where = "every category" if category == EACH else category
    if not eligible:
        raise PlanError(f"no smaller kept set retains {fraction:.0%} of the full accuracy in {where}; "
                        "lower --min-retained")
    smallest = min(len(kept) for kept in eligible)
    best = _best([kept for kept in eligible if len(kept) == smallest], retained, ranking)
    overall = _subsets(ranking, slots, "overall", on).get(best)
    after = " after recovery" if on == "recovered" else ""
    return _selection(slots, best, "min-retained", "subsets" if on == "masked" else "recovered",
                      f"the smallest kept set with accuracy{after} >= {fraction:.0%} of full in {where}", overall,
                      fraction=fraction, category=category, retained=round(retained[best], 4), on=on)


def select_budget(ranking: RankingData, slots: Sequence[str], budget: float, cost: str = "vision_flops",
                  category: str = "overall") -> Selection:
    """The most accurate kept set whose ``cost`` is at most ``budget``."""
    _check_category(ranking, category)
    if cost not in COSTS:
        raise PlanError(f"cost '{cost}' unknown; use one of {', '.join(COSTS)}")
    if _cost(ranking, slots, cost) <= budget:
        raise PlanError(f"the full model's {cost} ({_cost(ranking, slots, cost):g}) already fits the budget {budget:g}")
    table = _subsets(ranking, slots, category)
    basis = "subsets"
    if not table:  # no measurements of kept sets: score them by the sum of their slots' CUR
        basis = "cur"
        table = {frozenset(c): sum(_cur(ranking, s, category) for s in c)
                 for n in range(1, len(slots)) for c in itertools.combinations(slots, n)}
    fitting = [kept for kept in table if _cost(ranking, kept, cost) <= budget]
    if not fitting:
        cheapest = min(_cost(ranking, kept, cost) for kept in table)
        raise PlanError(f"no kept set fits {cost} <= {budget:g} (the cheapest costs {cheapest:g}); raise --budget")
    best = _best(fitting, table, ranking, cost)
    reason = f"the most accurate kept set with {cost} <= {budget:g} for {category}"
    if basis == "cur":
        reason += " (no subset table: scored by summed CUR, joint effects unchecked)"
    return _selection(slots, best, "budget", basis, reason, table[best] if basis == "subsets" else None,
                      budget=budget, cost=cost, category=category, kept_cost=_cost(ranking, best, cost))


# ---------------------------------------------------------------------------- configurations (kept set, token budget)
Configuration = tuple[frozenset[str], float]  # (kept set, token budget)


def has_budgets(ranking: RankingData) -> bool:
    """Whether the ranking holds a token-budget axis (``rank --token-budgets``)."""
    return bool((ranking.get("token_budgets") or {}).get("rows"))


def _configurations(ranking: RankingData, slots: Collection[str], category: str) -> dict[Configuration, float]:
    """``{(kept, budget): accuracy}`` of the configurations a prune can ship: a non-empty kept set, and
    something removed (a slot, or tokens)."""
    table: dict[Configuration, float] = {}
    for row in ranking["token_budgets"]["rows"]:
        kept, budget = frozenset(row["kept"]), float(row["budget"])
        value = row["accuracy"].get(category)
        if value is not None and kept and (kept < set(slots) or budget < 1):
            table[(kept, budget)] = value
    return table


def _total_flops(ranking: RankingData, configuration: Configuration) -> float:
    for row in ranking["token_budgets"]["rows"]:
        if (frozenset(row["kept"]), float(row["budget"])) == configuration:
            value = row["cost"].get("total_flops")
            return float("inf") if value is None else float(value)
    raise PlanError(f"the ranking has no configuration {sorted(configuration[0])} at budget {configuration[1]:g}")


def _configuration_selection(ranking: RankingData, slots: Sequence[str], best: Configuration, policy: str,
                             reason: str, accuracy: float | None, **details: Any) -> Selection:
    kept, budget = best
    spec = None if budget >= 1 else {"method": ranking["token_budgets"]["method"], "budget": budget}
    label = "every token" if spec is None else f"token budget {budget:g} ({spec['method']})"
    return _selection(slots, kept, policy, "configurations", f"{reason}: keep {'+'.join(_ordered(slots, kept))} "
                      f"at {label}", accuracy, token_budget=spec, total_flops=_total_flops(ranking, best), **details)


def select_configuration(ranking: RankingData, slots: Sequence[str], c: SelectConfig) -> Selection:
    """``--keep``, ``--min-retained`` or ``--budget`` (cost ``total_flops``) over the configurations
    (kept set, token budget) of a ranking with a token-budget axis (module docstring)."""
    where = "every category" if c.category == EACH else c.category
    if c.category != EACH:
        _check_category(ranking, c.category)
    table = _configurations(ranking, slots, "overall" if c.category == EACH else c.category)
    cost = {k: _total_flops(ranking, k) for k in table}
    if c.keep is not None:
        if not 1 <= c.keep <= len(slots):
            raise PlanError(f"--keep must be between 1 and {len(slots)} for a model with {len(slots)} slots")
        sized = [k for k in table if len(k[0]) == c.keep]
        if not sized:  # no kept set of that size measured (--subsets single): the CUR fallback, at every token
            return select_keep(ranking, slots, c.keep, c.category)
        best = min(sized, key=lambda k: (-table[k], cost[k], -k[1]))
        return _configuration_selection(ranking, slots, best, "keep", f"the most accurate configuration with "
                                         f"{c.keep} slot(s) for {c.category}", table[best], k=c.keep,
                                         category=c.category)
    if c.min_retained is not None:
        return _min_retained_configuration(ranking, slots, c, table, cost)
    assert c.budget is not None
    full = _total_flops(ranking, (frozenset(slots), 1.0))
    if full <= c.budget:
        raise PlanError(f"the full model's total_flops ({full:g}) already fits the budget {c.budget:g}")
    fitting = [k for k in table if cost[k] <= c.budget]
    if not fitting:
        raise PlanError(f"no configuration fits total_flops <= {c.budget:g} (the cheapest costs "
                        f"{min(cost.values()):g}); raise --budget")
    best = min(fitting, key=lambda k: (-table[k], cost[k], -k[1]))
    return _configuration_selection(ranking, slots, best, "budget", f"the most accurate configuration with "
                                    f"total_flops <= {c.budget:g} for {where}", table[best], budget=c.budget,
                                    cost="total_flops", category=c.category, kept_cost=cost[best])


def _min_retained_configuration(ranking: RankingData, slots: Sequence[str], c: SelectConfig,
                                table: Mapping[Configuration, float], cost: Mapping[Configuration, float]) -> Selection:
    assert c.min_retained is not None
    names = list(ranking.get("categories", [])) if c.category == EACH else [c.category]
    full = {g: _full_accuracy(ranking, g) for g in names}
    names = [g for g in names if full[g] > 0]
    if not names:
        raise PlanError(f"the full model scores 0 in {c.category}: nothing to retain; choose another category")
    tables = {g: _configurations(ranking, slots, g) for g in names}
    retained = {k: min(tables[g][k] / full[g] for g in names) for k in table if all(k in tables[g] for g in names)}
    eligible = [k for k, share in retained.items() if share >= c.min_retained - 1e-9]
    where = "every category" if c.category == EACH else c.category
    if not eligible:
        raise PlanError(f"no configuration retains {c.min_retained:.0%} of the full accuracy in {where}; "
                        "lower --min-retained")
    best = min(eligible, key=lambda k: (len(k[0]), cost[k], -retained[k], -k[1]))
    overall = _configurations(ranking, slots, "overall").get(best)
    return _configuration_selection(ranking, slots, best, "min-retained", f"the smallest kept set, then the "
                                    f"cheapest configuration, with accuracy >= {c.min_retained:.0%} of full in {where}",
                                    overall, fraction=c.min_retained, category=c.category,
                                    retained=round(retained[best], 4), on=c.accuracy)


def check_recovered(ranking: RankingData) -> None:
    """Raise ``PlanError`` unless the ranking holds recovered accuracy (``rank --recover``)."""
    if not any(row.get("recovered") for row in ranking.get("subsets") or []):
        raise PlanError("the ranking has no recovered accuracy; rerun `encslim rank` with --recover STEPS "
                        "--recover-data TRAIN (or decide on masked accuracy: drop --on recovered)")


def select(slots: Sequence[str], ranking: RankingData | None = None,
           config: SelectConfig | Mapping[str, Any] | None = None, **overrides: Any) -> Selection:
    """Run exactly one policy; see the module docstring.

    Args:
        slots: the model's slot names, in order.
        ranking: a ranking dict (:func:`read_ranking`), needed by every policy but ``drop``.
        config: a :class:`~encslim.prune.config.SelectConfig` (or a dict of its fields): the one
            policy (``drop``, ``keep``, ``min_retained``, ``drop_negative`` or ``budget``), the
            ``category`` to decide on (``each``: every category at once, ``min_retained`` only),
            the ``cost`` a budget limits, and ``accuracy``: ``masked`` (the subset table) or
            ``recovered`` (``min_retained`` only: the accuracy after ``rank --recover``).
        **overrides: fields of ``config`` to set (``keep=2``, ``category="OCR"``; ``on`` is the
            older name of ``accuracy``).

    Returns:
        a :class:`Selection`.

    Raises:
        ConfigError: not exactly one policy, a rule between fields broken, or a ranking-based policy
            without a ranking.
        PlanError: the policy cannot decide (see each policy).
    """
    if "on" in overrides:
        overrides["accuracy"] = overrides.pop("on")
    c = SelectConfig.build(config, **overrides)
    if c.drop is not None:
        return select_drop(slots, list(c.drop))
    if ranking is None:
        raise ConfigError(f"--{c.chosen.replace('_', '-')} needs --ranking DIR (the output of `encslim rank`)")
    check_ranking(ranking, slots)
    if c.accuracy == "recovered":
        check_recovered(ranking)
    cost = c.cost or ("total_flops" if has_budgets(ranking) else "vision_flops")
    if has_budgets(ranking) and c.accuracy == "masked" and not c.drop_negative and (
            c.budget is None or cost == "total_flops"):
        result = select_configuration(ranking, slots, c)
    elif c.keep is not None:
        result = select_keep(ranking, slots, c.keep, c.category)
    elif c.min_retained is not None:
        result = select_min_retained(ranking, slots, c.min_retained, c.category, c.accuracy)
    elif c.drop_negative:
        result = select_drop_negative(ranking, slots, c.category)
    else:
        assert c.budget is not None  # exactly one policy is set (SelectConfig checks it)
        result = select_budget(ranking, slots, c.budget, cost, c.category)
    result.details.update(ranking=ranking.get("_path"), ranking_sha256=ranking.get("_sha256"))
    return result
